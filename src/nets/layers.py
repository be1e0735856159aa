"""Layers of a matrix capsule network, slim style.

Each function takes its inputs and a `name`, and builds its variables with
`tf.compat.v1.get_variable` under `tf.compat.v1.variable_scope(name)`.

A capsule layer's output is a pair (poses [N, H, W, B, 4, 4], activations
[N, H, W, B]): B capsule types at each of H x W positions, each with a 4 x 4
pose matrix M and an activation a in (0, 1).
"""

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Union

import tensorflow as tf

from nets import fused_votes
from nets import initializers
from nets import routing as em
from nets import receptive_fields
from nets import shapes
from nets import votes as votes_lib

Initialization = initializers.Initialization

POSE_SIZE = votes_lib.POSE_SIZE

# Graph collection of a `LayerTrace` per capsule layer (diagnose.py).
TRACES = 'capsule_layer_traces'


@dataclasses.dataclass(frozen=True)
class LayerTrace:
  """What a capsule layer leaves in the graph for diagnostics.

  Attributes:
    name: the layer's scope.
    poses: [N, ..., 4, 4].
    activations: [N, ...].
    iterations: per routing iteration, a dict of the assignments its M-step
      used [N, P, C, I] and the variances it found [N, P, C, 16] (see
      routing.em_routing); empty for PrimaryCaps.
    child_ids: int array [P, I] of a ConvCaps layer, None otherwise.
    min_variance: the variance floor included in those variances.
    e_step_normalization: the parents among which the E-steps normalised
      a child's assignments (routing.E_STEP_NORMALIZATIONS).
  """
  name: str
  poses: tf.Tensor
  activations: tf.Tensor
  iterations: tuple = ()
  child_ids: object = None
  min_variance: float = 0.0
  e_step_normalization: str = 'all_parents'


@dataclasses.dataclass(frozen=True)
class Routing:
  """How a capsule layer routes: Procedure 1 and its numerical stabilisers.

  The defaults compute the paper's Procedure 1 exactly (lambda = 1);
  notes/em_routing.md explains each stabiliser, and notes/recipes.md the
  released codes' departures: `activation_cost`, `cost_scale`,
  `pose_damping` and `initial_assignments` (see routing.em_routing), and
  this project's `e_step_normalization`, `e_step_annealing` (a float, or a
  scalar tensor such as a schedule of the training step) and
  `stop_assignment_gradients`. Three switches change the
  speed, not the maths (notes/performance.md): `fused_votes` lets every M-
  and E-step of a ConvCaps layer recompute the votes in CPU kernels instead
  of storing them (nets/fused_votes.py); where the kernels are unavailable
  (no compiler, or a GPU), the votes are stored, and `vote_moments` lets the
  first M-step work from poses and transforms without them; `xla` compiles
  the routing and its gradient with XLA.
  """
  inverse_temperature: Union[float, Callable[[int], float]] = 1.0
  min_variance: float = 0.0
  cost_standardization: bool = False
  log_space: bool = False
  min_mass: float = 0.0
  activation_cost: str = 'paper'
  cost_scale: str = 'none'
  pose_damping: float = 0.0
  initial_assignments: str = 'per_child'
  e_step_normalization: str = 'all_parents'
  e_step_annealing: Any = 1.0
  stop_assignment_gradients: bool = False
  xla: bool = False
  vote_moments: bool = True
  fused_votes: bool = True


def _variable(name, shape, init, fan_in=1, fan_out=1):
  """A float32 variable with the initial distribution `init`."""
  return tf.compat.v1.get_variable(name, shape, tf.float32,
                                   init.initializer(fan_in, fan_out))


def conv2d(inputs, shape, strides, padding='VALID', activation_fn=tf.nn.relu,
           use_bias=True, weights_init=initializers.Init('he'),
           biases_init=initializers.Init(), name='conv2d'):
  """A 2-D convolution with optional bias and activation (ReLU Conv1).

  Args:
    inputs: [N, H, W, shape[2]].
    shape: [KH, KW, in_channels, out_channels].
    strides: [1, SH, SW, 1].
    padding: 'VALID' or 'SAME'.
    activation_fn: applied to the output, or None.
    use_bias: add a learned bias per output channel.
    weights_init, biases_init: `initializers.Init`s; He and zeros.
    name: variable scope.

  Returns:
    [N, OH, OW, out_channels].
  """
  shape = shapes.as_ints(shape, 'conv2d shape')
  with tf.compat.v1.variable_scope(name):
    fan_in = shape[0] * shape[1] * shape[2]
    weights = _variable('weights', shape, weights_init, fan_in, shape[3])
    outputs = tf.nn.conv2d(inputs, weights, strides, padding)
    if use_bias:
      outputs = tf.nn.bias_add(outputs,
                               _variable('biases', shape[-1:], biases_init))
    if activation_fn is not None:
      outputs = activation_fn(outputs)
    return outputs


def capsules_init(inputs, shape, strides, padding='VALID',
                  pose_shape=(POSE_SIZE, POSE_SIZE),
                  init=initializers.Initialization(), name='capsules_init'):
  """PrimaryCaps (layer A -> B): a convolution gives each capsule its pose
  matrix and, through a logistic unit, its activation.

  Args:
    inputs: [N, H, W, A].
    shape: [KH, KW, A, B]; the paper uses a 1 x 1 kernel.
    strides: [1, SH, SW, 1].
    padding: 'VALID' or 'SAME'.
    pose_shape: (4, 4).
    init: an `initializers.Initialization` (its primary_* fields).
    name: variable scope.

  Returns:
    poses [N, OH, OW, B, 4, 4] and activations [N, OH, OW, B].
  """
  shape = shapes.as_ints(shape, 'capsules_init shape')
  pose_shape = shapes.as_ints(pose_shape, 'capsules_init pose_shape')
  num_types = shape[-1]
  pose_size = pose_shape[0] * pose_shape[1]
  kernel = shape[:-1]
  with tf.compat.v1.variable_scope(name):
    poses = conv2d(inputs, kernel + [num_types * pose_size], strides, padding,
                   activation_fn=None, weights_init=init.primary_poses,
                   name='poses')
    activations = conv2d(inputs, kernel + [num_types], strides, padding,
                         activation_fn=tf.sigmoid,
                         weights_init=init.primary_activations,
                         biases_init=init.primary_activation_biases,
                         name='activations')
    out_shape = tf.shape(poses)
    poses = tf.reshape(poses, tf.concat(
        [out_shape[:3], [num_types, pose_shape[0], pose_shape[1]]], axis=0))
    poses.set_shape(activations.shape.concatenate(pose_shape))
    tf.compat.v1.summary.histogram('activations', activations)
    tf.compat.v1.add_to_collection(TRACES, LayerTrace(
        tf.compat.v1.get_variable_scope().name, poses, activations))
    return poses, activations


def _transform_variable(shape, init=Initialization().conv_transforms):
  """Transformation matrices W_ij [I, C, 4, 4] from `init`."""
  return _variable('transforms', shape, init)


def _beta(num_types, beta_v_init=Initialization().conv_beta_v,
          beta_a_init=Initialization().conv_beta_a):
  """beta_v and beta_a, one each per parent capsule type [C]."""
  return (_variable('beta_v', [num_types], beta_v_init, num_types, 1),
          _variable('beta_a', [num_types], beta_a_init, num_types, 1))


def _route(votes, activations, betas, iterations, routing, child_ids,
           vote_moments=None):
  """Runs EM routing under the layer's scope; adds its summaries.

  Args: as em.em_routing; betas = (beta_v, beta_a), each [C].
  """
  beta_v, beta_a = betas
  options = {field.name: getattr(routing, field.name)  # tensors uncopied
             for field in dataclasses.fields(routing)}
  scope = (tf.compat.v1.xla.experimental.jit_scope(
      compile_ops=True, separate_compiled_gradients=False)
           if options.pop('xla') else contextlib.nullcontext())
  if not options.pop('vote_moments'):
    vote_moments = None
  del options['fused_votes']
  trace = []
  with scope:
    poses, out_activations, assignments = em.em_routing(
        votes, activations, beta_v, beta_a, iterations, child_ids=child_ids,
        vote_moments=vote_moments, trace=trace, **options)
  tf.compat.v1.summary.histogram('assignments', assignments)
  tf.compat.v1.summary.histogram('activations', out_activations)
  tf.compat.v1.add_to_collection(TRACES, LayerTrace(
      tf.compat.v1.get_variable_scope().name, poses, out_activations,
      tuple(trace), child_ids, routing.min_variance,
      routing.e_step_normalization))
  return poses, out_activations


def capsules_conv(inputs, shape, strides, iterations, routing=Routing(),
                  init=Initialization(), name='capsules_conv'):
  """ConvCaps (B -> C, C -> D): convolutional capsules routed by EM.

  Each child capsule in a K x K patch votes for every parent type with its pose
  times a learned 4 x 4 transform, one per (kernel position, child type,
  parent type). Padding is VALID, as in the paper.

  Args:
    inputs: (poses [N, H, W, B, 4, 4], activations [N, H, W, B]).
    shape: [K, K, B, C].
    strides: [1, S, S, 1].
    iterations: EM routing iterations.
    routing: a `Routing`.
    init: an `initializers.Initialization` (its conv_* fields).
    name: variable scope.

  Returns:
    poses [N, OH, OW, C, 4, 4] and activations [N, OH, OW, C].
  """
  poses, activations = inputs
  kernel_size, kernel_width, num_in, num_out = shapes.as_ints(
      shape, 'capsules_conv shape')
  strides = shapes.as_ints(strides, 'capsules_conv strides')
  stride = strides[1]
  if kernel_width != kernel_size or strides[2] != stride:
    raise ValueError(f'capsules_conv needs a square kernel and equal strides, '
                     f'got shape {shape} and strides {strides}')
  height, width = shapes.static_sizes(poses, [1, 2], 'capsules_conv')
  out_height = receptive_fields.output_size(height, kernel_size, stride)
  out_width = receptive_fields.output_size(width, kernel_size, stride)
  indices = receptive_fields.patch_indices(height, width, kernel_size,
                                           stride)  # [P, K*K]
  num_slots = kernel_size * kernel_size * num_in
  with tf.compat.v1.variable_scope(name):
    transforms = _transform_variable(
        [num_slots, num_out, POSE_SIZE, POSE_SIZE], init.conv_transforms)
    # Gather every patch: [N, P, K*K, B, ...] -> slots i = (k, b).
    flat_poses = tf.reshape(poses, [-1, height * width, num_in, POSE_SIZE,
                                    POSE_SIZE])
    flat_activations = tf.reshape(activations, [-1, height * width, num_in])
    patch_poses = tf.reshape(
        tf.gather(flat_poses, indices, axis=1),
        [-1, indices.shape[0], num_slots, POSE_SIZE, POSE_SIZE])
    patch_activations = tf.reshape(
        tf.gather(flat_activations, indices, axis=1),
        [-1, indices.shape[0], num_slots])
    child_ids = receptive_fields.child_ids(indices, num_in)
    if routing.fused_votes and fused_votes.available():
      votes = fused_votes.FusedVotes(patch_poses, transforms)
      vote_moments = None
    else:
      votes = votes_lib.compute_votes(patch_poses, transforms)
      vote_moments = functools.partial(votes_lib.vote_moments, patch_poses,
                                       transforms)
    betas = _beta(num_out, init.conv_beta_v, init.conv_beta_a)
    out_poses, out_activations = _route(
        votes, patch_activations, betas, iterations, routing, child_ids,
        vote_moments)
    return (tf.reshape(out_poses, [-1, out_height, out_width, num_out,
                                   POSE_SIZE, POSE_SIZE]),
            tf.reshape(out_activations, [-1, out_height, out_width, num_out]))


def capsules_fc(inputs, num_classes, iterations, coordinate_addition=True,
                routing=Routing(), init=Initialization(), name='capsules_fc'):
  """Class capsules: every child votes for every class.

  The transform W_bj is shared by all positions of child type b. With
  coordinate addition, the scaled (row, column) of the centre of each
  position's cell, in (0, 1), is added to the first two components of its
  votes, so the class poses can carry where their parts are.

  Args:
    inputs: (poses [N, H, W, B, 4, 4], activations [N, H, W, B]).
    num_classes: J.
    iterations: EM routing iterations.
    coordinate_addition: add the scaled coordinates to the votes.
    routing: a `Routing`.
    init: an `initializers.Initialization` (its class_* fields).
    name: variable scope.

  Returns:
    poses [N, J, 4, 4] and activations [N, J].
  """
  poses, activations = inputs
  height, width, num_in = shapes.static_sizes(poses, [1, 2, 3],
                                              'capsules_fc')
  positions = height * width
  with tf.compat.v1.variable_scope(name):
    transforms = _transform_variable(
        [num_in, num_classes, POSE_SIZE, POSE_SIZE], init.class_transforms)
    shared = tf.tile(transforms[None], [positions, 1, 1, 1, 1])
    flat_poses = tf.reshape(poses, [-1, 1, positions * num_in, POSE_SIZE,
                                    POSE_SIZE])
    votes = votes_lib.compute_votes(
        flat_poses,
        tf.reshape(shared, [positions * num_in, num_classes, POSE_SIZE,
                            POSE_SIZE]))  # [N, 1, J, H*W*B, 16]
    if coordinate_addition:
      votes += _coordinate_offsets(height, width, num_in)
    flat_activations = tf.reshape(activations, [-1, 1, positions * num_in])
    betas = _beta(num_classes, init.class_beta_v, init.class_beta_a)
    out_poses, out_activations = _route(votes, flat_activations, betas,
                                        iterations, routing, child_ids=None)
    return (tf.reshape(out_poses, [-1, num_classes, POSE_SIZE, POSE_SIZE]),
            tf.reshape(out_activations, [-1, num_classes]))


def _coordinate_offsets(height, width, num_types):
  """Scaled (row, column) in the first two of 16 vote components [H*W*B, 16]."""
  centres = receptive_fields.grid_centres(height, width)  # [H*W, 2]
  offsets = tf.pad(tf.constant(centres), [[0, 0], [0, POSE_SIZE ** 2 - 2]])
  return tf.reshape(tf.tile(offsets[:, None, :], [1, num_types, 1]),
                    [height * width * num_types, POSE_SIZE ** 2])
