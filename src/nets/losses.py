"""Losses on class-capsule activations."""

import tensorflow as tf


def spread_loss(labels, activations, margin):
  """Spread loss of the paper, averaged over the batch.

  L = sum_{i != t} max(0, m - (a_t - a_i))^2 for each example, where a_t is
  the activation of the target class; the batch mean (not the sum) is
  returned, so the learning rate does not depend on the batch size.

  Args:
    labels: int [N], the target class t of each example.
    activations: class activations a [N, J].
    margin: m, a float or scalar tensor (scheduled from 0.2 to 0.9).

  Returns:
    scalar loss.
  """
  num_classes = activations.shape[-1]
  target = tf.one_hot(labels, num_classes, dtype=activations.dtype)
  a_t = tf.reduce_sum(activations * target, axis=-1, keepdims=True)  # [N, 1]
  spread = tf.square(tf.nn.relu(margin - (a_t - activations)))  # [N, J]
  per_example = tf.reduce_sum(spread * (1.0 - target), axis=-1)
  return tf.reduce_mean(per_example)


def reconstruction_loss(images, reconstructions):
  """Sum of squared pixel errors per image, averaged over the batch.

  Args:
    images: [N, H, W, channels].
    reconstructions: [N, H, W, channels].

  Returns:
    scalar loss.
  """
  squared_error = tf.math.squared_difference(images, reconstructions)
  return tf.reduce_mean(tf.reduce_sum(squared_error, axis=[1, 2, 3]))
