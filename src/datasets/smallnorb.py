"""smallNORB: reading LeCun's binary matrices and `tf.data` input pipelines.

Files. The six original files (training/testing x dat/cat/info, see
`file_name`) are read from `data_dir`, gzipped (`.mat.gz`, as distributed at
`MIRRORS`) or uncompressed (`.mat`); if both exist the uncompressed one is
used. The uncompressed content of each file is checked against `EXPECTED`
(size, and SHA-256 for dat and cat) before use. Missing files are downloaded
as `.mat.gz`.

Preprocessing (paper section 5.1). The 96x96 stereo pairs are average-pooled
2x2 to 48x48 once at load time and kept as uint8 (each pooled value is
rounded to the nearest integer) with the two cameras as channels, i.e.
[N, 48, 48, 2]. Inside the pipelines each 48x48x2 image is standardised to
zero mean and unit variance over all of its pixels and both channels.
Training then takes a random 32x32 crop, adds a random brightness delta drawn
uniformly from [-BRIGHTNESS_MAX_DELTA, BRIGHTNESS_MAX_DELTA] (in units of
the standardised image, i.e. of its standard deviation) and scales each
channel's deviation from that channel's mean by a random contrast factor from
CONTRAST_RANGE. Evaluation takes the central 32x32 crop, or with `crops=k`
the first k windows of CROP_OFFSETS, so that a caller can average class
activations over them.

Viewpoint splits (paper section 5.1), chosen with `viewpoint_split`:
  'full': all examples of the training file / all of the testing file.
  'azimuth': train on azimuths 300, 320, 340, 0, 20 and 40 degrees (info
    values 30, 32, 34, 0, 2, 4), test on the other 12 azimuths.
  'elevation': train on the 3 lowest elevations (info values 0, 1, 2), test
    on the 6 higher ones.
For the two novel-viewpoint splits the training examples are the examples of
the training file (toy instances 4, 6, 7, 8, 9) seen from the training
viewpoints, and the test examples are the examples of the testing file (toy
instances 0, 1, 2, 3, 5) seen from the test viewpoints; so a test image is
new both in viewpoint and in toy instance.
"""

import contextlib
import functools
import gzip
import hashlib
import math
import os
import struct
import zlib

from absl import logging
import numpy as np
import tensorflow as tf

from datasets import arrays
from datasets import download

NUM_CLASSES = 5
IMAGE_SHAPE = (32, 32, 2)
NUM_TRAIN_EXAMPLES = 24300
NUM_TEST_EXAMPLES = 24300
ORIGINAL_SIZE = 96
DOWNSAMPLED_SIZE = 48
CROP_SIZE = 32
# Random brightness delta range, in units of the standardised image.
BRIGHTNESS_MAX_DELTA = 0.2
# Random contrast factor range (multiplies deviations from the channel mean).
CONTRAST_RANGE = (0.7, 1.3)
# (row, col) of the top-left corner of each evaluation crop in the 48x48
# image: the centre, the four corners, then the four edge midpoints.
_CENTRE = (DOWNSAMPLED_SIZE - CROP_SIZE) // 2
_FAR = DOWNSAMPLED_SIZE - CROP_SIZE
CROP_OFFSETS = (
    (_CENTRE, _CENTRE),
    (0, 0), (0, _FAR), (_FAR, 0), (_FAR, _FAR),
    (0, _CENTRE), (_CENTRE, 0), (_CENTRE, _FAR), (_FAR, _CENTRE),
)

# Viewpoints of the novel-viewpoint training sets, in the units of info.
TRAIN_AZIMUTHS = (30, 32, 34, 0, 2, 4)
TRAIN_ELEVATIONS = (0, 1, 2)
VIEWPOINT_SPLITS = ('full', 'azimuth', 'elevation')

MIRRORS = ('https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/',)
KINDS = ('dat', 'cat', 'info')
_FILE_PREFIX = {
    'train': 'smallnorb-5x46789x9x18x6x2x96x96-training-',
    'test': 'smallnorb-5x01235x9x18x6x2x96x96-testing-',
}

_TRAIN = _FILE_PREFIX['train']
_TEST = _FILE_PREFIX['test']
# Uncompressed file name -> (size in bytes, SHA-256 hex digest or None).
EXPECTED = {
    _TRAIN + 'dat.mat': (
        447897624,
        '4813bf104d229583fea8ed57fdc3e9258c927b8dfb43d75412e854a7a9588067'),
    _TEST + 'dat.mat': (
        447897624,
        '2b1de646c57ffdc259b8fb973a6453e90915248a8fdb4d9df948786bdae72b34'),
    _TRAIN + 'cat.mat': (
        97220,
        '591ed90c090cb6724593e8de28180bd602095ee8ec82bd1a5ca30b488cd1d06e'),
    _TEST + 'cat.mat': (
        97220,
        '591ed90c090cb6724593e8de28180bd602095ee8ec82bd1a5ca30b488cd1d06e'),
    _TRAIN + 'info.mat': (388820, None),
    _TEST + 'info.mat': (388820, None),
}

# Element type of each matrix magic number (little-endian).
_MAGIC_DTYPE = {
    0x1E3D4C51: np.dtype('<f4'),
    0x1E3D4C53: np.dtype('<f8'),
    0x1E3D4C54: np.dtype('<i4'),
    0x1E3D4C55: np.dtype('u1'),
    0x1E3D4C56: np.dtype('<i2'),
}
_MAX_NDIM = 16
_GZIP_MAGIC = b'\x1f\x8b'
# Expected (dtype, shape) of each kind of file; None matches any size.
_LAYOUT = {
    'dat': (np.dtype('u1'), (None, 2, ORIGINAL_SIZE, ORIGINAL_SIZE)),
    'cat': (np.dtype('<i4'), (None,)),
    'info': (np.dtype('<i4'), (None, 4)),
}
# Largest value of each info column: instance, elevation, azimuth, lighting.
_INFO_MAX = (9, 8, 34, 5)
# Examples decoded per step when streaming a dat file.
_EXAMPLES_PER_CHUNK = 1000


def file_name(split_name, kind):
  """Returns the uncompressed file name, e.g. '...-training-dat.mat'.

  Args:
    split_name: 'train' or 'test'.
    kind: 'dat' (images), 'cat' (labels) or 'info' (viewpoints).
  """
  return f'{_FILE_PREFIX[split_name]}{kind}.mat'


def maybe_download(data_dir, split_name, mirrors=MIRRORS):
  """Makes sure the dat, cat and info files of a split are present and good.

  Present files are only read. Missing ones are downloaded gzipped.

  Args:
    data_dir: str, directory of the smallNORB files.
    split_name: 'train' or 'test'.
    mirrors: sequence of str, base URLs tried in order for missing files.

  Returns:
    dict from kind ('dat', 'cat', 'info') to the path of its file.

  Raises:
    DataError: a file is corrupt, or missing and could not be downloaded.
  """
  paths = {}
  for kind in KINDS:
    name = file_name(split_name, kind)
    path = _find(data_dir, name)
    if path is None:
      path = _fetch(data_dir, name, kind, mirrors)
    else:
      verify_file(path, name)
    paths[kind] = path
  return paths


def _find(data_dir, name):
  """Returns the path of `name` or `name.gz` in data_dir, or None."""
  for candidate in (name, name + '.gz'):
    path = os.path.join(data_dir, candidate)
    if os.path.exists(path):
      return path
  return None


def _fetch(data_dir, name, kind, mirrors):
  """Downloads `name.gz` into data_dir, verified; returns its path."""
  path = os.path.join(data_dir, name + '.gz')
  urls = [mirror.rstrip('/') + '/' + name + '.gz' for mirror in mirrors]
  try:
    return download.download(
        urls, path, verify=functools.partial(_verify_new, name=name,
                                             kind=kind))
  except download.DataError as e:
    raise download.DataError(
        f'{e}\nThe uncompressed {name} is accepted as well. Each split '
        f'needs its dat, cat and info files; see {MIRRORS[0]}') from e


def _verify_new(path, name, kind):
  """Verifies a freshly downloaded file, including an info file's values."""
  verify_file(path, name)
  if kind == 'info':
    _check_info(read_matrix(path, *_LAYOUT['info']), path)


def verify_file(path, name):
  """Checks the uncompressed content of a file against EXPECTED[name].

  Args:
    path: str, the file, gzipped or not.
    name: str, the uncompressed file name, a key of EXPECTED.

  Raises:
    DataError: naming `path`, if it cannot be read or its size or SHA-256
      differ from the expected ones.
  """
  size, sha256 = EXPECTED[name]
  hasher = hashlib.sha256()
  num_bytes = 0
  with _open_matrix(path) as stream:
    for chunk in iter(lambda: stream.read(download.CHUNK_BYTES), b''):
      hasher.update(chunk)
      num_bytes += len(chunk)
  if num_bytes != size:
    raise download.DataError(
        f'{path} holds {num_bytes} bytes (uncompressed) but the original '
        f'{name} has {size}: it is incomplete or not the original; delete '
        'it and rerun to download again.')
  if sha256 is not None and hasher.hexdigest() != sha256:
    raise download.DataError(
        f'{path} has SHA-256 {hasher.hexdigest()} (uncompressed) but the '
        f'original {name} has {sha256}: it is corrupt or not the original; '
        'delete it and rerun to download again.')


@contextlib.contextmanager
def _open_matrix(path):
  """Opens a binary matrix file, gzipped or not, for reading bytes.

  Errors from reading or decompressing inside the `with` block become
  DataError naming the file.
  """
  try:
    with open(path, 'rb') as raw:
      gzipped = raw.read(2) == _GZIP_MAGIC
    opener = gzip.open if gzipped else open
    with opener(path, 'rb') as stream:
      yield stream
  except (OSError, EOFError, zlib.error) as e:
    raise download.DataError(
        f'Cannot read {path} ({e}); it is truncated or corrupt: delete it '
        'and rerun to download again.') from e


def _read_exactly(stream, num_bytes, path):
  """Returns the next num_bytes bytes; DataError if the file ends first.

  Reads in bounded steps, so a corrupt header announcing a huge payload
  fails at the end of the file instead of allocating memory for it.
  """
  parts = []
  remaining = num_bytes
  while remaining:
    part = stream.read(min(remaining, download.CHUNK_BYTES))
    if not part:
      raise _format_error(path, 'it is shorter than its header says')
    parts.append(part)
    remaining -= len(part)
  return b''.join(parts)


def _expect_end(stream, path):
  """Raises DataError if the stream has bytes left."""
  if stream.read(1):
    raise _format_error(path, 'it is longer than its header says')


def _format_error(path, reason):
  """Returns the DataError for a malformed binary matrix file."""
  return download.DataError(
      f'{path} is not a valid smallNORB binary matrix: {reason}. Delete it '
      'and rerun to download again.')


def _read_header(stream, path, dtype=None, shape=None):
  """Reads and checks a matrix header.

  Args:
    stream: binary file object positioned at the start of the file.
    path: str, the file's path, for error messages.
    dtype: np.dtype or None, the required element type.
    shape: tuple of int or None, or None; the required dims, None entries
      matching any size.

  Returns:
    (element dtype, tuple of dims).
  """
  magic, ndim = struct.unpack('<ii', _read_exactly(stream, 8, path))
  if magic not in _MAGIC_DTYPE:
    raise _format_error(path,
                        f'unknown magic number 0x{magic & 0xFFFFFFFF:08X}')
  if not 1 <= ndim <= _MAX_NDIM:
    raise _format_error(path, f'bad number of dimensions {ndim}')
  num_dims = max(3, ndim)
  dims = struct.unpack(f'<{num_dims}i', _read_exactly(stream, 4 * num_dims,
                                                       path))
  if min(dims) < 0 or any(d != 1 for d in dims[ndim:]):
    raise _format_error(path, f'bad dims {dims} for {ndim} dimensions')
  file_dtype, dims = _MAGIC_DTYPE[magic], dims[:ndim]
  if dtype is not None and file_dtype != dtype:
    raise _format_error(path, f'elements are {file_dtype}, expected {dtype}')
  if shape is not None and (
      len(dims) != len(shape)
      or any(want is not None and want != got
             for want, got in zip(shape, dims))):
    raise _format_error(path, f'shape {list(dims)} does not match the '
                        f'expected {["N" if s is None else s for s in shape]}')
  return file_dtype, dims


def read_matrix(path, dtype=None, shape=None):
  """Reads a whole binary matrix file, gzipped or not.

  Args:
    path: str, the file.
    dtype: np.dtype or None, the required element type.
    shape: tuple or None, the required dims (None entries match any size).

  Returns:
    array of the file's element type (native byte order) and shape.

  Raises:
    DataError: naming the file, if it is unreadable or malformed.
  """
  with _open_matrix(path) as stream:
    file_dtype, dims = _read_header(stream, path, dtype, shape)
    payload = _read_exactly(stream, math.prod(dims) * file_dtype.itemsize,
                            path)
    _expect_end(stream, path)
  array = np.frombuffer(payload, file_dtype).reshape(dims)
  return array.astype(file_dtype.newbyteorder('='))


def read_images(path):
  """Reads a dat file and average-pools its images 2x2, chunk by chunk.

  Args:
    path: str, a dat file, gzipped or not, of uint8 [N, 2, 96, 96].

  Returns:
    uint8 array [N, 48, 48, 2]: the stereo pairs downsampled to 48x48 with
    the two cameras as channels, rounded to the nearest integer.

  Raises:
    DataError: naming the file, if it is unreadable or malformed.
  """
  with _open_matrix(path) as stream:
    _, dims = _read_header(stream, path, *_LAYOUT['dat'])
    example_bytes = math.prod(dims[1:])
    chunks = []
    for start in range(0, dims[0], _EXAMPLES_PER_CHUNK):
      count = min(_EXAMPLES_PER_CHUNK, dims[0] - start)
      chunk = _read_exactly(stream, count * example_bytes, path)
      pairs = np.frombuffer(chunk, np.uint8).reshape((count,) + dims[1:])
      chunks.append(_downsample(pairs))
    _expect_end(stream, path)
  if not chunks:
    return np.zeros((0, DOWNSAMPLED_SIZE, DOWNSAMPLED_SIZE, 2), np.uint8)
  return np.concatenate(chunks)


def _downsample(pairs):
  """Average-pools 2x2: uint8 [N, 2, 96, 96] -> uint8 [N, 48, 48, 2]."""
  sums = pairs[:, :, 0::2, 0::2].astype(np.uint16)
  sums += pairs[:, :, 0::2, 1::2]
  sums += pairs[:, :, 1::2, 0::2]
  sums += pairs[:, :, 1::2, 1::2]
  rounded = (sums + 2) // 4
  return rounded.astype(np.uint8).transpose(0, 2, 3, 1)


def _check_info(info, path):
  """Raises DataError if an info matrix int32 [N, 4] has impossible values."""
  bad = (info < 0) | (info > np.array(_INFO_MAX)) | (
      (np.arange(4) == 2) & (info % 2 != 0))
  if bad.any():
    row = int(np.argwhere(bad)[0, 0])
    raise _format_error(path, f'row {row} of info is {info[row].tolist()}, '
                        'outside instance 0..9, elevation 0..8, azimuth '
                        '0, 2, .., 34, lighting 0..5')


def viewpoint_mask(info, split_name, viewpoint_split):
  """Selects the examples of a viewpoint split.

  Args:
    info: int32 array [N, 4] of (instance, elevation, azimuth, lighting).
    split_name: 'train' or 'test'.
    viewpoint_split: one of VIEWPOINT_SPLITS.

  Returns:
    bool array [N], True for the examples of the split.
  """
  if viewpoint_split == 'full':
    return np.ones(len(info), bool)
  if viewpoint_split == 'azimuth':
    seen = np.isin(info[:, 2], TRAIN_AZIMUTHS)
  else:
    seen = np.isin(info[:, 1], TRAIN_ELEVATIONS)
  return seen if split_name == 'train' else ~seen


def load(data_dir, split_name, viewpoint_split='full'):
  """Loads a split into memory, downloading its files if needed.

  Args:
    data_dir: str, directory of the smallNORB files.
    split_name: 'train' (from the training file) or 'test' (from the
      testing file).
    viewpoint_split: one of VIEWPOINT_SPLITS; see the module docstring.

  Returns:
    images: uint8 array [N, 48, 48, 2], downsampled stereo pairs.
    labels: int32 array [N], categories in [0, 5).
    info: int32 array [N, 4], (instance, elevation, azimuth, lighting).
    Examples keep their file order.

  Raises:
    ValueError: unknown split_name or viewpoint_split.
    DataError: missing, corrupt or inconsistent files.
  """
  if split_name not in _FILE_PREFIX:
    raise ValueError(f'split_name must be one of {sorted(_FILE_PREFIX)}, '
                     f'got {split_name!r}')
  if viewpoint_split not in VIEWPOINT_SPLITS:
    raise ValueError(f'viewpoint_split must be one of {VIEWPOINT_SPLITS}, '
                     f'got {viewpoint_split!r}')
  paths = maybe_download(data_dir, split_name)
  labels = read_matrix(paths['cat'], *_LAYOUT['cat'])
  info = read_matrix(paths['info'], *_LAYOUT['info'])
  images = read_images(paths['dat'])
  if not len(images) == len(labels) == len(info):
    raise download.DataError(
        f'{paths["dat"]}, {paths["cat"]} and {paths["info"]} hold '
        f'{len(images)}, {len(labels)} and {len(info)} examples; delete them '
        'and rerun to download again.')
  if labels.size and not 0 <= labels.min() <= labels.max() < NUM_CLASSES:
    raise _format_error(paths['cat'], f'labels must be in [0, {NUM_CLASSES})')
  _check_info(info, paths['info'])
  mask = viewpoint_mask(info, split_name, viewpoint_split)
  logging.info('Loaded %d of %d smallNORB %s examples (%s viewpoints) from '
               '%s.', mask.sum(), len(mask), split_name, viewpoint_split,
               data_dir)
  if mask.all():
    return images, labels, info
  return images[mask], labels[mask], info[mask]


def normalize(images):
  """Standardises each image to zero mean and unit variance.

  Args:
    images: uint8 or float tensor [..., H, W, C].

  Returns:
    float32 tensor of the same shape; the mean and variance are taken over
    H, W and C of each image (so over both cameras together).
  """
  return tf.image.per_image_standardization(tf.cast(images, tf.float32))


def train_input(data_dir, batch_size, seed=None, split='full',
                shuffle_buffer=NUM_TRAIN_EXAMPLES):
  """Infinite, shuffled and augmented training pipeline.

  Args:
    data_dir: str, directory of the smallNORB files.
    batch_size: int, examples per batch; a partial last batch of an epoch
      is dropped so the batch dimension is static.
    seed: int or None, makes shuffling and augmentation reproducible.
    split: one of VIEWPOINT_SPLITS, the viewpoints to train on.
    shuffle_buffer: int, size of the shuffle buffer (default: the whole
      training set). Reshuffled every epoch.

  Returns:
    tf.data.Dataset of (images float32 [batch_size, 32, 32, 2], labels
    int32 [batch_size]).
  """
  images, labels, _ = load(data_dir, 'train', split)
  dataset = arrays.from_arrays(images, labels).shuffle(
      shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
  dataset = tf.data.Dataset.zip((dataset, seeds)).map(
      _augment, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def _augment(example, seed):
  """Standardises, randomly crops and jitters one training example.

  Args:
    example: (image uint8 [48, 48, 2], label int32 []).
    seed: int64 [2], seed of the stateless random operations.

  Returns:
    (image float32 [32, 32, 2], label int32 []).
  """
  image, label = example
  crop_seed, brightness_seed, contrast_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=3))
  image = tf.image.stateless_random_crop(normalize(image), IMAGE_SHAPE,
                                         crop_seed)
  image = tf.image.stateless_random_brightness(image, BRIGHTNESS_MAX_DELTA,
                                               brightness_seed)
  image = tf.image.stateless_random_contrast(image, *CONTRAST_RANGE,
                                             seed=contrast_seed)
  return image, label


def eval_input(data_dir, batch_size, split='full', crops=1):
  """Finite pipeline over the test examples, once, in file order.

  The last batch is smaller when `batch_size` does not divide the number of
  examples, so that every example is evaluated exactly once.

  Args:
    data_dir: str, directory of the smallNORB files.
    batch_size: int, examples per batch.
    split: one of VIEWPOINT_SPLITS, the viewpoints to test on.
    crops: int in [1, len(CROP_OFFSETS)], fixed 32x32 crops per example,
      taken at the first `crops` entries of CROP_OFFSETS (the centre first).

  Returns:
    dataset: tf.data.Dataset of (images, labels int32 [<=batch_size]);
      images are float32 [<=batch_size, 32, 32, 2] when crops == 1 and
      [<=batch_size, crops, 32, 32, 2] otherwise.
    num_examples: int, number of test examples (24300 for 'full').
  """
  if not 1 <= crops <= len(CROP_OFFSETS):
    raise ValueError(f'crops must be in [1, {len(CROP_OFFSETS)}], got '
                     f'{crops!r}')
  images, labels, _ = load(data_dir, 'test', split)
  dataset = arrays.from_arrays(images, labels).batch(batch_size).map(
      functools.partial(_eval_crops, crops=crops),
      num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE), len(labels)


def _eval_crops(images, labels, crops):
  """Standardises a batch and cuts fixed crops.

  Args:
    images: uint8 tensor [B, 48, 48, 2].
    labels: int32 tensor [B].
    crops: int, number of crops from CROP_OFFSETS.

  Returns:
    (images float32 [B, 32, 32, 2] if crops == 1 else
    [B, crops, 32, 32, 2], labels int32 [B]).
  """
  images = normalize(images)
  windows = [images[:, row:row + CROP_SIZE, col:col + CROP_SIZE, :]
             for row, col in CROP_OFFSETS[:crops]]
  if crops == 1:
    return windows[0], labels
  return tf.stack(windows, axis=1), labels
