"""train.py and tests.py as a user runs them, on the real MNIST files.

A tiny network (A = 8, B = C = D = 4) keeps each step fast; the module
trains it once, to step 4 and then resumed to step 7.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from datasets import mnist
import script_util

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = ['--A=8', '--B=4', '--C=4', '--D=4', '--batch_size=8',
        '--log_every_n_steps=1', '--save_summaries_steps=2',
        '--save_checkpoint_steps=3', '--xla=false', '--gpu=0']


_mnist_dir = script_util.mnist_dir
_run = script_util.run
_succeeded = script_util.succeeded
_failed = script_util.failed
_lines = script_util.jsonl


@pytest.fixture(scope='module')
def data_dir():
  return _mnist_dir()


@pytest.fixture(scope='module')
def run(data_dir, tmp_path_factory):
  """A run trained to step 4, then resumed to step 7: (train_dir, first
  result, resumed result)."""
  train_dir = str(tmp_path_factory.mktemp('run') / 'train')
  args = ['--train_dir=' + train_dir, '--data_dir=' + data_dir] + TINY
  first = _succeeded(_run('train.py', '--max_steps=4', *args))
  resumed = _succeeded(_run('train.py', '--max_steps=7', *args))
  return train_dir, first, resumed


def test_train_and_resume(run):
  train_dir, first, resumed = run
  assert 'Training from step 0 to 4' in first.stderr
  assert 'Training from step 4 to 7' in resumed.stderr
  for step in (4, 7):
    assert os.path.exists(os.path.join(train_dir, f'model.ckpt-{step}.index'))
  with open(os.path.join(train_dir, 'checkpoint')) as f:
    assert f.readline().rstrip().endswith('/model.ckpt-7"')
  starts = _lines(os.path.join(train_dir, 'starts.jsonl'))
  assert [start['step'] for start in starts] == [0, 4]
  assert [start['min_mass'] for start in starts] == [0.0, 0.0]
  with open(os.path.join(train_dir, 'model_config.json')) as f:
    config = json.load(f)
  assert (config['a'], config['b'], config['c'], config['d']) == (8, 4, 4, 4)
  assert config['num_classes'] == 10
  assert config['conv1_padding'] == 'SAME'  # the MNIST default
  assert config['initialization'] == 'identity'


def test_pose_stats_refuses_figures_without_a_decoder(run, data_dir,
                                                     tmp_path):
  _failed(_run('pose_stats.py', '--train_dir=' + run[0],
               '--data_dir=' + data_dir, '--gpu=0', '--num_images=100',
               f'--figures_dir={tmp_path}/figures'), 'has no decoder')


def test_a_run_from_before_conv1_padding_resumes_as_valid(data_dir,
                                                         tmp_path):
  """A run directory whose model_config.json has no conv1_padding (written
  before the field existed, when Conv1 was VALID) and names the
  initialisation `default` (as before 2026-11-29) resumes without the flags,
  as VALID with the `normal` scheme; asking for SAME is refused. A new
  --min_mass (absent: 0), which changes the gradient only, is accepted."""
  train_dir = str(tmp_path / 'train')
  args = ['--train_dir=' + train_dir, '--data_dir=' + data_dir] + TINY
  _succeeded(_run('train.py', '--max_steps=1', '--conv1_padding=VALID',
                  '--initialization=normal', *args))
  path = os.path.join(train_dir, 'model_config.json')
  with open(path) as f:
    record = json.load(f)
  del record['conv1_padding']
  record['initialization'] = 'default'
  with open(path, 'w') as f:
    json.dump(record, f)
  # Already at --max_steps: the config is rewritten, no step is trained.
  result = _succeeded(_run('train.py', '--max_steps=1', '--min_mass=1e-10',
                           *args))
  assert 'nothing to train' in result.stderr
  assert 'Resuming with min_mass 1e-10 instead of 0' in result.stderr
  assert not os.path.exists(os.path.join(train_dir, 'model.ckpt-2.index'))
  with open(path) as f:
    record = json.load(f)
  assert (record['conv1_padding'], record['initialization'],
          record['min_mass']) == ('VALID', 'normal', 1e-10)
  _failed(_run('train.py', '--max_steps=3', '--conv1_padding=SAME', *args),
          'holds a run of a different model')


def _evaluate_once(run, data_dir, eval_subdir, *flags):
  """tests.py --once on the fixture's run: its output and the records of
  <train_dir>/<eval_subdir>/results.jsonl."""
  train_dir = run[0]
  result = _succeeded(_run(
      'tests.py', '--train_dir=' + train_dir, '--data_dir=' + data_dir,
      '--once', '--gpu=0', *flags))
  return result, _lines(os.path.join(train_dir, eval_subdir, 'results.jsonl'))


def test_evaluate_once(run, data_dir):
  result, records = _evaluate_once(run, data_dir, 'eval_test', '--xla=false',
                                   '--batch_size=500')
  assert 'on 10000 test images' in result.stdout
  assert len(records) == 1
  record = records[0]
  assert record['step'] == 7
  assert record['checkpoint'] == 'model.ckpt-7'
  assert record['images_evaluated'] == 10000
  assert 0.0 <= record['accuracy'] <= 1.0
  assert len(record['per_class_accuracy']) == 10
  assert all(0.0 <= v <= 1.0 for v in record['per_class_accuracy'])
  assert f'step 7: accuracy {record["accuracy"]:.4f}' in result.stdout
  assert (record['iterations'], record['class_iterations']) == (1, 1)


def test_evaluate_once_routing_more_iterations_than_trained(run, data_dir):
  """--iterations=3 on the fixture's 1-iteration run: its own directory,
  records that name 3 iterations in every layer."""
  result, records = _evaluate_once(run, data_dir, 'eval_test_iterations3',
                                   '--iterations=3', '--batch_size=500')
  assert [(r['step'], r['images_evaluated'], r['iterations'],
           r['class_iterations']) for r in records] == [(7, 10000, 3, 3)]
  assert ('Routing 3 iterations in every capsule layer; the run trained at '
          '1') in result.stderr


def test_evaluate_once_on_the_training_set(run, data_dir):
  result, records = _evaluate_once(run, data_dir, 'eval_train',
                                   '--batch_size=2000', '--test_set=train')
  assert 'on 60000 training images' in result.stdout
  assert [(r['step'], r['images_evaluated']) for r in records] == [
      (7, 60000)]
  assert 0.0 <= records[0]['accuracy'] <= 1.0
  assert 'train accuracy' in result.stderr


def test_evaluate_refuses_the_training_set_for_other_datasets(run, tmp_path):
  eval_dir = tmp_path / 'eval'
  result = _run('tests.py', '--train_dir=' + run[0], '--once', '--gpu=0',
                '--dataset=mnist40', '--test_set=train',
                '--eval_dir=' + str(eval_dir))
  _failed(result, '--test_set=train evaluates MNIST runs')
  assert not eval_dir.exists()


def test_resume_with_a_different_model_fails(run, data_dir):
  train_dir = run[0]
  before = pathlib.Path(train_dir, 'model_config.json').read_text()
  result = _run('train.py', '--max_steps=8', '--train_dir=' + train_dir,
                '--data_dir=' + data_dir, *TINY, '--A=16')
  _failed(result, 'different model')
  assert pathlib.Path(train_dir, 'model_config.json').read_text() == before
  assert len(_lines(os.path.join(train_dir, 'starts.jsonl'))) == 2
  assert not os.path.exists(os.path.join(train_dir, 'model.ckpt-8.index'))


@pytest.mark.parametrize('flag,message', [
    ('--batch_size=0', '--batch_size must be >= 1'),
    ('--iterations=0', '--iterations must be >= 1'),
    ('--data_dir={tmp}/nonexistent', 'is not a directory'),
    ('--gpu=abc', '--gpu must be comma-separated GPU indices'),
    ('--A=0', '--A must be >= 1'),
    ('--D=-2', '--D must be >= 1'),
    ('--final_lambda=0', 'final_lambda must be > 0'),
    ('--min_variance=-1', 'min_variance must be >= 0'),
    ('--min_mass=-1', 'min_mass must be >= 0'),
    ('--routing_warmup_steps=-1', '--routing_warmup_steps must be >= 0'),
    ('--decoder_standardization', 'decoder_standardization needs a decoder'),
])
def test_train_rejects_bad_flags(flag, message, tmp_path):
  train_dir = tmp_path / 'train'
  result = _run('train.py', '--train_dir=' + str(train_dir),
                *flag.format(tmp=tmp_path).split())
  _failed(result, message)
  assert not train_dir.exists()


@pytest.mark.parametrize('flag,message', [
    ('--batch_size=0', '--batch_size must be >= 1'),
    ('--smallnorb_crops=0', '--smallnorb_crops must be >= 1'),
    ('--data_dir={tmp}/nonexistent', 'is not a directory'),
    ('--gpu=1;2', '--gpu must be comma-separated GPU indices'),
    ('--iterations=0', '--iterations must be >= 1'),
])
def test_evaluate_rejects_bad_flags(flag, message, run, tmp_path):
  eval_dir = tmp_path / 'eval'
  result = _run('tests.py', '--train_dir=' + run[0], '--once',
                '--eval_dir=' + str(eval_dir), flag.format(tmp=tmp_path))
  _failed(result, message)
  assert not eval_dir.exists()


def _pose_table(output):
  """{row name: 16 values} of pose_stats.py's table."""
  rows = {}
  for line in output.splitlines():
    for name in ('mean |mu^h|', 'within-class sd'):
      if line.startswith(name):
        rows[name] = [float(v) for v in line[len(name):].split()]
  return rows


def test_pose_stats(run, data_dir):
  result = _succeeded(_run(
      'pose_stats.py', '--train_dir=' + run[0], '--data_dir=' + data_dir,
      '--gpu=0', '--num_images=30', '--batch_size=20', '--step=4'))
  assert 'model.ckpt-4: true-class poses of 30 test images' in result.stdout
  rows = _pose_table(result.stdout)
  assert len(rows['mean |mu^h|']) == len(rows['within-class sd']) == 16
  assert all(v > 0 for v in rows['mean |mu^h|'])
  readout = re.search(r'linear read-out.*: class mean ([\d.]+), row 0 '
                      r'([\d.]+), rows 1-3 ([\d.]+), all 16 ([\d.]+);',
                      result.stdout)
  assert readout and all(float(v) >= 0 for v in readout.groups())
  assert 'reconstruction error' not in result.stdout


def test_pose_stats_compares_the_decoder_with_class_means(data_dir,
                                                          tmp_path):
  """With the standardising decoder: its statistics, updated by training,
  are in the checkpoint that pose_stats.py decodes with."""
  train_dir = str(tmp_path / 'train')
  _succeeded(_run('train.py', '--max_steps=1', '--train_dir=' + train_dir,
                  '--data_dir=' + data_dir, '--reconstruction_weight=0.0005',
                  '--decoder_standardization', *TINY))
  checkpoint = tf.train.load_checkpoint(os.path.join(train_dir,
                                                     'model.ckpt-1'))
  for name, start in (('mean', 0.0), ('variance', 1.0)):
    values = checkpoint.get_tensor('decoder/input_statistics/' + name)
    assert not np.allclose(values, start), name
  result = _succeeded(_run(
      'pose_stats.py', '--train_dir=' + train_dir, '--data_dir=' + data_dir,
      '--gpu=0', '--num_images=50'))
  assert 'model.ckpt-1: true-class poses of 50 test images' in result.stdout
  errors = re.search(r'decoder ([\d.]+), class-mean image ([\d.]+)',
                     result.stdout)
  decoder, class_mean = float(errors[1]), float(errors[2])
  assert decoder > class_mean > 0  # one step cannot beat the class means


@pytest.mark.parametrize('flag,message', [
    ('--step=5', 'no checkpoint of step 5'),
    ('--num_images=0', '--num_images must be >= 1'),
])
def test_pose_stats_rejects_bad_flags(flag, message, run):
  _failed(_run('pose_stats.py', '--train_dir=' + run[0], '--gpu=0', flag),
          message)


def test_diagnose(run, data_dir, tmp_path):
  """diagnose.py prints a line per capsule layer, with one entropy per
  routing iteration (1 here: the uniform start, 1.000), and writes the same
  to its JSON file."""
  output = str(tmp_path / 'diagnostics.json')
  result = _succeeded(_run(
      'diagnose.py', '--train_dir=' + run[0], '--data_dir=' + data_dir,
      '--gpu=0', '--num_images=30', '--batch_size=20', '--step=7',
      '--output=' + output))
  assert 'model.ckpt-7: 30 test images, 1 routing iterations' in (
      result.stdout)
  assert 'mean |mu| of pose rows 0 / 1 / 2 / 3' in result.stdout
  with open(output) as f:
    record = json.load(f)
  assert record['step'] == 7 and record['num_images'] == 30
  names = [name.split('/')[-1] for name in record['layers']]
  assert names == ['primary_caps', 'conv_caps1', 'conv_caps2', 'class_caps']
  for name, stats in record['layers'].items():
    assert name in result.stdout
    assert 0 <= stats['active'] <= 1 and stats['mean_abs_pose'] > 0
    assert sum(stats['mean_abs_pose_rows']) / 4 == pytest.approx(
        stats['mean_abs_pose'])
    if not name.endswith('primary_caps'):
      assert stats['entropy'] == pytest.approx([1.0], abs=1e-5)
      assert 0 <= stats['below_floor'] <= 1


def test_diagnose_writes_into_the_run_by_default(run, data_dir):
  _succeeded(_run('diagnose.py', '--train_dir=' + run[0],
                  '--data_dir=' + data_dir, '--gpu=0', '--num_images=10',
                  '--step=4'))
  assert os.path.exists(os.path.join(run[0], 'diagnostics', 'step-4.json'))


@pytest.mark.parametrize('flag,message', [
    ('--step=5', 'no checkpoint of step 5'),
    ('--batch_size=0', '--batch_size must be >= 1'),
])
def test_diagnose_rejects_bad_flags(flag, message, run):
  _failed(_run('diagnose.py', '--train_dir=' + run[0], '--gpu=0', flag),
          message)


def test_evaluate_empty_directory_fails(tmp_path):
  result = _run('tests.py', '--train_dir=' + str(tmp_path), '--once',
                '--gpu=0')
  _failed(result, 'no run of train.py')
  assert not (tmp_path / 'eval_test' / 'results.jsonl').exists()


def test_evaluate_once_missing_directory_fails(tmp_path):
  """--once does not wait for train.py: it fails at once."""
  missing = tmp_path / 'missing'
  result = _run('tests.py', '--train_dir=' + str(missing), '--once',
                '--gpu=0', '--timeout_secs=600', timeout=60)
  _failed(result, str(missing), 'does not exist',
          'without --once, tests.py waits')
  assert 'waiting' not in result.stderr
  assert not missing.exists()


def test_follow_waits_for_a_missing_run_then_gives_up(tmp_path):
  """Started before train.py, tests.py says once that it waits, polls,
  and fails with a message when --timeout_secs passes without a run."""
  missing = tmp_path / 'missing'
  start = time.monotonic()
  result = _run('tests.py', '--train_dir=' + str(missing), '--gpu=0',
                '--timeout_secs=3', '--min_interval_secs=1', timeout=60)
  assert time.monotonic() - start >= 3
  _failed(result, f'{missing} does not exist yet; waiting up to 3 s',
          f'Gave up after 3 s (--timeout_secs): --train_dir {missing} still '
          'does not exist')
  assert result.stderr.count('waiting up to') == 1
  assert not missing.exists()


def _wait_for_text(path, text, timeout_secs):
  """Polls the file at `path` until it contains `text`; False on timeout."""
  deadline = time.monotonic() + timeout_secs
  while time.monotonic() < deadline:
    if path.exists() and text in path.read_text():
      return True
    time.sleep(0.5)
  return False


def test_follow_started_before_train_evaluates_the_run(data_dir, tmp_path):
  """tests.py started first waits; train.py then creates the run, and
  tests.py evaluates its checkpoints (steps 0 and 2)."""
  train_dir = tmp_path / 'train'
  log = tmp_path / 'tests.log'
  results = train_dir / 'eval_test' / 'results.jsonl'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  with open(log, 'w') as stderr:
    follower = subprocess.Popen(
        [sys.executable, os.path.join('src', 'tests.py'),
         '--train_dir=' + str(train_dir), '--data_dir=' + data_dir,
         '--gpu=0', '--xla=false', '--batch_size=1000',
         '--timeout_secs=90', '--min_interval_secs=1'],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
  try:
    assert _wait_for_text(log, 'does not exist yet; waiting', 60), (
        log.read_text()[-3000:])
    _succeeded(_run('train.py', '--train_dir=' + str(train_dir),
                    '--data_dir=' + data_dir, '--A=4', '--B=3', '--C=3',
                    '--D=3', '--max_steps=2', '--gpu=0', '--xla=false'))
    assert _wait_for_text(results, '"step": 2,', 90), log.read_text()[-3000:]
    assert follower.poll() is None, log.read_text()[-3000:]  # still following
  finally:
    follower.terminate()
    try:
      follower.wait(timeout=30)
    except subprocess.TimeoutExpired:
      follower.kill()
      follower.wait()
  output = log.read_text()
  assert output.count('waiting up to') == 1, output[-3000:]
  assert f'Found the first checkpoint in {train_dir}' in output
  records = _lines(results)
  assert [r['step'] for r in records] == [0, 2]
  assert all(r['images_evaluated'] == 10000 for r in records)


def _train_until_signal(args, log, signum, first_step):
  """Starts train.py, sends `signum` once it has logged `first_step` + 3;
  returns its log."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  with open(log, 'w') as stderr:
    trainer = subprocess.Popen(
        [sys.executable, os.path.join('src', 'train.py'),
         '--max_steps=100000', *args],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
  try:
    assert _wait_for_text(log, f'step {first_step + 3} ', 120), (
        log.read_text()[-3000:])
    trainer.send_signal(signum)
    assert trainer.wait(timeout=60) == 128 + signum, log.read_text()[-3000:]
  finally:
    if trainer.poll() is None:
      trainer.kill()
      trainer.wait()
  return log.read_text()


def test_a_signal_stops_training_with_a_checkpoint_that_resumes(data_dir,
                                                               tmp_path):
  """SIGTERM, then Ctrl-C's SIGINT on the resumed run: each stops train.py
  after the current step, which it saves though the next checkpoint is
  1,000 steps away, says so and exits with 128 + the signal; the same
  command resumes there."""
  train_dir = tmp_path / 'train'
  args = ['--train_dir=' + str(train_dir), '--data_dir=' + data_dir,
          '--A=4', '--B=3', '--C=3', '--D=3', '--batch_size=4', '--gpu=0',
          '--log_every_n_steps=1', '--save_checkpoint_steps=1000']
  last = 0
  for signum in (signal.SIGTERM, signal.SIGINT):
    output = _train_until_signal(args, tmp_path / f'{signum}.log', signum,
                                 last)
    assert f'Training from step {last} to 100000' in output, output[-3000:]
    assert 'Traceback' not in output, output[-3000:]
    stopped = re.search(r'Stopped by (\w+) at step (\d+)', output)
    assert stopped, output[-3000:]
    assert stopped.group(1) == signal.Signals(signum).name
    assert int(stopped.group(2)) >= last + 3
    last = int(stopped.group(2))
    assert tf.train.latest_checkpoint(str(train_dir)).endswith(f'-{last}')


def test_evaluate_with_corrupt_data_fails(run, data_dir, tmp_path):
  """A truncated test-labels file is named, and nothing is downloaded."""
  corrupt_dir = tmp_path / 'mnist'
  corrupt_dir.mkdir()
  for name in mnist.FILE_MD5:
    if name != mnist.TEST_LABELS:
      os.symlink(os.path.join(data_dir, name), corrupt_dir / name)
  corrupt = corrupt_dir / mnist.TEST_LABELS
  shutil.copyfile(os.path.join(data_dir, mnist.TEST_LABELS), corrupt)
  with open(corrupt, 'r+b') as f:
    f.truncate(100)
  eval_dir = tmp_path / 'eval'
  result = _run('tests.py', '--train_dir=' + run[0],
                '--data_dir=' + str(corrupt_dir), '--eval_dir=' + str(eval_dir),
                '--once', '--gpu=0', '--xla=false', timeout=60)
  _failed(result, str(corrupt))
  assert corrupt.stat().st_size == 100
  assert not (eval_dir / 'results.jsonl').exists()


def test_follow_evaluates_every_kept_checkpoint_then_times_out(run, data_dir,
                                                                tmp_path):
  """Without --once the loop catches up on the checkpoints already kept,
  oldest first, then stops after --timeout_secs with no new one; restarted,
  it skips those already evaluated with the same routing only."""
  eval_dir = tmp_path / 'eval'
  args = ['--train_dir=' + run[0], '--data_dir=' + data_dir,
          '--eval_dir=' + str(eval_dir), '--gpu=0', '--xla=false',
          '--batch_size=1000', '--timeout_secs=0', '--min_interval_secs=1']
  result = _succeeded(_run('tests.py', *args))
  assert 'No new checkpoint' in result.stderr
  kept = sorted(int(path.name.split('-')[1].split('.')[0])
                for path in pathlib.Path(run[0]).glob('model.ckpt-*.index'))
  # The resumed run saves at its start, 4, on the multiples of 3, and at
  # its end.
  assert kept == [0, 3, 4, 6, 7]
  records = _lines(eval_dir / 'results.jsonl')
  assert [r['step'] for r in records] == kept
  assert all(r['images_evaluated'] == 10000 for r in records)
  assert all((r['iterations'], r['class_iterations']) == (1, 1)
             for r in records)
  # The last step as if evaluated only by a loop routing 2 iterations.
  last = dict(records[-1], iterations=2, class_iterations=2)
  (eval_dir / 'results.jsonl').write_text(''.join(
      json.dumps(record) + '\n' for record in records[:-1] + [last]))
  again = _succeeded(_run('tests.py', *args))
  skipped = re.findall(r'model\.ckpt-(\d+) already evaluated', again.stderr)
  assert set(kept[:-1]) <= set(map(int, skipped)), again.stderr[-3000:]
  assert [(r['step'], r['iterations']) for r in _lines(
      eval_dir / 'results.jsonl')] == ([(step, 1) for step in kept[:-1]] +
                                       [(kept[-1], 2), (kept[-1], 1)])
