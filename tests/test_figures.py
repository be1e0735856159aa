"""The figures of pose_stats.py: reconstructions and pose perturbations of a
run with the decoder, on a tiny network."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import evaluation
import figures
import model

REPO = __import__('conftest').REPO
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)


@pytest.fixture(scope='module')
def reconstruction_run(tmp_path_factory):
  if not os.path.exists(os.path.join(REPO, 'data', 'mnist')):
    pytest.skip('real MNIST files not found')
  train_dir = str(tmp_path_factory.mktemp('r1') / 'run')
  result = _run('src/train.py', f'--train_dir={train_dir}', '--A=4', '--B=3',
                '--C=3', '--D=3', '--max_steps=2', '--gpu=0',
                '--reconstruction_weight=0.0005')
  assert result.returncode == 0, result.stderr[-3000:]
  return train_dir


def test_pose_stats_draws_reconstructions_and_perturbations(
    reconstruction_run, tmp_path):
  out = str(tmp_path / 'figures')
  result = _run('src/pose_stats.py', f'--train_dir={reconstruction_run}',
                '--gpu=0', '--num_images=100', f'--figures_dir={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ('reconstructions.png', 'perturbations.png'):
    with open(os.path.join(out, name), 'rb') as f:
      assert f.read(8) == PNG_SIGNATURE
  assert not any(name.endswith('.tmp') for name in os.listdir(out))


def test_decoding_a_pose_gives_the_networks_reconstruction(
    reconstruction_run):
  """decode_poses, which draws the perturbations, rebuilds the decoder of the
  training graph: unperturbed poses give its reconstructions."""
  config = model.ModelConfig.load(reconstruction_run)
  checkpoint = tf.train.latest_checkpoint(reconstruction_run)
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 28, 28, 1)).astype(np.float32)
  classes = np.array([1, 4, 7])
  with tf.Graph().as_default():
    poses, _ = config.build(tf.constant(images))
    reconstructions = config.reconstruct(poses, tf.constant(classes),
                                         images.shape[1:])
    true_poses = tf.reshape(tf.gather(poses, classes, batch_dims=1), [-1, 16])
    tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      saver.restore(session, checkpoint)
      expected, true_poses = session.run([reconstructions, true_poses])
  decoded = evaluation.decode_poses(config, None, checkpoint, true_poses,
                                    classes, images.shape[1:])
  np.testing.assert_allclose(decoded, expected, rtol=1e-5, atol=1e-6)


def test_image_grid_has_one_panel_per_image():
  grid = figures.image_grid(np.zeros((3, 4, 5, 5)), ['a', 'b', 'c'])
  assert len(grid.axes) == 12
