"""Builds and runs every public layer and network in one TF1 mode; prints
their outputs as JSON (run by test_tf1_modes.py, one fresh process per mode).

  python tests/build_in_tf1_mode.py --mode=disable_v2_behavior

`--mode` is what TF1-style code calls first: `disable_eager_execution` (what
train.py and tests.py call), or `disable_v2_behavior`, after which static
shapes hold `Dimension`s instead of ints. Both are process-global, hence one
process per mode. Inputs are fixed numpy arrays and every variable is loaded
with values drawn from a generator seeded by its name, so the two modes'
outputs can be compared number for number.
"""

import json
import os
import sys
import zlib

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'src'))

# pylint: disable=wrong-import-position
import model
import nets
from nets import decoder
from nets import fused_votes
from nets import layers
# pylint: enable=wrong-import-position

FLAGS = flags.FLAGS

MODES = ('disable_eager_execution', 'disable_v2_behavior')
flags.DEFINE_enum('mode', None, MODES, 'How TF1 graph mode is entered.')
flags.mark_flag_as_required('mode')

TINY = dict(a=4, b=3, c=3, d=3)
ITERATIONS = 2


def _capsules(rng, shape):
  """Constant poses [*shape, 4, 4] and activations [*shape] in (0, 1)."""
  poses = rng.normal(size=shape + (4, 4)).astype(np.float32)
  activations = rng.uniform(0.05, 0.95, size=shape).astype(np.float32)
  return tf.constant(poses), tf.constant(activations)


def _fixed_value(variable):
  """Values for `variable` from a generator seeded by its name: transforms
  of stddev 1/2, other weights of stddev 1/sqrt(fan in), vectors 0.1."""
  name = variable.op.name
  shape = variable.shape.as_list()
  rng = np.random.default_rng(zlib.crc32(name.encode()))
  if name.endswith('transforms'):
    stddev = 0.5
  elif len(shape) > 1:
    stddev = 1.0 / np.sqrt(np.prod(shape[:-1]))
  else:
    stddev = 0.1
  return (stddev * rng.normal(size=shape)).astype(np.float32)


def build(images):
  """The tensors to compare, by name; every layer under its own scope."""
  rng = np.random.default_rng(0)
  outputs = {}
  outputs['capsules_v0'] = nets.capsules_v0(
      images, 10, ITERATIONS, layers.Routing(), name='v0_fused', **TINY)
  outputs['capsules_v0_stored_votes'] = nets.capsules_v0(
      images, 10, ITERATIONS, layers.Routing(fused_votes=False),
      name='v0_stored', **TINY)
  outputs['conv2d'] = nets.conv2d(images, [5, 5, images.shape[-1], 4],
                                  [1, 2, 2, 1])
  outputs['capsules_init'] = nets.capsules_init(
      outputs['conv2d'], [1, 1, outputs['conv2d'].shape[-1], 3],
      [1, 1, 1, 1])
  routing = model.ModelConfig().routing()  # train.py's stabilisers
  outputs['capsules_conv'] = nets.capsules_conv(
      _capsules(rng, (2, 5, 5, 3)), [3, 3, 3, 3], [1, 2, 2, 1], ITERATIONS,
      routing)
  outputs['capsules_fc'] = nets.capsules_fc(
      _capsules(rng, (2, 3, 3, 3)), 10, ITERATIONS, True, routing)
  votes = tf.constant(rng.normal(size=(2, 1, 5, 7, 16)).astype(np.float32))
  outputs['em_routing'] = nets.em_routing(
      votes, tf.constant(rng.uniform(0.1, 0.9, (2, 1, 7)).astype(np.float32)),
      tf.constant(np.linspace(-0.2, 0.2, 5, dtype=np.float32)),
      tf.constant(np.linspace(0.1, -0.1, 5, dtype=np.float32)), ITERATIONS)
  recipes = model.ModelConfig(
      iterations=ITERATIONS, activation_cost='authors', cost_scale='ibm',
      pose_damping=0.1, initial_assignments='per_slot',
      initialization='identity', class_lambda_scale=0.25, **TINY)
  with tf.compat.v1.variable_scope('recipes'):
    outputs['model_build_recipes'] = recipes.build(images)
  class_poses = outputs['capsules_v0'][0]
  outputs['decoder'] = decoder.reconstruct(
      class_poses, tf.constant([3, 7]), images.shape[1:])
  outputs['spread_loss'] = nets.spread_loss(
      tf.constant([3, 7]), outputs['capsules_v0'][1], 0.5)
  fused = [v for v in tf.compat.v1.trainable_variables()
           if v.op.name.startswith('v0_fused/')]
  outputs['capsules_v0_gradients'] = tf.gradients(
      outputs['spread_loss'] + tf.reduce_mean(class_poses), fused)
  return outputs


def _as_lists(values):
  """{name: [each array of that output as nested lists]}."""
  return {name: [np.asarray(v).tolist() for v in tf.nest.flatten(value)]
          for name, value in values.items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  getattr(tf.compat.v1, FLAGS.mode)()
  with tf.Graph().as_default() as graph:
    images = tf.constant(np.random.default_rng(1).uniform(
        size=(2, 28, 28, 1)).astype(np.float32))
    outputs = build(images)
    op_types = sorted({op.type for op in graph.get_operations()})
    with tf.compat.v1.Session() as session:
      for variable in tf.compat.v1.global_variables():
        session.run(variable.initializer,
                    {variable.initial_value: _fixed_value(variable)})
      values = session.run(outputs)
  print(json.dumps({
      'mode': FLAGS.mode,
      'dimension_type': type(tf.TensorShape([1])[0]).__name__,
      'kernels': fused_votes.available(),
      'fused_ops': [t for t in op_types if t.startswith('CapsuleVote')],
      'outputs': _as_lists(values)}))


if __name__ == '__main__':
  app.run(main)
