"""The non-finite gradient on images 1,000 times out of range, with and
without --min_mass (notes/em_routing.md, "Inputs far out of range").

The draw of tests/test_layers.py::test_network_and_gradients_finite at 2
iterations, its 'huge' images and its loss, with graph seed 180 (the one
seed of 0-180 that failed on the Xeon of 2026-11-29), in the three
implementations of the M-step. Prints, for each and each min_mass, the
loss, the number of non-finite gradient entries, the largest finite one,
the global norm as training computes it (float32 `tf.linalg.global_norm`,
which --clip_gradient_norm divides by) and the first image's class
activations.

Usage (from the repository's root): python notes/runs/min_mass/reproduce.py
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', '..',
                                'src'))

import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

import model  # pylint: disable=wrong-import-position
import nets  # pylint: disable=wrong-import-position

IMPLEMENTATIONS = {
    'fused kernels': {},
    'vote moments, then stored votes': {'fused_votes': False},
    'stored votes': {'fused_votes': False, 'vote_moments': False},
}


def run(min_mass, switches, images):
  config = model.ModelConfig(iterations=2, a=8, b=4, c=4, d=4,
                             min_mass=min_mass)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(180)
    inputs = tf.compat.v1.placeholder(tf.float32, images.shape)
    poses, activations = config.build(inputs, **switches)
    loss = (nets.spread_loss(tf.constant([3, 7]), activations, 0.5) +
            tf.reduce_mean(poses))
    gradients = tf.gradients(loss, tf.compat.v1.trainable_variables())
    norm = tf.linalg.global_norm(gradients)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      return session.run([loss, activations, gradients, norm],
                         {inputs: images})


def main():
  tf.compat.v1.disable_eager_execution()
  images = 1e3 * np.random.default_rng(2).uniform(size=(2, 28, 28, 1))
  print(f'{"implementation":<32} {"min_mass":>8} {"loss":>9} '
        f'{"non-finite":>10} {"largest":>9} {"norm":>9}  '
        'class activations of image 0')
  for name, switches in IMPLEMENTATIONS.items():
    for min_mass in (0.0, 1e-20, 1e-10):
      loss, activations, gradients, norm = run(min_mass, switches, images)
      bad = sum(int(np.sum(~np.isfinite(g))) for g in gradients)
      largest = max(float(np.max(np.abs(g[np.isfinite(g)]), initial=0.0))
                    for g in gradients)
      print(f'{name:<32} {min_mass:>8g} {loss:>9.4f} {bad:>10d} '
            f'{largest:>9.2e} {norm:>9.2e}  '
            f'{np.array2string(activations[0], precision=3)}')


if __name__ == '__main__':
  main()
