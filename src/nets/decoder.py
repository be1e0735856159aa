"""Reconstruction decoder: images from the pose of one class capsule.

As in Sabour, Frosst & Hinton (2017), which the reference's R1 experiments
follow: all class capsules but one are masked out (the true class in
training, the predicted class otherwise), and three fully connected layers,
512 and 1024 ReLU units and a linear output, map the 16 pose entries of that
capsule, placed in the slot of its class, to the image's pixels.
"""

import math

import tensorflow as tf

from nets import shapes

HIDDEN_UNITS = (512, 1024)


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


def reconstruct(poses, classes, image_shape, name='decoder'):
  """Reconstructs each image from the pose of the capsule of `classes`.

  Args:
    poses: class capsule poses [N, J, 4, 4].
    classes: int [N], the capsule to keep for each example.
    image_shape: (H, W, channels) of the images: ints, or a static shape
      such as images.shape[1:].
    name: variable scope.

  Returns:
    reconstructions [N, H, W, channels].
  """
  num_classes = shapes.static_size(poses, 1, name)
  image_shape = shapes.as_ints(image_shape, 'image_shape')
  mask = tf.one_hot(classes, num_classes, dtype=poses.dtype)  # [N, J]
  masked = tf.reshape(poses, [-1, num_classes, 16]) * mask[..., None]
  net = tf.reshape(masked, [-1, num_classes * 16])
  with tf.compat.v1.variable_scope(name):
    for k, units in enumerate(HIDDEN_UNITS):
      net = _dense(net, units, tf.nn.relu, f'fc{k + 1}')
    pixels = _dense(net, math.prod(image_shape), None, 'pixels')
  return tf.reshape(pixels, [-1] + image_shape)
