"""Losses on class-capsule activations."""

import math

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


def largest_activation_gap(num_classes, inverse_temperature,
                           cost_standardization):
  """The largest margin a_t - a_i over every wrong class i that the class
  capsules can produce, so the largest spread-loss margin that can be met.

  With the costs standardised over the J classes, the logits are
  lambda (beta_a - z_j) with z of mean 0 and variance 1. The target's lead
  over all others is largest when z_t = -sqrt(J - 1) and every other
  z_i = 1 / sqrt(J - 1), and beta_a centres the two logits, giving
  tanh(lambda J / (4 sqrt(J - 1))): 0.68 at lambda = 1 and J = 10. Without
  standardisation the logits are unbounded and any margin below 1 can be
  met.

  Args:
    num_classes: J.
    inverse_temperature: lambda of the class capsules' last iteration.
    cost_standardization: whether the costs are standardised.

  Returns:
    a float in (0, 1].
  """
  if not cost_standardization or num_classes < 2:
    return 1.0
  return math.tanh(inverse_temperature * num_classes /
                   (4.0 * math.sqrt(num_classes - 1)))
