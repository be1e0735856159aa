"""benchmark.py and benchmark_kernels.py end to end, on tiny networks: what
they print, not how fast anything is."""

import json
import os
import subprocess
import sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   'src')
TINY = ['--A=4', '--B=3', '--C=3', '--D=3']


def _run(script, *args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, os.path.join(SRC, script)] +
                        list(args), capture_output=True, text=True, env=env,
                        timeout=timeout, check=False)


def _records(result):
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.splitlines()]


def test_benchmark_measures_naive_beside_and_names_the_machine():
  result = _run('benchmark.py', '--configs=2x2', '--steps=1', '--warmup=0',
                *TINY)
  naive, ours = _records(result)
  assert naive['implementation'] == 'naive'
  assert ours['implementation'] == 'capsulesEM'
  for record in (naive, ours):
    assert record['iterations'] == 2 and record['batch_size'] == 2
    assert record['train_images_per_s'] > 0 and record['peak_rss_mb'] > 0
    assert record['cpu'] and record['onednn_isa']
  assert ours['naive_train_images_per_s'] == naive['train_images_per_s']
  assert ours['train_speedup'] == round(
      ours['train_images_per_s'] / naive['train_images_per_s'], 2)
  assert ours['fused_votes'] and not ours['xla']


def test_benchmark_skips_naive_above_its_batch_limit():
  result = _run('benchmark.py', '--configs=1x3', '--steps=1', '--warmup=0',
                '--naive_max_batch=2', *TINY)
  (ours,) = _records(result)
  assert ours['implementation'] == 'capsulesEM'
  assert 'train_speedup' not in ours


def test_benchmark_rejects_bad_flags():
  for flags, message in ((['--configs=3by24'], 'bad configuration'),
                         (['--A=0'], '--A must be >= 1')):
    result = _run('benchmark.py', *flags, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert 'Traceback' not in result.stderr


def test_benchmark_kernels_prints_every_op():
  result = _run('benchmark_kernels.py', '--batch_size=2', '--positions=3',
                '--types=2', '--slots=5', '--steps=1')
  records = _records(result)
  assert [r['op'] for r in records] == [
      'moments', 'quadratic_form', 'moments_grad', 'quadratic_form_grad']
  assert all(r['ms'] >= 0 and r['ns_per_vote'] >= 0 for r in records)


def test_benchmark_kernels_rejects_bad_sizes():
  result = _run('benchmark_kernels.py', '--slots=0', timeout=120)
  assert result.returncode != 0
  assert 'must be >= 1' in result.stderr
  assert 'Traceback' not in result.stderr
