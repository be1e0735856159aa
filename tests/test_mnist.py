"""Tests of datasets.mnist on tiny synthetic files and on the real files."""

import gzip
import hashlib
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import datasets
from datasets import download
from datasets import mnist
import graph_util

_REPO = pathlib.Path(__file__).resolve().parent.parent


def _real_mnist_dir():
  """The directory of the real MNIST files, or skip the test."""
  data_dir = os.environ.get('CAPSULES_MNIST_DIR', str(_REPO / 'data' / 'mnist'))
  if not all(os.path.exists(os.path.join(data_dir, name))
             for name in mnist.FILE_MD5):
    pytest.skip(f'real MNIST files not found in {data_dir}')
  return data_dir


def _idx_bytes(array, magic=None):
  """IDX encoding of a uint8 array [N] or [N, H, W]."""
  magic = magic if magic is not None else 0x800 + array.ndim
  header = magic.to_bytes(4, 'big') + b''.join(
      d.to_bytes(4, 'big') for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _write_gz(path, content):
  with gzip.open(path, 'wb', compresslevel=1) as stream:
    stream.write(content)
  return str(path)


def _tiny_arrays(num_train=10, num_test=7):
  """Random (train images, train labels, test images, test labels)."""
  rng = np.random.default_rng(0)
  return (rng.integers(1, 256, (num_train, 28, 28), dtype=np.uint8),
          rng.integers(0, 10, num_train, dtype=np.uint8),
          rng.integers(1, 256, (num_test, 28, 28), dtype=np.uint8),
          rng.integers(0, 10, num_test, dtype=np.uint8))


def _write_tiny_mnist(directory, arrays):
  """Writes the four files; returns {file name: md5}."""
  directory.mkdir(parents=True, exist_ok=True)
  names = (mnist.TRAIN_IMAGES, mnist.TRAIN_LABELS, mnist.TEST_IMAGES,
           mnist.TEST_LABELS)
  digests = {}
  for name, array in zip(names, arrays):
    path = _write_gz(directory / name, _idx_bytes(array))
    digests[name] = hashlib.md5(pathlib.Path(path).read_bytes()).hexdigest()
  return digests


@pytest.fixture
def tiny(tmp_path, monkeypatch):
  """A data dir of tiny MNIST files whose MD5s are the expected ones."""
  arrays = _tiny_arrays()
  data_dir = tmp_path / 'mnist'
  monkeypatch.setattr(mnist, 'FILE_MD5', _write_tiny_mnist(data_dir, arrays))
  monkeypatch.setattr(download, 'BACKOFF_SECONDS', 0.0)
  return str(data_dir), arrays


def test_parse_idx_reads_images_and_labels(tmp_path):
  images, labels, _, _ = _tiny_arrays()
  images_path = _write_gz(tmp_path / 'i.gz', _idx_bytes(images))
  labels_path = _write_gz(tmp_path / 'l.gz', _idx_bytes(labels))
  parsed_images = mnist.parse_idx(images_path)
  parsed_labels = mnist.parse_idx(labels_path)
  assert parsed_images.dtype == np.uint8
  assert parsed_labels.dtype == np.uint8
  np.testing.assert_array_equal(parsed_images, images)
  np.testing.assert_array_equal(parsed_labels, labels)


def test_parse_idx_rejects_truncated_gzip(tmp_path):
  path = _write_gz(tmp_path / 'images.gz', _idx_bytes(_tiny_arrays()[0]))
  content = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(content[:len(content) // 2])
  with pytest.raises(download.DataError, match='truncated') as raised:
    mnist.parse_idx(path)
  assert path in str(raised.value)


def test_parse_idx_rejects_non_gzip(tmp_path):
  path = tmp_path / 'images.gz'
  path.write_bytes(_idx_bytes(_tiny_arrays()[1]))
  with pytest.raises(download.DataError) as raised:
    mnist.parse_idx(str(path))
  assert str(path) in str(raised.value)


@pytest.mark.parametrize('content', [
    _idx_bytes(np.zeros((3, 28, 28), np.uint8), magic=0x00000802),
    _idx_bytes(np.zeros(5, np.uint8), magic=0x00000901),
    _idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-1],
    _idx_bytes(np.zeros((3, 28, 28), np.uint8)) + b'\0',
    _idx_bytes(np.zeros(5, np.uint8))[:6],
    b'\0\0',
    b'\0\0\x08\x03' + b'\xff' * 12,
], ids=['wrong-magic', 'wrong-type', 'short', 'long', 'cut-header',
        'tiny', 'huge-dims'])
def test_parse_idx_rejects_malformed_content(tmp_path, content):
  path = _write_gz(tmp_path / 'bad.gz', content)
  with pytest.raises(download.DataError) as raised:
    mnist.parse_idx(path)
  assert path in str(raised.value)


def test_maybe_download_falls_back_to_second_mirror(tmp_path, monkeypatch):
  server = tmp_path / 'server'
  monkeypatch.setattr(mnist, 'FILE_MD5',
                      _write_tiny_mnist(server, _tiny_arrays()))
  data_dir = tmp_path / 'new' / 'mnist'
  mirrors = [(tmp_path / 'empty').as_uri(), server.as_uri()]
  paths = mnist.maybe_download(str(data_dir), mirrors=mirrors)
  assert sorted(os.path.basename(p) for p in paths) == sorted(mnist.FILE_MD5)
  for name in mnist.FILE_MD5:
    assert (data_dir / name).read_bytes() == (server / name).read_bytes()
  assert sorted(os.listdir(data_dir)) == sorted(mnist.FILE_MD5)


def test_maybe_download_rejects_checksum_mismatch(tmp_path, monkeypatch):
  server = tmp_path / 'server'
  digests = _write_tiny_mnist(server, _tiny_arrays())
  digests[mnist.TRAIN_IMAGES] = '0' * 32
  monkeypatch.setattr(mnist, 'FILE_MD5', digests)
  monkeypatch.setattr(download, 'BACKOFF_SECONDS', 0.0)
  data_dir = tmp_path / 'mnist'
  with pytest.raises(download.DataError) as raised:
    mnist.maybe_download(str(data_dir), mirrors=[server.as_uri()])
  assert str(data_dir / mnist.TRAIN_IMAGES) in str(raised.value)
  assert 'MD5' in str(raised.value)
  assert os.listdir(data_dir) == []


def test_maybe_download_rejects_corrupt_present_file(tiny):
  data_dir, _ = tiny
  path = os.path.join(data_dir, mnist.TEST_LABELS)
  with open(path, 'ab') as stream:
    stream.write(b'junk')
  with pytest.raises(download.DataError,
                     match='corrupt or not the original') as raised:
    mnist.maybe_download(data_dir, mirrors=[])
  assert path in str(raised.value)


def test_read_only_directory_with_good_files_works(tiny, monkeypatch):
  data_dir, arrays = tiny

  def no_download(*args, **kwargs):
    raise AssertionError('nothing must be downloaded')

  monkeypatch.setattr(download, 'download', no_download)
  before = sorted(os.listdir(data_dir))
  os.chmod(data_dir, 0o555)
  try:
    mnist.maybe_download(data_dir, mirrors=[])
    images, labels = mnist.load(data_dir, 'test')
  finally:
    os.chmod(data_dir, 0o755)
  assert sorted(os.listdir(data_dir)) == before
  np.testing.assert_array_equal(images, arrays[2])
  np.testing.assert_array_equal(labels, arrays[3])


def test_load_returns_uint8_images_and_int32_labels(tiny):
  data_dir, arrays = tiny
  images, labels = mnist.load(data_dir, 'train')
  assert images.dtype == np.uint8 and images.shape == (10, 28, 28)
  assert labels.dtype == np.int32 and labels.shape == (10,)
  np.testing.assert_array_equal(images, arrays[0])
  np.testing.assert_array_equal(labels, arrays[1])
  with pytest.raises(ValueError, match='split'):
    mnist.load(data_dir, 'validation')


def test_load_rejects_count_mismatch(tmp_path, monkeypatch):
  images, labels, test_images, test_labels = _tiny_arrays()
  digests = _write_tiny_mnist(tmp_path,
                              (images, labels[:-1], test_images, test_labels))
  monkeypatch.setattr(mnist, 'FILE_MD5', digests)
  with pytest.raises(download.DataError) as raised:
    mnist.load(str(tmp_path), 'train')
  assert str(tmp_path / mnist.TRAIN_LABELS) in str(raised.value)


def test_train_input_shapes_and_scaling(tiny):
  data_dir, arrays = tiny
  batches, shapes = graph_util.read_dataset(
      lambda: mnist.train_input(data_dir, 4, seed=1), num_batches=6)
  assert shapes == [[4, 28, 28, 1], [4]]
  known = {arrays[0][i].tobytes(): arrays[1][i] for i in range(10)}
  for images, labels in batches:
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert images.min() >= 0.0 and images.max() <= 1.0
    for image, label in zip(images, labels):
      restored = np.rint(image[..., 0] * 255).astype(np.uint8)
      assert known[restored.tobytes()] == label


def test_train_input_reshuffles_and_is_reproducible(tiny):
  data_dir, _ = tiny

  def first_epochs(seed):
    batches, _ = graph_util.read_dataset(
        lambda: mnist.train_input(data_dir, 5, seed=seed), num_batches=4)
    return [images.tobytes() for images, _ in batches]

  run = first_epochs(7)
  assert run == first_epochs(7)
  assert run[:2] != run[2:]


def _shift(image, rows, cols):
  """Moves a [28, 28] image by (rows, cols), filling with zeros."""
  padded = np.pad(image, 2)
  return padded[2 - rows:30 - rows, 2 - cols:30 - cols]


def test_train_input_translates_by_at_most_two_pixels(tiny):
  data_dir, arrays = tiny
  batches, shapes = graph_util.read_dataset(
      lambda: mnist.train_input(data_dir, 8, seed=3, augment=True),
      num_batches=4)
  assert shapes == [[8, 28, 28, 1], [8]]
  shifts = range(-mnist.MAX_TRANSLATION, mnist.MAX_TRANSLATION + 1)
  candidates = {
      _shift(arrays[0][i], r, c).tobytes(): (arrays[1][i], (r, c))
      for i in range(10) for r in shifts for c in shifts}
  used = set()
  for images, labels in batches:
    for image, label in zip(images, labels):
      restored = np.rint(image[..., 0] * 255).astype(np.uint8)
      source_label, offset = candidates[restored.tobytes()]
      assert source_label == label
      used.add(offset)
  assert len(used) > 3


def test_eval_input_keeps_partial_last_batch(tiny):
  data_dir, arrays = tiny
  with tf.Graph().as_default():
    assert mnist.eval_input(data_dir, 3)[1] == 7
  batches, shapes = graph_util.read_dataset(lambda: mnist.eval_input(data_dir, 3)[0])
  assert shapes == [[None, 28, 28, 1], [None]]
  assert [len(labels) for _, labels in batches] == [3, 3, 1]
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  np.testing.assert_allclose(images[..., 0], arrays[2] / 255.0, atol=1e-6)
  np.testing.assert_array_equal(labels, arrays[3])


def test_eval_input_reads_the_training_split_on_request(tiny):
  data_dir, arrays = tiny
  with tf.Graph().as_default():
    assert mnist.eval_input(data_dir, 4, split='train')[1] == 10
  batches, _ = graph_util.read_dataset(
      lambda: mnist.eval_input(data_dir, 4, split='train')[0])
  assert [len(labels) for _, labels in batches] == [4, 4, 2]
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  np.testing.assert_allclose(images[..., 0], arrays[0] / 255.0, atol=1e-6)
  np.testing.assert_array_equal(labels, arrays[1])
  with pytest.raises(ValueError, match='split must be one of'):
    mnist.eval_input(data_dir, 4, split='validation')


def test_get_dataset():
  assert datasets.get_dataset('mnist') is mnist
  with pytest.raises(ValueError, match='mnist, mnist40, smallnorb'):
    datasets.get_dataset('cifar10')
  for module in datasets.DATASETS.values():
    assert isinstance(module.NUM_CLASSES, int)
    assert len(module.IMAGE_SHAPE) == 3
    assert callable(module.train_input) and callable(module.eval_input)


@pytest.fixture(scope='module')
def real_test_set():
  data_dir = _real_mnist_dir()
  return data_dir, mnist.load(data_dir, 'test')


def test_real_files_counts_and_types(real_test_set):
  data_dir, (test_images, test_labels) = real_test_set
  train_images, train_labels = mnist.load(data_dir, 'train')
  assert train_images.shape == (mnist.NUM_TRAIN_EXAMPLES, 28, 28)
  assert train_labels.shape == (mnist.NUM_TRAIN_EXAMPLES,)
  assert test_images.shape == (mnist.NUM_TEST_EXAMPLES, 28, 28)
  assert test_labels.shape == (mnist.NUM_TEST_EXAMPLES,)
  for images, labels in ((train_images, train_labels),
                         (test_images, test_labels)):
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    assert set(np.unique(labels)) == set(range(mnist.NUM_CLASSES))
  assert test_labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_real_eval_input_covers_test_set_once(real_test_set):
  data_dir, (_, test_labels) = real_test_set
  batches, shapes = graph_util.read_dataset(lambda: mnist.eval_input(data_dir, 24)[0])
  assert shapes == [[None, 28, 28, 1], [None]]
  sizes = [len(labels) for _, labels in batches]
  assert len(sizes) == 417 and sizes[-1] == 16 and sum(sizes) == 10000
  labels = np.concatenate([labels for _, labels in batches])
  np.testing.assert_array_equal(labels, test_labels)
  assert all(images.dtype == np.float32 for images, _ in batches)
  assert 0.0 <= min(images.min() for images, _ in batches)
  assert max(images.max() for images, _ in batches) == 1.0
