"""Data-parallel training (src/deployment.py) on logical CPU devices: the
replicas run on their devices and together make the single-device update."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import deployment
import model
import training

REPO = __import__('conftest').REPO
TINY = dict(a=4, b=3, c=3, d=3, conv1_padding='SAME')
GLOBAL_BATCH = 4
STEPS = 3


def test_from_flags():
  two = deployment.from_flags('0', 2, tf_config='')
  assert two.devices == ('/cpu:0', '/cpu:1') and two.cpu_replicas == 2
  assert deployment.from_flags('0', 1, num_gpus=0, tf_config='').num_replicas == 1
  assert deployment.from_flags('0,1', 1, num_gpus=0, tf_config='').num_replicas == 1
  assert deployment.from_flags('2,3', 1, num_gpus=4, tf_config='').devices == (
      '/gpu:0', '/gpu:1')
  with pytest.raises(ValueError, match='cpu_replicas'):
    deployment.from_flags('0', 0)


def _tf_config(index, workers=('127.0.0.1:1', '127.0.0.1:2'), **extra):
  return json.dumps({'cluster': dict({'worker': list(workers)}, **extra),
                     'task': {'type': 'worker', 'index': index}})


def test_from_tf_config():
  second = deployment.from_flags('0', 1, num_gpus=0, tf_config=_tf_config(1))
  assert second.multi_worker and not second.is_chief
  assert second.num_replicas == 2 and second.describe().startswith(
      'worker 1 of 2')
  assert deployment.from_flags('0', 1, num_gpus=0,
                               tf_config=_tf_config(0)).is_chief
  lone = deployment.from_flags('0', 1, num_gpus=0,
                               tf_config=_tf_config(0, ['127.0.0.1:1']))
  assert not lone.multi_worker
  for bad, message in ((_tf_config(2), 'task index'),
                       (_tf_config(0, ps=['h:1']), 'only "worker"'),
                       ('{"cluster": {}}', 'TF_CONFIG'), ('nonsense', 'TF_CONFIG')):
    with pytest.raises(ValueError, match=message):
      deployment.from_flags('0', 1, num_gpus=0, tf_config=bad)
  with pytest.raises(ValueError, match='cannot be combined'):
    deployment.from_flags('0', 2, tf_config=_tf_config(0))


def test_batch_must_split_evenly():
  deployment.check_batch_size(deployment.from_flags('0', 2), 24)
  with pytest.raises(ValueError, match='multiple of 2'):
    deployment.check_batch_size(deployment.from_flags('0', 2), 25)


def _dataset():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(GLOBAL_BATCH * STEPS, 28, 28, 1))
  labels = rng.integers(0, 10, size=GLOBAL_BATCH * STEPS)
  return tf.data.Dataset.from_tensor_slices(
      (images.astype(np.float32), labels.astype(np.int32))).batch(
          GLOBAL_BATCH)


def _train(setup, checkpoint, save, config=None):
  """STEPS steps of `config` (default: a tiny network at 2 iterations) from
  the values in `checkpoint` (or fresh ones, saved there); returns the
  losses, gradient norms, the devices of the ops and the final values of
  the decoder's input statistics {name: array}, every replica's copy."""
  config = config or model.ModelConfig(iterations=2, **TINY)

  def replica_step(images, labels, num_replicas):
    outputs = training.build(images, labels, config, training.TrainConfig(),
                             num_replicas=num_replicas)
    return {k: outputs[k] for k in ('train_op', 'loss', 'gradient_norm')}

  with tf.Graph().as_default() as graph:
    tf.compat.v1.set_random_seed(0)
    step = deployment.build(setup, deployment.make_strategy(setup),
                            _dataset(), replica_step)
    outputs, local_init_op = step.outputs, step.local_init_op
    saver = tf.compat.v1.train.Saver()
    session_config = deployment.session_config(
        setup, tf.compat.v1.ConfigProto(allow_soft_placement=True))
    with tf.compat.v1.Session(config=session_config) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      if local_init_op is not None:
        session.run(local_init_op)
      if save:
        saver.save(session, checkpoint)
      else:
        saver.restore(session, checkpoint)
      results = [session.run(outputs) for _ in range(STEPS)]
      statistics = {copy.name: session.run(copy)
                    for v in tf.compat.v1.global_variables()
                    if 'input_statistics' in v.op.name
                    for copy in getattr(v, 'values', (v,))}
    devices = {op.device for op in graph.get_operations()
               if op.type == 'CapsuleVoteMoments' or op.type == 'Conv2D'}
  return ([r['loss'] for r in results], [r['gradient_norm'] for r in results],
          devices, statistics)


def test_two_replicas_match_one_device(tmp_path):
  """Same initial values, same global batches: the losses and gradient norms
  of 2 replicas match one device's to 1e-4 over 3 Adam steps, and the
  network runs on both logical CPUs."""
  checkpoint = str(tmp_path / 'start')
  single = _train(deployment.Deployment(), checkpoint, save=True)
  mirrored = _train(deployment.from_flags('0', 2), checkpoint, save=False)
  np.testing.assert_allclose(mirrored[0], single[0], rtol=1e-4)
  np.testing.assert_allclose(mirrored[1], single[1], rtol=1e-4)
  assert len(set(single[0])) == STEPS  # the steps changed the loss
  placed = ' '.join(mirrored[2]).upper()
  assert 'CPU:0' in placed and 'CPU:1' in placed, mirrored[2]


def test_two_replicas_standardise_the_decoders_input_as_one_device(tmp_path):
  """With --decoder_standardization the replicas update the decoder's
  running mean and variance with the whole global batch's moments: after 3
  steps they match one device's, and so do the losses."""
  config = model.ModelConfig(iterations=1, reconstruction_weight=0.0005,
                             decoder_standardization=True, **TINY)
  checkpoint = str(tmp_path / 'start')
  single = _train(deployment.Deployment(), checkpoint, True, config)
  mirrored = _train(deployment.from_flags('0', 2), checkpoint, False, config)
  np.testing.assert_allclose(mirrored[0], single[0], rtol=1e-4)
  names = ('decoder/input_statistics/mean',
           'decoder/input_statistics/variance')
  assert set(single[3]) == {name + ':0' for name in names}
  assert set(mirrored[3]) == {name + suffix for name in names
                              for suffix in (':0', '/replica_1:0')}
  for name, value in mirrored[3].items():
    np.testing.assert_allclose(
        value, single[3][name.replace('/replica_1', '')], rtol=1e-4,
        atol=1e-7)
  start = {'decoder/input_statistics/mean:0': 0.0,
           'decoder/input_statistics/variance:0': 1.0}
  assert all(np.abs(value - start[name]).max() > 1e-4
             for name, value in single[3].items())  # the steps updated them


def _train_py(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, 'src/train.py', '--A=4', '--B=3', '--C=3', '--D=3',
       '--batch_size=4', '--save_checkpoint_steps=2', '--gpu=0', *args],
      cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
      check=False)


# The decoder with its input statistics, the state the replicas all-reduce.
DECODER = ('--reconstruction_weight=0.0005', '--decoder_standardization')


def test_train_py_resumes_on_another_number_of_devices(tmp_path):
  """Two steps on one device, then two more on two logical CPUs, from the
  same checkpoint; the variable names are those of one device."""
  if not os.path.exists(os.path.join(REPO, 'data', 'mnist')):
    pytest.skip('real MNIST files not found')
  train_dir = str(tmp_path / 'run')
  first = _train_py(f'--train_dir={train_dir}', '--max_steps=2', *DECODER)
  assert first.returncode == 0, first.stderr[-3000:]
  second = _train_py(f'--train_dir={train_dir}', '--max_steps=4',
                     '--cpu_replicas=2', *DECODER)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'from step 2 to 4' in second.stderr
  assert '/cpu:0, /cpu:1' in second.stderr
  assert tf.train.latest_checkpoint(train_dir).endswith('-4')
  names = {name for name, _ in tf.train.list_variables(train_dir)}
  assert 'capsules_v0/class_caps/transforms' in names
  assert 'decoder/input_statistics/variance' in names
  assert not any('replica' in name for name in names)


def test_train_py_refuses_a_batch_that_does_not_split(tmp_path):
  result = _train_py(f'--train_dir={tmp_path}/run', '--max_steps=1',
                     '--cpu_replicas=3')
  assert result.returncode != 0
  assert 'multiple of 3' in result.stderr
  assert 'Traceback' not in result.stderr


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(train_dir, *args):
  """Two train.py workers on 127.0.0.1; their Popen objects, chief first."""
  workers = [f'127.0.0.1:{port}' for port in _free_ports(2)]
  processes = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
               TF_CONFIG=_tf_config(index, workers))
    processes.append(subprocess.Popen(
        [sys.executable, 'src/train.py', '--A=4', '--B=3', '--C=3', '--D=3',
         '--batch_size=4', '--save_checkpoint_steps=2', '--gpu=0',
         '--log_every_n_steps=1', f'--train_dir={train_dir}', '--seed=1',
         '--step_timeout_secs=15', '--startup_timeout_secs=120', *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  return processes


def _finish(processes, timeout=300):
  """Waits for every process (killing all at the timeout): outputs, codes."""
  outputs, codes = [], []
  for process in processes:
    try:
      outputs.append(process.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      raise
    codes.append(process.returncode)
  return outputs, codes


def _losses(output):
  return dict(re.findall(r'step (\d+)  loss ([0-9.]+)', output))


def _needs_mnist():
  if not os.path.exists(os.path.join(REPO, 'data', 'mnist')):
    pytest.skip('real MNIST files not found')


def test_the_watchdog_allows_start_up_longer_than_a_step():
  """Start-up and the first step get startup_secs; every later step gets
  timeout_secs; a start-up allowance below the step timeout is raised.
  The message names the time that ran out and what was waited for."""
  watchdog = deployment.Watchdog(2, 'peer died', startup_secs=30)
  start = time.monotonic()
  assert watchdog.overdue(start + 20) is None
  assert watchdog.overdue(start + 40) == (
      'Start-up and the first step did not finish in 30 s: peer died')
  watchdog.after_run(None, None)
  now = time.monotonic()
  assert watchdog.overdue(now + 1) is None
  assert watchdog.overdue(now + 3) == (
      'No training step finished in 2 s: peer died')
  short = deployment.Watchdog(5, 'peer died', startup_secs=1)
  assert short.overdue(time.monotonic() + 3) is None


def test_two_workers_train_together_and_resume(tmp_path):
  """Both workers log the same losses; the chief alone writes checkpoints
  and starts.jsonl; both resume from the shared directory. (With the
  standardising decoder: its statistics are all-reduced across workers.)"""
  _needs_mnist()
  train_dir = str(tmp_path / 'run')
  outputs, codes = _finish(_start_workers(train_dir, '--max_steps=4',
                                          *DECODER))
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert _losses(outputs[0]) == _losses(outputs[1]) != {}
  assert 'worker 1 of 2' in outputs[1]
  assert tf.train.latest_checkpoint(train_dir).endswith('-4')
  outputs, codes = _finish(_start_workers(train_dir, '--max_steps=6',
                                          *DECODER))
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert 'from step 4 to 6' in outputs[1]
  assert tf.train.latest_checkpoint(train_dir).endswith('-6')
  with open(os.path.join(train_dir, 'starts.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [0, 4]


def test_a_dead_worker_stops_the_other_and_the_run_resumes(tmp_path):
  """Worker 1 is killed after a checkpoint past step 0 (so after the first
  step): the chief stops within its step timeout with a message and the
  threads' stacks, not a hang; the run then resumes on one machine from
  the last checkpoint."""
  _needs_mnist()
  train_dir = str(tmp_path / 'run')
  chief, worker = _start_workers(train_dir, '--max_steps=100000')
  deadline = time.monotonic() + 240
  while tf.train.latest_checkpoint(train_dir) in (None,) or \
      tf.train.latest_checkpoint(train_dir).endswith('-0'):
    assert time.monotonic() < deadline and chief.poll() is None, 'no checkpoint'
    time.sleep(1)
  worker.kill()
  killed_at = time.monotonic()
  outputs, codes = _finish([chief, worker], timeout=120)
  assert codes[0] == 3, outputs[0][-3000:]
  assert time.monotonic() - killed_at < 60
  assert ('No training step finished in 15 s: another worker has probably '
          'stopped') in outputs[0]
  assert 'Thread' in outputs[0]  # faulthandler's stacks
  last = int(tf.train.latest_checkpoint(train_dir).rsplit('-', 1)[1])
  resumed = _train_py(f'--train_dir={train_dir}', f'--max_steps={last + 2}',
                      '--seed=1')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'from step {last} to {last + 2}' in resumed.stderr
