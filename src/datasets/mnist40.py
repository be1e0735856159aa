"""MNIST on a 40x40 canvas: the training set of the affNIST experiment.

Sabour, Frosst & Hinton (2017), section 5.2, train on "padded and
translated" MNIST: each 28x28 training digit placed at a random position on
a 40x40 black canvas, i.e. moved by up to 6 pixels from the centre along
each axis, and nothing else; then they test on affNIST. `train_input` is
that pipeline, with a new position for every example each epoch.

Test sets, `eval_input(test_set=...)`:
  'test'     the 10,000 MNIST test digits placed on the canvas in the same
             way, at positions drawn with the fixed seed TEST_SEED, so that
             every evaluation sees the same images;
  'affnist'  the same digits under random affine transformations on the
             canvas (datasets/affnist.py, seed affnist.SEED).

Images enter the network as float32 in [0, 1] with shape [40, 40, 1]. The
files are MNIST's (datasets/mnist.py), in the same `data_dir`.
"""

import numpy as np
import tensorflow as tf

from datasets import affnist
from datasets import arrays
from datasets import mnist

NUM_CLASSES = mnist.NUM_CLASSES
CANVAS_SIZE = affnist.CANVAS_SIZE
IMAGE_SHAPE = (CANVAS_SIZE, CANVAS_SIZE, 1)
# Largest offset of a digit's top-left corner on the canvas, along each axis.
MAX_OFFSET = CANVAS_SIZE - mnist.IMAGE_SHAPE[0]
TEST_SETS = ('test', 'affnist')
TEST_SEED = 40


def place(images, offsets):
  """Puts each digit on a black canvas at the given offset.

  Args:
    images: uint8 [N, 28, 28].
    offsets: int [N, 2], (row, column) of each digit's top-left corner, in
      [0, MAX_OFFSET].

  Returns:
    uint8 [N, 40, 40].
  """
  size = images.shape[1]
  canvas = np.zeros((len(images), CANVAS_SIZE, CANVAS_SIZE), np.uint8)
  for index, (row, column) in enumerate(offsets):
    canvas[index, row:row + size, column:column + size] = images[index]
  return canvas


def test_images(data_dir, test_set='test'):
  """One of the test sets, in memory.

  Args:
    data_dir: str, directory of the MNIST files.
    test_set: one of TEST_SETS.

  Returns:
    images: uint8 [10000, 40, 40].
    labels: int32 [10000], MNIST's, in file order.

  Raises:
    ValueError: unknown test_set.
    DataError: missing or corrupt MNIST files.
  """
  if test_set not in TEST_SETS:
    raise ValueError(f'test_set must be one of {TEST_SETS}, got '
                     f'{test_set!r}')
  images, labels = mnist.load(data_dir, 'test')
  if test_set == 'affnist':
    return affnist.transform(images, affnist.SEED, CANVAS_SIZE), labels
  offsets = np.random.default_rng(TEST_SEED).integers(
      0, MAX_OFFSET + 1, size=(len(images), 2))
  return place(images, offsets), labels


def train_input(data_dir, batch_size, seed=None,
                shuffle_buffer=mnist.NUM_TRAIN_EXAMPLES):
  """Infinite, shuffled training pipeline of randomly placed digits.

  Args:
    data_dir: str, directory of the MNIST files.
    batch_size: int, examples per batch; a partial last batch of an epoch
      is dropped so the batch dimension is static.
    seed: int or None, makes shuffling and placement reproducible.
    shuffle_buffer: int, size of the shuffle buffer (default: the whole
      training set). Reshuffled every epoch.

  Returns:
    tf.data.Dataset of (images float32 [batch_size, 40, 40, 1] in [0, 1],
    labels int32 [batch_size]).
  """
  return mnist.train_input(data_dir, batch_size, seed, shuffle_buffer,
                           transform=_place_at_random)


def eval_input(data_dir, batch_size, test_set='test'):
  """Finite pipeline over a test set, once, in file order.

  The last batch is smaller when `batch_size` does not divide the number of
  test examples, so that every example is evaluated exactly once.

  Args:
    data_dir: str, directory of the MNIST files.
    batch_size: int, examples per batch.
    test_set: one of TEST_SETS.

  Returns:
    dataset: tf.data.Dataset of (images float32 [<=batch_size, 40, 40, 1]
      in [0, 1], labels int32 [<=batch_size]).
    num_examples: int, number of test examples (10000).
  """
  images, labels = test_images(data_dir, test_set)
  dataset = arrays.from_arrays(images, labels).batch(batch_size).map(
      mnist.to_float, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE), len(labels)


def _place_at_random(example, seed):
  """Puts one digit at a random position on the canvas.

  Args:
    example: (image uint8 [28, 28], label int32 []).
    seed: int64 [2], seed of the stateless draw of the offsets.

  Returns:
    (image uint8 [40, 40], label int32 []).
  """
  image, label = example
  top, left = tf.unstack(tf.random.stateless_uniform(
      [2], seed, 0, MAX_OFFSET + 1, dtype=tf.int32))
  canvas = tf.pad(image, [[top, MAX_OFFSET - top],
                          [left, MAX_OFFSET - left]])
  canvas.set_shape(IMAGE_SHAPE[:2])
  return canvas, label
