"""package.py: a run packaged for shipping evaluates as the run does."""

import json
import os
import shutil

import pytest
import tensorflow as tf

import script_util

REPO = script_util.REPO


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  if not os.path.exists(os.path.join(REPO, 'data', 'mnist')):
    pytest.skip('real MNIST files not found')
  train_dir = str(tmp_path_factory.mktemp('package') / 'run')
  script_util.succeeded(script_util.run(
      'train.py', f'--train_dir={train_dir}', '--A=4', '--B=3', '--C=3',
      '--D=3', '--max_steps=3', '--save_checkpoint_steps=3', '--gpu=0',
      '--reconstruction_weight=0.0005', timeout=300))
  return train_dir


def _accuracy(result):
  return [line for line in result.stdout.splitlines()
          if line.startswith('step ')]


def test_package_is_a_movable_run_with_the_same_accuracy(run, tmp_path):
  packaged = str(tmp_path / 'pretrained')
  result = script_util.succeeded(script_util.run(
      'package.py', f'--train_dir={run}', f'--output_dir={packaged}'))
  assert 'step 3' in result.stdout
  names = set(os.listdir(packaged))
  assert {'checkpoint', 'model_config.json', 'starts.jsonl',
          'model.ckpt-3.index'} <= names
  assert not any(name.startswith('events') for name in names)
  variables = dict(tf.train.list_variables(packaged))
  assert 'capsules_v0/class_caps/transforms' in variables
  assert any(name.startswith('decoder/') for name in variables)
  assert not any('Adam' in name for name in variables)
  moved = str(tmp_path / 'moved')
  shutil.move(packaged, moved)
  original, copy = [script_util.succeeded(script_util.run(
      'tests.py', f'--train_dir={directory}', '--once', '--gpu=0',
      f'--eval_dir={tmp_path}/eval_{k}', '--batch_size=500', timeout=300))
                    for k, directory in enumerate((run, moved))]
  assert _accuracy(original) == _accuracy(copy) != []
  with open(os.path.join(moved, 'model_config.json')) as f:
    assert json.load(f)['reconstruction_weight'] == 0.0005


def test_package_refuses_an_existing_output(run, tmp_path):
  script_util.failed(script_util.run(
      'package.py', f'--train_dir={run}', f'--output_dir={tmp_path}'),
                     'exists')
  script_util.failed(script_util.run(
      'package.py', f'--train_dir={tmp_path}/none',
      f'--output_dir={tmp_path}/out'), 'does not exist')
  assert not os.path.exists(f'{tmp_path}/out')
