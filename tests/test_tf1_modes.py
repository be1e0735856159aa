"""The layers and networks build, and agree, in both TF1 graph modes.

`tf.compat.v1.disable_v2_behavior()` (what most TF1-style code calls first)
turns static shape entries into `Dimension`s, on which the layers once
failed; `disable_eager_execution()` (what train.py calls) keeps them ints.
Both switches are process-global, so build_in_tf1_mode.py runs once per mode
in a fresh interpreter, and the outputs of every public layer and network
(fixed inputs, fixed variable values) are compared. Sizes that must be
known when the graph is built, and are not, are named in the error.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import nets

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'build_in_tf1_mode.py')
MODES = ('disable_eager_execution', 'disable_v2_behavior')
TIMEOUT_SECS = 240


def _build_in_each_mode():
  """{mode: the script's JSON report}, both processes run side by side."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  processes = {mode: subprocess.Popen(
      [sys.executable, SCRIPT, '--mode=' + mode], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for mode in MODES}
  reports = {}
  for mode, process in processes.items():
    try:
      stdout, stderr = process.communicate(timeout=TIMEOUT_SECS)
    except subprocess.TimeoutExpired:
      process.kill()
      process.communicate()
      raise
    assert process.returncode == 0, f'{mode}:\n{stderr[-3000:]}'
    assert 'Traceback' not in stderr, f'{mode}:\n{stderr[-3000:]}'
    reports[mode] = json.loads(stdout.strip().splitlines()[-1])
  return reports


def test_layers_build_and_agree_in_both_tf1_modes():
  reports = _build_in_each_mode()
  eager_off, v2_off = (reports[mode] for mode in MODES)
  # The modes differ where the layers once failed.
  assert eager_off['dimension_type'] == 'int'
  assert v2_off['dimension_type'] == 'Dimension'
  for report in reports.values():
    if report['kernels']:  # capsules_v0 with fused votes used the kernels
      assert 'CapsuleVoteMoments' in report['fused_ops'], report['mode']
      assert 'CapsuleVoteQuadraticFormGrad' in report['fused_ops']
  assert eager_off['outputs'].keys() == v2_off['outputs'].keys()
  assert len(eager_off['outputs']) == 11
  for name, expected in eager_off['outputs'].items():
    expected = [np.asarray(v) for v in expected]
    actual = [np.asarray(v) for v in v2_off['outputs'][name]]
    assert len(actual) == len(expected), name
    for e, a in zip(expected, actual):
      assert e.shape == a.shape, name
      assert np.all(np.isfinite(e)), name
      np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6, err_msg=name)


def test_unknown_static_sizes_are_named():
  """Sizes the layers need when the graph is built, unknown, give an error
  that says which, not a TypeError from deep inside."""
  with tf.Graph().as_default():
    poses = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3, 4, 4])
    activations = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])
    with pytest.raises(ValueError, match=r'capsules_conv needs the static '
                       r'sizes of axes \[1, 2\]'):
      nets.capsules_conv((poses, activations), [3, 3, 3, 2], [1, 1, 1, 1], 1)
    with pytest.raises(ValueError, match='capsules_fc needs'):
      nets.capsules_fc((poses, activations), 10, 1)
    with pytest.raises(ValueError, match='conv2d shape must be known sizes'):
      nets.conv2d(tf.zeros([1, 8, 8, 1]),
                  [5, 5, tf.compat.v1.Dimension(None), 4], [1, 1, 1, 1])
