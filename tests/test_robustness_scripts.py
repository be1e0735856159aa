"""The robustness comparisons (issue 12) as a user runs them: train.py
--model=cnn_baseline on the 40x40 canvas, tests.py on its test set and on
the affNIST-style one, and attack.py comparing it with a capsule network.

The capsule run is a tiny untrained network saved here as train.py would
save it; the baseline is trained for three steps by train.py. Needs the real
MNIST files (skips without them).
"""

import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import adversarial
import model
import script_util

REPO = pathlib.Path(__file__).resolve().parent.parent
CAPSULES = model.ModelConfig(dataset='mnist40', a=4, b=3, c=3, d=3,
                             conv1_padding='SAME', iterations=2)
BASELINE_FLAGS = ['--dataset=mnist40', '--model=cnn_baseline',
                  '--cnn_channels=4', '--cnn_hidden=16', '--batch_size=8',
                  '--log_every_n_steps=1', '--save_checkpoint_steps=3',
                  '--gpu=0']
STEP = 3


_run = script_util.run
_succeeded = script_util.succeeded
_failed = script_util.failed
_lines = script_util.jsonl


@pytest.fixture(scope='module')
def data_dir():
  return script_util.mnist_dir()


@pytest.fixture(scope='module')
def baseline_run(data_dir, tmp_path_factory):
  """(train_dir, train.py's result) of a tiny baseline trained 3 steps."""
  train_dir = str(tmp_path_factory.mktemp('baseline') / 'train')
  result = _succeeded(_run('train.py', '--train_dir=' + train_dir,
                           '--data_dir=' + data_dir, '--max_steps=3',
                           *BASELINE_FLAGS))
  return train_dir, result


@pytest.fixture(scope='module')
def capsule_run(tmp_path_factory):
  """The directory of a tiny untrained capsule run on the canvas, with
  model_config.json and a checkpoint of step STEP."""
  train_dir = str(tmp_path_factory.mktemp('capsules') / 'train')
  os.makedirs(train_dir)
  CAPSULES.save(train_dir)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)
    CAPSULES.build(tf.compat.v1.placeholder(tf.float32, [None, 40, 40, 1]))
    tf.compat.v1.train.get_or_create_global_step()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver().save(
          session, os.path.join(train_dir, 'model.ckpt'), global_step=STEP)
  return train_dir


def test_baseline_trains_with_train_py(baseline_run):
  train_dir, result = baseline_run
  with open(os.path.join(train_dir, 'model_config.json')) as f:
    config = json.load(f)
  assert (config['model'], config['dataset']) == ('cnn_baseline', 'mnist40')
  assert (config['cnn_channels'], config['cnn_hidden']) == (4, 16)
  assert os.path.exists(os.path.join(train_dir, 'model.ckpt-3.index'))
  steps = [line for line in result.stderr.splitlines() if ' step 3 ' in line]
  assert steps and 'loss' in steps[0] and 'margin' not in steps[0]


def test_tests_py_evaluates_the_baseline_on_both_test_sets(baseline_run,
                                                           data_dir):
  train_dir = baseline_run[0]
  for test_set in ('test', 'affnist'):
    result = _succeeded(_run(
        'tests.py', '--train_dir=' + train_dir, '--data_dir=' + data_dir,
        '--once', '--gpu=0', '--batch_size=1000', '--test_set=' + test_set))
    assert 'step 3: accuracy' in result.stdout
    records = _lines(os.path.join(train_dir, f'eval_{test_set}',
                                  'results.jsonl'))
    assert [r['images_evaluated'] for r in records] == [10000]
    assert 0 <= records[0]['accuracy'] <= 1


def test_attack_compares_the_runs(capsule_run, baseline_run, data_dir,
                                  tmp_path):
  output_dir = tmp_path / 'attack'
  baseline = baseline_run[0] + '@3'
  result = _succeeded(_run(
      'attack.py', '--train_dir=' + capsule_run, '--train_dir=' + baseline,
      '--output_dir=' + str(output_dir), '--data_dir=' + data_dir,
      '--num_images=12', '--batch_size=8', '--epsilons=0.1,0',
      '--bim_iterations=2', '--target=random', '--gpu=0'))
  record = json.loads((output_dir / 'attack.json').read_text())
  assert record['epsilons'] == [0.0, 0.1] and record['num_images'] == 12
  assert [(run['train_dir'], run['model']) for run in record['runs']] == [
      (capsule_run, 'capsules'), (baseline, 'cnn_baseline')]
  for run in record['runs']:
    assert run['checkpoint'] == 'model.ckpt-3'
    for name in ('fgsm_untargeted', 'fgsm_targeted', 'bim_untargeted',
                 'bim_targeted'):
      zero, positive = run[name]
      assert zero['accuracy'] == run['clean_accuracy']
      assert positive['max_perturbation'] <= 0.1 + 1e-6
      assert 0 <= positive.get('success_rate', 0) <= 1
    assert f'{run["train_dir"]} ({run["model"]}, model.ckpt-3)' in (
        result.stdout)
  for name in ('fgsm_untargeted', 'fgsm_targeted', 'bim_untargeted',
               'bim_targeted'):
    assert (output_dir / f'{name}.png').read_bytes()[:4] == b'\x89PNG'


def test_fused_and_stored_votes_give_the_same_attack_gradient(capsule_run):
  images = np.random.default_rng(2).uniform(size=(3, 40, 40, 1)).astype(
      np.float32)
  labels = np.array([3, 1, 4], np.int32)
  gradients = []
  for fused_votes in (True, False):
    with adversarial.Network(CAPSULES, [40, 40, 1],
                             fused_votes=fused_votes) as network:
      network.restore(tf.train.latest_checkpoint(capsule_run))
      gradients.append(network.gradient(images, labels))
  scale = np.abs(gradients[1]).max()
  np.testing.assert_allclose(gradients[0], gradients[1], atol=1e-4 * scale)


def test_train_refuses_a_baseline_with_a_decoder(data_dir, tmp_path):
  train_dir = tmp_path / 'train'
  _failed(_run('train.py', '--train_dir=' + str(train_dir),
               '--data_dir=' + data_dir, '--reconstruction_weight=0.0005',
               *BASELINE_FLAGS),
          'reconstruction_weight must be 0 with model cnn_baseline')
  assert not train_dir.exists()


def test_tests_py_refuses_the_affine_set_for_mnist(tmp_path):
  dataclasses.replace(CAPSULES, dataset='mnist').save(str(tmp_path))
  _failed(_run('tests.py', '--train_dir=' + str(tmp_path), '--once',
               '--gpu=0', '--test_set=affnist'),
          '--test_set=affnist is a 40x40 test set')


def test_attack_refuses_a_negative_epsilon(capsule_run, tmp_path):
  _failed(_run('attack.py', '--train_dir=' + capsule_run,
               '--output_dir=' + str(tmp_path / 'attack'),
               '--epsilons=0,-0.1', '--gpu=0'),
          '--epsilons must be numbers >= 0')
  assert not (tmp_path / 'attack').exists()
