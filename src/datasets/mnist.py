"""MNIST: reading the original IDX files and `tf.data` input pipelines.

The four gzipped IDX files of http://yann.lecun.com/exdb/mnist/ are expected
in `data_dir`; missing ones are downloaded from `MIRRORS` and every file is
checked against its published MD5 sum before use.

Images enter the network as float32 in [0, 1] with shape [28, 28, 1]. The
optional training augmentation translates each image by up to
`MAX_TRANSLATION` pixels in each direction (zero padding), as Sabour et al.
(2017) do for MNIST; it is off by default.
"""

import functools
import gzip
import math
import os
import zlib

from absl import logging
import numpy as np
import tensorflow as tf

from datasets import arrays
from datasets import download

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
NUM_TRAIN_EXAMPLES = 60000
NUM_TEST_EXAMPLES = 10000
# Largest shift, in pixels, of the training augmentation along each axis.
MAX_TRANSLATION = 2

TRAIN_IMAGES = 'train-images-idx3-ubyte.gz'
TRAIN_LABELS = 'train-labels-idx1-ubyte.gz'
TEST_IMAGES = 't10k-images-idx3-ubyte.gz'
TEST_LABELS = 't10k-labels-idx1-ubyte.gz'
# Published MD5 sums of the gzipped files.
FILE_MD5 = {
    TRAIN_IMAGES: 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
    TRAIN_LABELS: 'd53e105ee54ea40749a09fcbcd1e9432',
    TEST_IMAGES: '9fb629c4189551a2d022fa330f9573f3',
    TEST_LABELS: 'ec29112dd5afa0611ce80d1b7f02629c',
}
# (images file, labels file) of each split.
SPLIT_FILES = {
    'train': (TRAIN_IMAGES, TRAIN_LABELS),
    'test': (TEST_IMAGES, TEST_LABELS),
}
MIRRORS = (
    'https://ossci-datasets.s3.amazonaws.com/mnist/',
    'https://storage.googleapis.com/cvdf-datasets/mnist/',
    'http://yann.lecun.com/exdb/mnist/',
)

# IDX magic numbers: 0x08 (unsigned byte) elements, then the number of dims.
_IDX_MAGIC_NDIM = {0x00000801: 1, 0x00000803: 3}


def maybe_download(data_dir, mirrors=MIRRORS):
  """Makes sure the four MNIST files are in `data_dir` and intact.

  Present files are only read, so a read-only `data_dir` holding good files
  works. Missing files are downloaded atomically and verified.

  Args:
    data_dir: str, directory of the gzipped IDX files.
    mirrors: sequence of str, base URLs tried in order for missing files.

  Returns:
    list of str, the paths of the four files.

  Raises:
    DataError: a file is corrupt, or missing and could not be downloaded.
  """
  paths = []
  for name in FILE_MD5:
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
      _check_md5(path, name)
    else:
      os.makedirs(data_dir, exist_ok=True)
      urls = [mirror.rstrip('/') + '/' + name for mirror in mirrors]
      download.download(urls, path,
                        verify=functools.partial(_check_md5, name=name))
    paths.append(path)
  return paths


def _check_md5(path, name):
  """Raises DataError unless the file at `path` has the MD5 of file `name`."""
  actual = download.file_digest(path, 'md5')
  expected = FILE_MD5[name]
  if actual != expected:
    raise download.DataError(
        f'{path} has MD5 {actual} but the original {name} has {expected}: '
        'the file is corrupt or not the original; delete it to download '
        'again.')


def parse_idx(path):
  """Reads a gzipped IDX file of unsigned bytes.

  Args:
    path: str, a gzipped IDX file (magic 0x00000801 for a vector,
      0x00000803 for a stack of images).

  Returns:
    uint8 array, [N] for labels or [N, rows, cols] for images.

  Raises:
    DataError: naming the file, if it is not valid gzip, has an unknown
      magic number, or its payload does not match the header's dims.
  """
  try:
    with gzip.open(path, 'rb') as stream:
      content = stream.read()
  except (OSError, EOFError, zlib.error) as e:
    raise download.DataError(
        f'Cannot decompress {path} ({e}); it is truncated or corrupt: '
        'delete it and rerun to download again.') from e
  if len(content) < 4:
    raise _idx_error(path, 'the file is too short for an IDX header')
  magic = int.from_bytes(content[:4], 'big')
  if magic not in _IDX_MAGIC_NDIM:
    raise _idx_error(path, f'magic number 0x{magic:08x} is not an unsigned '
                     'byte IDX vector (0x00000801) or image stack '
                     '(0x00000803)')
  ndim = _IDX_MAGIC_NDIM[magic]
  offset = 4 + 4 * ndim
  if len(content) < offset:
    raise _idx_error(path, 'the file is too short for its IDX header')
  dims = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], 'big')
               for i in range(ndim))
  expected = offset + math.prod(dims)
  if len(content) != expected:
    raise _idx_error(path, f'dims {dims} need {expected} bytes but the '
                     f'decompressed file has {len(content)}')
  return np.frombuffer(content, np.uint8, offset=offset).reshape(dims).copy()


def _idx_error(path, reason):
  """Returns the DataError for a malformed IDX file."""
  return download.DataError(
      f'{path} is not a valid IDX file: {reason}. Delete it and rerun to '
      'download again.')


def load(data_dir, split):
  """Loads one MNIST split into memory, downloading it if needed.

  Args:
    data_dir: str, directory of the gzipped IDX files.
    split: 'train' or 'test'.

  Returns:
    images: uint8 array [N, 28, 28], in file order.
    labels: int32 array [N], values in [0, 10).

  Raises:
    ValueError: unknown split.
    DataError: missing, corrupt or inconsistent files.
  """
  if split not in SPLIT_FILES:
    raise ValueError(f'split must be one of {sorted(SPLIT_FILES)}, '
                     f'got {split!r}')
  maybe_download(data_dir)
  images_path, labels_path = (os.path.join(data_dir, name)
                              for name in SPLIT_FILES[split])
  images = parse_idx(images_path)
  labels = parse_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[:2]:
    raise download.DataError(
        f'{images_path} holds an array of shape {images.shape}, not '
        f'[N, 28, 28] images; delete it and rerun to download again.')
  if labels.ndim != 1 or len(labels) != len(images):
    raise download.DataError(
        f'{labels_path} holds {labels.shape} labels for {len(images)} '
        f'images in {images_path}; delete both and rerun to download again.')
  if labels.size and labels.max() >= NUM_CLASSES:
    raise download.DataError(
        f'{labels_path} has label {labels.max()} outside [0, {NUM_CLASSES}); '
        'delete it and rerun to download again.')
  logging.info('Loaded %d MNIST %s examples from %s.', len(labels), split,
               data_dir)
  return images, labels.astype(np.int32)


def train_input(data_dir, batch_size, seed=None, shuffle_buffer=60000,
                augment=False, transform=None):
  """Infinite, shuffled training pipeline.

  Args:
    data_dir: str, directory of the gzipped IDX files.
    batch_size: int, examples per batch; a partial last batch of an epoch
      is dropped so the batch dimension is static.
    seed: int or None, makes shuffling and augmentation reproducible.
    shuffle_buffer: int, size of the shuffle buffer; 60000 shuffles the
      whole training set. Reshuffled every epoch.
    augment: bool, randomly translate each image by up to
      `MAX_TRANSLATION` pixels in each direction.
    transform: None, or a function ((image uint8 [28, 28], label), seed
      int64 [2]) -> (image uint8 [H, W], label) applied to every example
      with a seed of its own (mnist40 places the digits with it); `augment`
      is this with `_translate`.

  Returns:
    tf.data.Dataset of (images float32 [batch_size, H, W, 1] in [0, 1],
    labels int32 [batch_size]); H = W = 28 unless `transform` changes them.
  """
  images, labels = load(data_dir, 'train')
  dataset = arrays.from_arrays(images, labels)
  dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                            reshuffle_each_iteration=True).repeat()
  if augment:
    transform = _translate
  if transform is not None:
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    dataset = tf.data.Dataset.zip((dataset, seeds)).map(
        transform, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE)


def eval_input(data_dir, batch_size, split='test'):
  """Finite pipeline over one split, once, in file order, unaugmented.

  The last batch is smaller when `batch_size` does not divide the number of
  examples, so that every example is evaluated exactly once.

  Args:
    data_dir: str, directory of the gzipped IDX files.
    batch_size: int, examples per batch.
    split: 'test', or 'train' to measure the training accuracy.

  Returns:
    dataset: tf.data.Dataset of (images float32 [<=batch_size, 28, 28, 1]
      in [0, 1], labels int32 [<=batch_size]).
    num_examples: int, number of examples (10000 test, 60000 train).
  """
  images, labels = load(data_dir, split)
  dataset = arrays.from_arrays(images, labels)
  dataset = dataset.batch(batch_size).map(
      to_float, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE), len(labels)


def _translate(example, seed):
  """Shifts one image by up to MAX_TRANSLATION pixels along each axis.

  Args:
    example: (image uint8 [28, 28], label int32 []).
    seed: int64 [2], seed of the stateless random crop.

  Returns:
    (image uint8 [28, 28], label int32 []).
  """
  image, label = example
  pad = MAX_TRANSLATION
  padded = tf.pad(image, [[pad, pad], [pad, pad]])
  shifted = tf.image.stateless_random_crop(padded, IMAGE_SHAPE[:2], seed)
  return shifted, label


def to_float(images, labels):
  """Scales uint8 images [B, H, W] to float32 [B, H, W, 1] in [0, 1]."""
  images = tf.cast(images, tf.float32) / 255.0
  return images[..., tf.newaxis], labels
