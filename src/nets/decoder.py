"""Reconstruction decoder: images from the pose of one class capsule.

As in Sabour, Frosst & Hinton (2017), which the reference's R1 experiments
follow: all class capsules but one are masked out (the true class in
training, the predicted class otherwise), and three fully connected layers,
512 and 1024 ReLU units and a linear output, map the 16 pose entries of that
capsule, placed in the slot of its class, to the image's pixels.

`standardize_input` (this project's departure, off by default) first
standardises each of the 16 pose entries with running estimates of its mean
and variance over the chosen capsules of the training batches. The class
capsules' pose entries can differ in scale by a factor of 100 (the first
row, which holds the coordinate addition, against the others:
notes/results.md); Adam moves each weight by about its learning rate per
step, so the first layer cannot grow weights large enough to read the small
entries within a run. The estimates are variables updated only by the
training graph (`update_statistics`), and every graph, training or not,
standardises with them, so a pose is decoded the same way in training and
evaluation. The gradient does not flow through the estimates. They start at
mean 0 and variance 1, without bias correction, so entries with variances
near 1e-6 are fully standardised only after about 1,400 steps (0.99^1400 is
1e-6). Under a tf.distribute strategy with several replicas the batch's
moments are summed across the replicas (as synchronised batch
normalisation does), so every replica updates the estimates with the moments
of the whole global batch, as one device would.
"""

import functools
import math

import tensorflow as tf

from nets import shapes

HIDDEN_UNITS = (512, 1024)
STATISTICS_DECAY = 0.99  # of the running mean and variance per step
VARIANCE_EPSILON = 1e-12  # the small entries' variances are about 1e-6


def _dense(inputs, units, activation_fn, name):
  """[N, fan_in] -> [N, units]."""
  fan_in = shapes.static_size(inputs, -1, name)
  with tf.compat.v1.variable_scope(name):
    weights = tf.compat.v1.get_variable(
        'weights', [fan_in, units], tf.float32,
        tf.compat.v1.truncated_normal_initializer(
            stddev=math.sqrt(2.0 / fan_in)))
    biases = tf.compat.v1.get_variable('biases', [units], tf.float32,
                                       tf.compat.v1.zeros_initializer())
    outputs = tf.matmul(inputs, weights) + biases
    return activation_fn(outputs) if activation_fn else outputs


# Every replica computes the same update (from the global batch's moments);
# a mirrored estimate is set to the first replica's, on every device.
_SAME_ON_EVERY_REPLICA = tf.VariableAggregation.ONLY_FIRST_REPLICA


def _batch_moments(entries):
  """Mean and variance [16] of the entries [n, 16] over the global batch:
  this replica's n rows and, under a strategy with several replicas, every
  other replica's (two all-reduces: the sums and the count, then the squared
  deviations from the global mean).

  No gradient flows through the result. The stop is needed as well as
  meant: ReplicaContext.all_reduce's custom gradient, built with the graph,
  would otherwise follow the inputs of every replica back to variables it
  cannot take (notes/distribution.md).
  """
  entries = tf.stop_gradient(entries)
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return tf.nn.moments(entries, [0])
  total = functools.partial(context.all_reduce, tf.distribute.ReduceOp.SUM)
  count = tf.cast(tf.shape(entries)[:1], entries.dtype)  # [1]
  sums = total(tf.concat([tf.reduce_sum(entries, 0), count], 0))  # [17]
  mean = sums[:-1] / sums[-1]
  variance = total(tf.reduce_sum(tf.math.squared_difference(entries, mean),
                                 0)) / sums[-1]
  return mean, variance


def _standardized(entries, update_statistics):
  """[N, 16] pose entries -> [N, 16], each entry standardised with the
  running mean and variance (first updated with this batch's moments if
  `update_statistics`)."""
  with tf.compat.v1.variable_scope('input_statistics'):
    mean = tf.compat.v1.get_variable(
        'mean', [16], tf.float32, tf.compat.v1.zeros_initializer(),
        trainable=False, aggregation=_SAME_ON_EVERY_REPLICA)
    variance = tf.compat.v1.get_variable(
        'variance', [16], tf.float32, tf.compat.v1.ones_initializer(),
        trainable=False, aggregation=_SAME_ON_EVERY_REPLICA)
  if update_statistics:
    batch_mean, batch_variance = _batch_moments(entries)
    mean = mean.assign(STATISTICS_DECAY * mean +
                       (1.0 - STATISTICS_DECAY) * batch_mean)
    variance = variance.assign(STATISTICS_DECAY * variance +
                               (1.0 - STATISTICS_DECAY) * batch_variance)
  return (entries - mean) * tf.math.rsqrt(variance + VARIANCE_EPSILON)


def chosen_poses(poses, classes, name='chosen_poses'):
  """The 16 pose entries of the capsule of `classes` in each example.

  Args:
    poses: class capsule poses [N, J, 4, 4].
    classes: int [N].
    name: the caller, for shape errors.

  Returns:
    [N, 16], row-major.
  """
  num_classes = shapes.static_size(poses, 1, name)
  return tf.gather(tf.reshape(poses, [-1, num_classes, 16]), classes,
                   batch_dims=1)


def reconstruct(poses, classes, image_shape, *, standardize_input=False,
                update_statistics=False, name='decoder'):
  """Reconstructs each image from the pose of the capsule of `classes`.

  Args:
    poses: class capsule poses [N, J, 4, 4].
    classes: int [N], the capsule to keep for each example.
    image_shape: (H, W, channels) of the images: ints, or a static shape
      such as images.shape[1:].
    standardize_input: standardise the chosen pose's entries first (see the
      module's docstring).
    update_statistics: with `standardize_input`, update the running mean
      and variance with this batch (the training graph only).
    name: variable scope.

  Returns:
    reconstructions [N, H, W, channels].
  """
  num_classes = shapes.static_size(poses, 1, name)
  image_shape = shapes.as_ints(image_shape, 'image_shape')
  chosen = chosen_poses(poses, classes, name)  # [N, 16]
  with tf.compat.v1.variable_scope(name):
    if standardize_input:
      chosen = _standardized(chosen, update_statistics)
    mask = tf.one_hot(classes, num_classes, dtype=poses.dtype)  # [N, J]
    net = tf.reshape(mask[..., None] * chosen[:, None, :],
                     [-1, num_classes * 16])
    for k, units in enumerate(HIDDEN_UNITS):
      net = _dense(net, units, tf.nn.relu, f'fc{k + 1}')
    pixels = _dense(net, math.prod(image_shape), None, 'pixels')
  return tf.reshape(pixels, [-1] + image_shape)
