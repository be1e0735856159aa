"""A naive implementation of `nets.capsules.capsules_v0`, the speed baseline.

The slow reference for src/benchmark.py only, which times it in the same run
as the network of nets/ to measure the speed-ups; never train with it. It
builds exactly the variables of `capsules_v0` (the same names, shapes and
initialisers), so a checkpoint or the variable values of one fit the other,
and computes the same function the way the issue describes it:

  * ConvCaps votes: the K x K patches are gathered, the patch poses tiled over
    the C parent types and the transforms over the batch and the positions,
    and the 4 x 4 products are one batched matrix product over the tiled
    tensors, V = M W;
  * the votes are held children before parents, [N, P, I, C, 16];
  * EM routing runs every M- and E-step as separate plain ops on that tensor,
    materialising R_ij V_ij, (V - mu)^2 and (V - mu)^2 / (2 sigma^2).

The maths is that of nets/routing.py, with the stabilisers of a
`layers.Routing` (inverse_temperature, min_variance, cost_standardization,
log_space, min_mass); its speed switches (xla, vote_moments and any other)
are ignored.
"""

import math

import numpy as np
import tensorflow as tf

from nets import layers
from nets import receptive_fields
from nets import routing as em

POSE_SIZE = layers.POSE_SIZE
NUM_COMPONENTS = POSE_SIZE * POSE_SIZE


def capsules_v0_naive(inputs, num_classes, iterations, routing, a=32, b=32,
                      c=32, d=32, coordinate_addition=True,
                      conv1_padding='VALID', name='capsules_v0'):
  """Builds the network of `nets.capsules.capsules_v0`, naively.

  Args:
    inputs: images [N, H, W, channels].
    num_classes: number of class capsules.
    iterations: EM routing iterations in every capsule layer.
    routing: a `layers.Routing` for every capsule layer.
    a, b, c, d: the channel and capsule-type counts A, B, C, D.
    coordinate_addition: in the class capsules.
    conv1_padding: of ReLU Conv1, 'VALID' or 'SAME'.
    name: variable scope.

  Returns:
    poses [N, num_classes, 4, 4] and activations [N, num_classes].
  """
  _check_paper_routing(routing)
  channels = inputs.shape[-1]
  with tf.compat.v1.variable_scope(name):
    net = layers.conv2d(inputs, [5, 5, channels, a], [1, 2, 2, 1],
                        padding=conv1_padding, name='relu_conv1')
    net = layers.capsules_init(net, [1, 1, a, b], [1, 1, 1, 1],
                               name='primary_caps')
    net = _conv_caps(net, [3, 3, b, c], 2, iterations, routing, 'conv_caps1')
    net = _conv_caps(net, [3, 3, c, d], 1, iterations, routing, 'conv_caps2')
    return _class_caps(net, num_classes, iterations, coordinate_addition,
                       routing, 'class_caps')


def _check_paper_routing(routing):
  """The naive network computes the paper's routing only: a clear error for
  the released codes' departures (routing.py's second list)."""
  paper = layers.Routing()
  for name in ('activation_cost', 'cost_scale', 'pose_damping',
               'initial_assignments', 'e_step_normalization',
               'stop_assignment_gradients'):
    if getattr(routing, name) != getattr(paper, name):
      raise ValueError(f'naive.py computes the paper\'s {name} only '
                       f'({getattr(paper, name)!r}), got '
                       f'{getattr(routing, name)!r}')
  annealing = routing.e_step_annealing
  if not (isinstance(annealing, (int, float)) and annealing == 1):
    raise ValueError('naive.py computes the paper\'s E-step only '
                     f'(e_step_annealing 1), got {annealing!r}')


def _conv_caps(inputs, shape, stride, iterations, routing, name):
  """ConvCaps with VALID padding, as `layers.capsules_conv`.

  Args:
    inputs: (poses [N, H, W, B, 4, 4], activations [N, H, W, B]).
    shape: [K, K, B, C].
    stride: S.
    iterations: EM routing iterations.
    routing: a `layers.Routing`.
    name: variable scope.

  Returns:
    poses [N, OH, OW, C, 4, 4] and activations [N, OH, OW, C].
  """
  poses, activations = inputs
  kernel_size, _, num_in, num_out = shape
  height, width = int(poses.shape[1]), int(poses.shape[2])
  out_height = receptive_fields.output_size(height, kernel_size, stride)
  out_width = receptive_fields.output_size(width, kernel_size, stride)
  indices = receptive_fields.patch_indices(height, width, kernel_size,
                                           stride)  # [P, K*K]
  num_positions = indices.shape[0]
  num_slots = kernel_size * kernel_size * num_in  # slot i = k * B + b
  with tf.compat.v1.variable_scope(name):
    transforms = layers._transform_variable(  # pylint: disable=protected-access
        [num_slots, num_out, POSE_SIZE, POSE_SIZE])
    patch_poses = tf.reshape(
        tf.gather(tf.reshape(poses, [-1, height * width, num_in, POSE_SIZE,
                                     POSE_SIZE]), indices, axis=1),
        [-1, num_positions, num_slots, POSE_SIZE, POSE_SIZE])
    patch_activations = tf.reshape(
        tf.gather(tf.reshape(activations, [-1, height * width, num_in]),
                  indices, axis=1), [-1, num_positions, num_slots])
    beta_v, beta_a = layers._beta(num_out)  # pylint: disable=protected-access
    out_poses, out_activations = _naive_em_routing(
        _votes(patch_poses, transforms), patch_activations, beta_v, beta_a,
        iterations, routing, receptive_fields.child_ids(indices, num_in))
    return (tf.reshape(out_poses, [-1, out_height, out_width, num_out,
                                   POSE_SIZE, POSE_SIZE]),
            tf.reshape(out_activations, [-1, out_height, out_width, num_out]))


def _class_caps(inputs, num_classes, iterations, coordinate_addition,
                routing, name):
  """Class capsules, as `layers.capsules_fc`: one parent position.

  Args:
    inputs: (poses [N, H, W, B, 4, 4], activations [N, H, W, B]).
    num_classes: J.
    iterations: EM routing iterations.
    coordinate_addition: add the scaled coordinates to the votes.
    routing: a `layers.Routing`.
    name: variable scope.

  Returns:
    poses [N, J, 4, 4] and activations [N, J].
  """
  poses, activations = inputs
  height, width, num_in = (int(n) for n in poses.shape[1:4])
  num_slots = height * width * num_in  # slot i = (row * W + column) * B + b
  with tf.compat.v1.variable_scope(name):
    transforms = layers._transform_variable(  # pylint: disable=protected-access
        [num_in, num_classes, POSE_SIZE, POSE_SIZE])
    shared = tf.reshape(tf.tile(transforms[None], [height * width, 1, 1, 1, 1]),
                        [num_slots, num_classes, POSE_SIZE, POSE_SIZE])
    votes = _votes(tf.reshape(poses, [-1, 1, num_slots, POSE_SIZE,
                                      POSE_SIZE]), shared)  # [N, 1, I, J, 16]
    if coordinate_addition:
      votes += _coordinate_offsets(height, width, num_in,
                                   votes.dtype)[:, None, :]
    beta_v, beta_a = layers._beta(  # pylint: disable=protected-access
        num_classes)
    out_poses, out_activations = _naive_em_routing(
        votes, tf.reshape(activations, [-1, 1, num_slots]), beta_v, beta_a,
        iterations, routing, np.arange(num_slots).reshape(1, num_slots))
    return (tf.reshape(out_poses, [-1, num_classes, POSE_SIZE, POSE_SIZE]),
            tf.reshape(out_activations, [-1, num_classes]))


def _votes(poses, transforms):
  """V_ij = M_i W_ij by tiling and a batched 4 x 4 matrix product.

  Args:
    poses: M_i [N, P, I, 4, 4].
    transforms: W_ij [I, C, 4, 4].

  Returns:
    votes [N, P, I, C, 16].
  """
  num_slots, num_out = int(transforms.shape[0]), int(transforms.shape[1])
  num_positions = int(poses.shape[1])
  tiled_poses = tf.tile(poses[:, :, :, None],
                        [1, 1, 1, num_out, 1, 1])  # [N, P, I, C, 4, 4]
  tiled_transforms = tf.tile(
      transforms[None, None],
      [tf.shape(poses)[0], num_positions, 1, 1, 1, 1])  # [N, P, I, C, 4, 4]
  votes = tf.matmul(tiled_poses, tiled_transforms)
  return tf.reshape(votes, [-1, num_positions, num_slots, num_out,
                            NUM_COMPONENTS])


def _coordinate_offsets(height, width, num_types, dtype):
  """Scaled (row, column) of each slot's cell in its first two components.

  Returns:
    [H*W*B, 16] constant of `dtype`.
  """
  offsets = np.zeros((height * width, num_types, NUM_COMPONENTS), np.float32)
  offsets[:, :, :2] = receptive_fields.grid_centres(height, width)[:, None]
  return tf.constant(offsets.reshape(-1, NUM_COMPONENTS), dtype)


def _naive_em_routing(votes, activations, beta_v, beta_a, iterations, routing,
                      child_ids):
  """Procedure 1 of the paper on children-major votes.

  Args:
    votes: V_ij^h [N, P, I, C, 16].
    activations: a_i [N, P, I].
    beta_v, beta_a: [C].
    iterations: EM iterations, >= 1.
    routing: a `layers.Routing`.
    child_ids: int array [P, I] naming the child in each slot.

  Returns:
    poses mu_j [N, P, C, 16] and activations a_j [N, P, C].
  """
  num_out = int(votes.shape[3])
  slots_per_child = np.bincount(child_ids.ravel())[child_ids]  # [P, I]
  uniform = np.repeat(1.0 / (num_out * slots_per_child[..., None]), num_out,
                      axis=-1)  # [P, I, C]
  assignments = tf.ones_like(activations)[..., None] * tf.constant(
      uniform, activations.dtype)  # R_ij
  for t in range(iterations):
    with tf.name_scope(f'iteration_{t + 1}'):
      poses, variances, logits = _m_step(
          assignments, activations, votes, beta_v, beta_a,
          _inverse_temperature(routing, t), routing)
      if t < iterations - 1:
        assignments = _e_step(votes, poses, variances, logits, child_ids,
                              routing.log_space)
  return poses, tf.sigmoid(logits)


def _inverse_temperature(routing, t):
  """lambda at iteration t: a constant, or a schedule t -> lambda_t."""
  if callable(routing.inverse_temperature):
    return routing.inverse_temperature(t)
  return routing.inverse_temperature


def _divide_by_mass(sums, mass, min_mass):
  """sums / mass (0 where the mass is 0), held constant in the gradient where
  the mass is at most min_mass > 0: both quotients are formed, the held one
  from a mass replaced by 1, and one is picked."""
  quotient = tf.math.divide_no_nan(sums, mass)
  if min_mass <= 0:
    return quotient
  held = mass <= min_mass
  held_quotient = tf.stop_gradient(quotient)
  live_quotient = sums / tf.where(held, tf.ones_like(mass), mass)
  return tf.where(held, held_quotient, live_quotient)


def _m_step(assignments, activations, votes, beta_v, beta_a,
            inverse_temperature, routing):
  """M-STEP: parent poses, variances and activation logits.

  Args:
    assignments: R_ij [N, P, I, C].
    activations: a_i [N, P, I].
    votes: V_ij^h [N, P, I, C, 16].
    beta_v, beta_a: [C].
    inverse_temperature: lambda.
    routing: a `layers.Routing`.

  Returns:
    mu_j^h [N, P, C, 16], (sigma_j^h)^2 [N, P, C, 16], logits [N, P, C].
  """
  weights = assignments * activations[..., None]  # R_ij a_i [N, P, I, C]
  mass = tf.reduce_sum(weights, axis=2)[..., None]  # [N, P, C, 1]
  weighted_votes = weights[..., None] * votes  # [N, P, I, C, 16]
  poses = _divide_by_mass(tf.reduce_sum(weighted_votes, axis=2), mass,
                          routing.min_mass)
  squared_deviations = tf.square(votes - poses[:, :, None])
  variances = _divide_by_mass(
      tf.reduce_sum(weights[..., None] * squared_deviations, axis=2), mass,
      routing.min_mass)
  variances += routing.min_variance
  cost = tf.reduce_sum(
      (beta_v[:, None] + 0.5 * tf.math.log(variances)) * mass,
      axis=-1)  # [N, P, C]
  if routing.cost_standardization:
    mean = tf.reduce_mean(cost, axis=-1, keepdims=True)
    variance = tf.reduce_mean(tf.square(cost - mean), axis=-1, keepdims=True)
    cost = (cost - mean) / tf.sqrt(
        variance + em._COST_VARIANCE_FLOOR)  # pylint: disable=protected-access
  return poses, variances, inverse_temperature * (beta_a - cost)


def _e_step(votes, poses, variances, logits, child_ids, log_space):
  """E-STEP: R_ij = a_j p_j(V_ij) / sum over every parent k of child i.

  Args:
    votes: V_ij^h [N, P, I, C, 16].
    poses: mu_j^h [N, P, C, 16].
    variances: (sigma_j^h)^2 [N, P, C, 16].
    logits: [N, P, C], a_j = logistic(logits).
    child_ids: int array [P, I].
    log_space: normalise log(a_j p_j) with a max shift.

  Returns:
    R_ij [N, P, I, C].
  """
  scaled_deviations = (tf.square(votes - poses[:, :, None]) /
                       (2.0 * variances[:, :, None]))  # [N, P, I, C, 16]
  log_normaliser = (0.5 * tf.reduce_sum(tf.math.log(variances), axis=-1) +
                    0.5 * NUM_COMPONENTS * math.log(2.0 * math.pi))
  log_p = (-tf.reduce_sum(scaled_deviations, axis=-1) -
           log_normaliser[:, :, None])  # [N, P, I, C]
  if log_space:
    log_numerators = tf.math.log_sigmoid(logits)[:, :, None] + log_p
    shift = tf.stop_gradient(_over_parents(
        log_numerators, child_ids, tf.math.unsorted_segment_max))
    numerators = tf.exp(log_numerators - shift)
  else:
    numerators = tf.sigmoid(logits)[:, :, None] * tf.exp(log_p)
  return numerators / _over_parents(numerators, child_ids,
                                    tf.math.unsorted_segment_sum)


def _over_parents(values, child_ids, reduce_fn):
  """Reduces each child's values over all its parents (positions and types).

  Args:
    values: [N, P, I, C].
    child_ids: int array [P, I].
    reduce_fn: tf.math.unsorted_segment_sum or unsorted_segment_max.

  Returns:
    [N, P, I, 1]: each slot holds the reduction over its child's parents.
  """
  segment_ids = np.broadcast_to(child_ids[..., None],
                                values.shape[1:].as_list())
  per_child = reduce_fn(tf.transpose(values, [1, 2, 3, 0]), segment_ids,
                        int(child_ids.max()) + 1)  # [children, N]
  return tf.transpose(tf.gather(per_child, child_ids), [2, 0, 1])[..., None]
