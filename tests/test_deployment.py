"""Data-parallel training (src/deployment.py) on logical CPU devices: the
replicas run on their devices and together make the single-device update."""

import os
import subprocess
import sys

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
  two = deployment.from_flags('0', 2)
  assert two.devices == ('/cpu:0', '/cpu:1') and two.cpu_replicas == 2
  assert deployment.from_flags('0', 1, num_gpus=0).num_replicas == 1
  assert deployment.from_flags('0,1', 1, num_gpus=0).num_replicas == 1
  assert deployment.from_flags('2,3', 1, num_gpus=4).devices == (
      '/gpu:0', '/gpu:1')
  with pytest.raises(ValueError, match='cpu_replicas'):
    deployment.from_flags('0', 0)


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


def _train(setup, checkpoint, save):
  """STEPS steps from the values in `checkpoint` (or fresh ones, saved
  there); returns the losses, gradient norms and the devices of the ops."""
  config = model.ModelConfig(iterations=2, **TINY)

  def replica_step(images, labels, num_replicas):
    outputs = training.build(images, labels, config, training.TrainConfig(),
                             num_replicas=num_replicas)
    return {k: outputs[k] for k in ('train_op', 'loss', 'gradient_norm')}

  with tf.Graph().as_default() as graph:
    tf.compat.v1.set_random_seed(0)
    outputs, local_init_op = deployment.build(setup, _dataset(), replica_step)
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
    devices = {op.device for op in graph.get_operations()
               if op.type == 'CapsuleVoteMoments' or op.type == 'Conv2D'}
  return ([r['loss'] for r in results], [r['gradient_norm'] for r in results],
          devices)


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


def _train_py(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, 'src/train.py', '--A=4', '--B=3', '--C=3', '--D=3',
       '--batch_size=4', '--save_checkpoint_steps=2', '--gpu=0', *args],
      cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
      check=False)


def test_train_py_resumes_on_another_number_of_devices(tmp_path):
  """Two steps on one device, then two more on two logical CPUs, from the
  same checkpoint; the variable names are those of one device."""
  if not os.path.exists(os.path.join(REPO, 'data', 'mnist')):
    pytest.skip('real MNIST files not found')
  train_dir = str(tmp_path / 'run')
  first = _train_py(f'--train_dir={train_dir}', '--max_steps=2')
  assert first.returncode == 0, first.stderr[-3000:]
  second = _train_py(f'--train_dir={train_dir}', '--max_steps=4',
                     '--cpu_replicas=2')
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'from step 2 to 4' in second.stderr
  assert '/cpu:0, /cpu:1' in second.stderr
  assert tf.train.latest_checkpoint(train_dir).endswith('-4')
  names = {name for name, _ in tf.train.list_variables(train_dir)}
  assert 'capsules_v0/class_caps/transforms' in names
  assert not any('replica' in name for name in names)


def test_train_py_refuses_a_batch_that_does_not_split(tmp_path):
  result = _train_py(f'--train_dir={tmp_path}/run', '--max_steps=1',
                     '--cpu_replicas=3')
  assert result.returncode != 0
  assert 'multiple of 3' in result.stderr
  assert 'Traceback' not in result.stderr
