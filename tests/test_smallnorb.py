"""Tests of datasets.smallnorb on tiny files written in the original format."""

import gzip
import hashlib
import os
import pathlib
import struct

import numpy as np
import pytest
import tensorflow as tf

import datasets
from datasets import download
from datasets import smallnorb
import graph_util

_MAGIC = {
    np.dtype('uint8'): 0x1E3D4C55,
    np.dtype('int32'): 0x1E3D4C54,
    np.dtype('float32'): 0x1E3D4C51,
}
_NUM_EXAMPLES = 20
# Azimuths of the paper's novel-viewpoint training set, in degrees.
_TRAIN_DEGREES = (300, 320, 340, 0, 20, 40)


def _matrix_bytes(array, magic=None, ndim=None, dims=None):
  """LeCun binary matrix encoding of `array`, with optional header faults."""
  magic = _MAGIC[array.dtype] if magic is None else magic
  ndim = array.ndim if ndim is None else ndim
  if dims is None:
    dims = list(array.shape) + [1] * (3 - array.ndim)
  header = struct.pack(f'<ii{len(dims)}i', magic, ndim, *dims)
  return header + array.astype(array.dtype.newbyteorder('<')).tobytes()


def _write(path, content, gzipped=False):
  """Writes bytes, gzipped or not; returns the path as str."""
  if gzipped:
    with gzip.open(path, 'wb', compresslevel=1) as stream:
      stream.write(content)
  else:
    pathlib.Path(path).write_bytes(content)
  return str(path)


def _split_arrays(split_name):
  """Random dat, cat and info arrays of a tiny split, in the real format."""
  rng = np.random.default_rng(1 if split_name == 'train' else 2)
  index = np.arange(_NUM_EXAMPLES)
  step = 5 if split_name == 'train' else 7
  instances = (4, 6, 7, 8, 9) if split_name == 'train' else (0, 1, 2, 3, 5)
  info = np.stack([np.array(instances)[index % 5],
                   (index * (step - 1)) % 9,
                   2 * ((index * step) % 18),
                   index % 6], axis=1).astype(np.int32)
  return {
      'dat': rng.integers(0, 256, (_NUM_EXAMPLES, 2, 96, 96), dtype=np.uint8),
      'cat': rng.integers(0, 5, _NUM_EXAMPLES).astype(np.int32),
      'info': info,
  }


def _write_split(directory, split_name, arrays, gzipped):
  """Writes a split's three files; returns {file name: (size, sha256)}."""
  table = {}
  for kind, array in arrays.items():
    name = smallnorb.file_name(split_name, kind)
    content = _matrix_bytes(array)
    _write(directory / (name + '.gz' if gzipped else name), content, gzipped)
    digest = hashlib.sha256(content).hexdigest()
    table[name] = (len(content), None if kind == 'info' else digest)
  return table


@pytest.fixture
def norb(tmp_path, monkeypatch):
  """Tiny training files (gzipped) and testing files (plain), verified."""
  data_dir = tmp_path / 'smallnorb'
  data_dir.mkdir()
  arrays = {split: _split_arrays(split) for split in ('train', 'test')}
  table = {}
  table.update(_write_split(data_dir, 'train', arrays['train'], True))
  table.update(_write_split(data_dir, 'test', arrays['test'], False))
  monkeypatch.setattr(smallnorb, 'EXPECTED', table)
  monkeypatch.setattr(download, 'BACKOFF_SECONDS', 0.0)
  return str(data_dir), arrays


def _downsampled(dat):
  """Reference 2x2 average pooling: uint8 [N, 2, 96, 96] -> [N, 48, 48, 2]."""
  means = dat.reshape(len(dat), 2, 48, 2, 48, 2).mean(axis=(3, 5))
  return np.floor(means + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def _standardised(images):
  """Reference per-image standardisation of [N, 48, 48, 2], float64."""
  images = images.astype(np.float64)
  axes = (1, 2, 3)
  mean = images.mean(axis=axes, keepdims=True)
  std = np.maximum(images.std(axis=axes, keepdims=True),
                   1 / np.sqrt(images[0].size))
  return (images - mean) / std


def _viewpoint_mask(info, split_name, viewpoint_split):
  """The paper's viewpoint splits, written independently of the module."""
  if viewpoint_split == 'full':
    return np.ones(len(info), bool)
  if viewpoint_split == 'azimuth':
    seen = np.isin(info[:, 2] * 10, _TRAIN_DEGREES)
  else:
    seen = info[:, 1] < 3
  return seen if split_name == 'train' else ~seen


def test_constants():
  assert smallnorb.NUM_CLASSES == 5
  assert smallnorb.IMAGE_SHAPE == (32, 32, 2)
  assert 0 < smallnorb.BRIGHTNESS_MAX_DELTA < 1
  low, high = smallnorb.CONTRAST_RANGE
  assert 0 < low < 1 < high
  assert smallnorb.CROP_OFFSETS[0] == (8, 8)
  assert len(set(smallnorb.CROP_OFFSETS)) == len(smallnorb.CROP_OFFSETS)
  assert all(0 <= r <= 16 and 0 <= c <= 16 for r, c in smallnorb.CROP_OFFSETS)
  assert datasets.get_dataset('smallnorb') is smallnorb


def test_expected_table_holds_the_published_values():
  table = smallnorb.EXPECTED
  assert len(table) == 6
  train_dat = table['smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat']
  assert train_dat[0] == 447897624 and train_dat[1].startswith('4813bf10')
  test_dat = table['smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat']
  assert test_dat[0] == 447897624 and test_dat[1].startswith('2b1de646')
  for split in ('train', 'test'):
    assert table[smallnorb.file_name(split, 'cat')][0] == 97220
    assert table[smallnorb.file_name(split, 'info')][0] == 388820


@pytest.mark.parametrize('gzipped', [True, False], ids=['gzip', 'plain'])
def test_read_matrix_both_encodings(tmp_path, gzipped):
  arrays = _split_arrays('train')
  for kind, array in arrays.items():
    path = _write(tmp_path / kind, _matrix_bytes(array), gzipped)
    read = smallnorb.read_matrix(path)
    assert read.dtype == array.dtype and read.shape == array.shape
    np.testing.assert_array_equal(read, array)
  floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
  path = _write(tmp_path / 'floats', _matrix_bytes(floats), gzipped)
  np.testing.assert_array_equal(smallnorb.read_matrix(path), floats)


@pytest.mark.parametrize('gzipped', [True, False], ids=['gzip', 'plain'])
def test_read_images_downsamples_to_channels_last(tmp_path, gzipped,
                                                  monkeypatch):
  monkeypatch.setattr(smallnorb, '_EXAMPLES_PER_CHUNK', 3)
  dat = _split_arrays('test')['dat']
  path = _write(tmp_path / 'dat', _matrix_bytes(dat), gzipped)
  images = smallnorb.read_images(path)
  assert images.dtype == np.uint8 and images.shape == (_NUM_EXAMPLES, 48, 48, 2)
  np.testing.assert_array_equal(images, _downsampled(dat))


_CAT = np.arange(6, dtype=np.int32) % 5
_DAT = np.zeros((2, 2, 96, 96), np.uint8)


@pytest.mark.parametrize('content, reader', [
    (_matrix_bytes(_CAT, magic=0x1E3D4C50), 'cat'),
    (_matrix_bytes(_CAT, ndim=2), 'cat'),
    (_matrix_bytes(_CAT, ndim=0), 'cat'),
    (_matrix_bytes(_CAT, ndim=99), 'cat'),
    (_matrix_bytes(_CAT, dims=[6, 1, 2]), 'cat'),
    (_matrix_bytes(_CAT.astype(np.uint8)), 'cat'),
    (_matrix_bytes(_CAT)[:-1], 'cat'),
    (_matrix_bytes(_CAT) + b'\0', 'cat'),
    (_matrix_bytes(_CAT)[:10], 'cat'),
    (_matrix_bytes(np.zeros((6, 5), np.int32)), 'info'),
    (_matrix_bytes(_DAT)[:-1], 'dat'),
    (_matrix_bytes(_DAT) + b'\0', 'dat'),
    (_matrix_bytes(np.zeros((2, 3, 96, 96), np.uint8)), 'dat'),
    (_matrix_bytes(_DAT, magic=0x1E3D4C54), 'dat'),
    (_matrix_bytes(_CAT, dims=[2**31 - 1, 1, 1]), 'cat'),
    (_matrix_bytes(_DAT, dims=[2**31 - 1, 2, 96, 96]), 'dat'),
], ids=['magic', 'ndim-2', 'ndim-0', 'ndim-99', 'padding-dim', 'dtype',
        'short', 'long', 'cut-header', 'info-columns', 'dat-short',
        'dat-long', 'dat-dims', 'dat-dtype', 'huge-cat', 'huge-dat'])
@pytest.mark.parametrize('gzipped', [True, False], ids=['gzip', 'plain'])
def test_malformed_files_raise_data_error_naming_the_file(
    tmp_path, content, reader, gzipped):
  path = _write(tmp_path / 'bad.mat', content, gzipped)
  with pytest.raises(download.DataError) as raised:
    if reader == 'dat':
      smallnorb.read_images(path)
    else:
      smallnorb.read_matrix(path, *smallnorb._LAYOUT[reader])
  assert path in str(raised.value)


@pytest.mark.parametrize('reader', ['matrix', 'images', 'verify'])
def test_truncated_gzip_raises_data_error(tmp_path, reader):
  path = _write(tmp_path / 'dat.mat.gz', _matrix_bytes(_DAT), True)
  content = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(content[:len(content) // 2])
  with pytest.raises(download.DataError, match='truncated') as raised:
    if reader == 'matrix':
      smallnorb.read_matrix(path)
    elif reader == 'images':
      smallnorb.read_images(path)
    else:
      smallnorb.verify_file(path, smallnorb.file_name('train', 'dat'))
  assert path in str(raised.value)


def test_verification_reports_size_and_checksum_mismatch(tmp_path,
                                                          monkeypatch):
  content = _matrix_bytes(_CAT)
  name = smallnorb.file_name('test', 'cat')
  path = _write(tmp_path / (name + '.gz'), content, True)
  digest = hashlib.sha256(content).hexdigest()
  monkeypatch.setitem(smallnorb.EXPECTED, name, (len(content), digest))
  smallnorb.verify_file(path, name)
  monkeypatch.setitem(smallnorb.EXPECTED, name, (len(content), 'f' * 64))
  with pytest.raises(download.DataError, match='SHA-256') as raised:
    smallnorb.verify_file(path, name)
  assert path in str(raised.value)
  monkeypatch.setitem(smallnorb.EXPECTED, name, (len(content) + 4, digest))
  with pytest.raises(download.DataError, match='bytes') as raised:
    smallnorb.verify_file(path, name)
  assert path in str(raised.value)


def test_load_reports_checksum_mismatch(norb, monkeypatch):
  data_dir, _ = norb
  name = smallnorb.file_name('test', 'dat')
  size, _ = smallnorb.EXPECTED[name]
  monkeypatch.setitem(smallnorb.EXPECTED, name, (size, '0' * 64))
  with pytest.raises(download.DataError, match='SHA-256') as raised:
    smallnorb.load(data_dir, 'test')
  assert os.path.join(data_dir, name) in str(raised.value)


@pytest.mark.parametrize('split_name', ['train', 'test'])
def test_load_full_split(norb, split_name):
  data_dir, arrays = norb
  images, labels, info = smallnorb.load(data_dir, split_name)
  assert images.dtype == np.uint8 and images.shape == (_NUM_EXAMPLES, 48, 48, 2)
  assert labels.dtype == np.int32 and labels.shape == (_NUM_EXAMPLES,)
  assert info.dtype == np.int32 and info.shape == (_NUM_EXAMPLES, 4)
  np.testing.assert_array_equal(images, _downsampled(arrays[split_name]['dat']))
  np.testing.assert_array_equal(labels, arrays[split_name]['cat'])
  np.testing.assert_array_equal(info, arrays[split_name]['info'])


@pytest.mark.parametrize('viewpoint_split', ['azimuth', 'elevation'])
@pytest.mark.parametrize('split_name', ['train', 'test'])
def test_viewpoint_splits_select_the_paper_viewpoints(norb, split_name,
                                                      viewpoint_split):
  data_dir, arrays = norb
  source = arrays[split_name]
  mask = _viewpoint_mask(source['info'], split_name, viewpoint_split)
  assert 0 < mask.sum() < _NUM_EXAMPLES
  images, labels, info = smallnorb.load(data_dir, split_name, viewpoint_split)
  np.testing.assert_array_equal(info, source['info'][mask])
  np.testing.assert_array_equal(labels, source['cat'][mask])
  np.testing.assert_array_equal(images, _downsampled(source['dat'][mask]))


def test_viewpoint_mask_on_every_viewpoint():
  elevation, azimuth = np.meshgrid(np.arange(9), np.arange(0, 36, 2))
  info = np.stack([np.zeros(elevation.size, np.int32), elevation.ravel(),
                   azimuth.ravel(), np.zeros(elevation.size, np.int32)], 1)
  for viewpoint_split, train_count in (('full', 162), ('azimuth', 54),
                                       ('elevation', 54)):
    train = smallnorb.viewpoint_mask(info, 'train', viewpoint_split)
    test = smallnorb.viewpoint_mask(info, 'test', viewpoint_split)
    assert train.sum() == train_count
    np.testing.assert_array_equal(
        train, _viewpoint_mask(info, 'train', viewpoint_split))
    np.testing.assert_array_equal(
        test, _viewpoint_mask(info, 'test', viewpoint_split))


def test_load_rejects_bad_arguments(norb):
  data_dir, _ = norb
  with pytest.raises(ValueError, match='split_name'):
    smallnorb.load(data_dir, 'validation')
  with pytest.raises(ValueError, match='viewpoint_split'):
    smallnorb.load(data_dir, 'train', 'lighting')


@pytest.mark.parametrize('kind, column, value', [
    ('cat', None, 5), ('info', 1, 9), ('info', 2, 3), ('info', 3, 6),
    ('info', 0, -1)])
def test_load_rejects_impossible_values(tmp_path, monkeypatch, kind, column,
                                        value):
  arrays = _split_arrays('test')
  if column is None:
    arrays[kind][4] = value
  else:
    arrays[kind][4, column] = value
  monkeypatch.setattr(smallnorb, 'EXPECTED',
                      _write_split(tmp_path, 'test', arrays, False))
  with pytest.raises(download.DataError) as raised:
    smallnorb.load(str(tmp_path), 'test')
  assert str(tmp_path / smallnorb.file_name('test', kind)) in str(raised.value)


def test_load_rejects_count_mismatch(tmp_path, monkeypatch):
  arrays = _split_arrays('test')
  arrays['cat'] = arrays['cat'][:-1]
  monkeypatch.setattr(smallnorb, 'EXPECTED',
                      _write_split(tmp_path, 'test', arrays, False))
  with pytest.raises(download.DataError, match='examples'):
    smallnorb.load(str(tmp_path), 'test')


def test_missing_files_are_downloaded_gzipped(tmp_path, monkeypatch):
  server = tmp_path / 'server'
  server.mkdir()
  arrays = _split_arrays('test')
  monkeypatch.setattr(smallnorb, 'EXPECTED',
                      _write_split(server, 'test', arrays, True))
  data_dir = tmp_path / 'new'
  mirrors = [(tmp_path / 'empty').as_uri(), server.as_uri()]
  paths = smallnorb.maybe_download(str(data_dir), 'test', mirrors=mirrors)
  assert sorted(os.listdir(data_dir)) == sorted(
      smallnorb.file_name('test', kind) + '.gz' for kind in smallnorb.KINDS)
  assert paths['dat'] == str(data_dir / (smallnorb.file_name('test', 'dat')
                                         + '.gz'))
  _, labels, _ = smallnorb.load(str(data_dir), 'test')
  np.testing.assert_array_equal(labels, arrays['cat'])


def test_corrupt_download_is_rejected_and_removed(tmp_path, monkeypatch):
  server = tmp_path / 'server'
  server.mkdir()
  table = _write_split(server, 'test', _split_arrays('test'), True)
  name = smallnorb.file_name('test', 'cat')
  table[name] = (table[name][0], 'e' * 64)
  monkeypatch.setattr(smallnorb, 'EXPECTED', table)
  monkeypatch.setattr(download, 'BACKOFF_SECONDS', 0.0)
  data_dir = tmp_path / 'new'
  with pytest.raises(download.DataError, match='SHA-256') as raised:
    smallnorb.maybe_download(str(data_dir), 'test', mirrors=[server.as_uri()])
  assert str(data_dir / (name + '.gz')) in str(raised.value)
  assert os.listdir(data_dir) == [smallnorb.file_name('test', 'dat') + '.gz']


def test_missing_files_without_mirror_explain_what_to_do(tmp_path,
                                                          monkeypatch):
  monkeypatch.setattr(download, 'BACKOFF_SECONDS', 0.0)
  data_dir = tmp_path / 'smallnorb'
  with pytest.raises(download.DataError) as raised:
    smallnorb.load(str(data_dir), 'train',)
  message = str(raised.value)
  assert smallnorb.file_name('train', 'dat') in message
  assert str(data_dir) in message
  assert 'by hand' in message and 'uncompressed' in message
  assert os.listdir(data_dir) == []


def test_normalize_gives_zero_mean_unit_variance_per_image():
  images = np.random.default_rng(3).integers(0, 256, (4, 48, 48, 2),
                                             dtype=np.uint8)
  images[1] //= 8
  with tf.Graph().as_default():
    normalised = smallnorb.normalize(tf.constant(images))
    with tf.compat.v1.Session() as session:
      result = session.run(normalised)
  assert result.dtype == np.float32 and result.shape == images.shape
  np.testing.assert_allclose(result.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(result.std(axis=(1, 2, 3)), 1, atol=1e-4)
  np.testing.assert_allclose(result, _standardised(images), atol=1e-4)


def test_train_input_crops_and_jitters_within_documented_ranges(norb):
  data_dir, arrays = norb
  batches, shapes = graph_util.read_dataset(
      lambda: smallnorb.train_input(data_dir, 8, seed=5), num_batches=3)
  assert shapes == [[8, 32, 32, 2], [8]]
  reference = _standardised(_downsampled(arrays['train']['dat']))
  windows = np.lib.stride_tricks.sliding_window_view(
      reference, (32, 32), axis=(1, 2)).astype(np.float32)
  window_means = windows.mean(axis=(-2, -1))
  centred = windows - window_means[..., None, None]
  norms = np.sqrt(np.einsum('nrcdhw,nrcdhw->nrcd', centred, centred))
  offsets, factors, deltas = set(), [], []
  low, high = smallnorb.CONTRAST_RANGE
  for images, labels in batches:
    assert images.dtype == np.float32 and labels.dtype == np.int32
    for image, label in zip(images, labels):
      channels = image.transpose(2, 0, 1)
      channel_means = channels.mean(axis=(1, 2))
      image_centred = channels - channel_means[:, None, None]
      image_norms = np.sqrt((image_centred ** 2).sum(axis=(1, 2)))
      correlation = np.einsum('nrcdhw,dhw->nrcd', centred,
                              image_centred) / (norms * image_norms)
      n, r, c = np.unravel_index(correlation.mean(-1).argmax(),
                                 correlation.shape[:3])
      assert correlation[n, r, c].min() > 0.9999
      assert arrays['train']['cat'][n] == label
      factor = image_norms / norms[n, r, c]
      delta = channel_means - window_means[n, r, c]
      assert abs(factor[0] - factor[1]) < 1e-3
      assert abs(delta[0] - delta[1]) < 1e-3
      assert low - 1e-3 <= factor.mean() <= high + 1e-3
      assert abs(delta.mean()) <= smallnorb.BRIGHTNESS_MAX_DELTA + 1e-3
      offsets.add((r, c))
      factors.append(factor.mean())
      deltas.append(delta.mean())
  assert len(offsets) > 5
  assert np.ptp(factors) > 0.1 and np.ptp(deltas) > 0.05


def test_train_input_is_reproducible_with_a_seed(norb):
  data_dir, _ = norb

  def first_batches(seed):
    batches, _ = graph_util.read_dataset(
        lambda: smallnorb.train_input(data_dir, 4, seed=seed), num_batches=2)
    return [images for images, _ in batches]

  first, again = first_batches(11), first_batches(11)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)


def test_eval_input_covers_every_example_once_with_partial_tail(norb):
  data_dir, arrays = norb
  with tf.Graph().as_default():
    assert smallnorb.eval_input(data_dir, 6)[1] == _NUM_EXAMPLES
  batches, shapes = graph_util.read_dataset(lambda: smallnorb.eval_input(data_dir, 6)[0])
  assert shapes == [[None, 32, 32, 2], [None]]
  assert [len(labels) for _, labels in batches] == [6, 6, 6, 2]
  labels = np.concatenate([labels for _, labels in batches])
  np.testing.assert_array_equal(labels, arrays['test']['cat'])
  images = np.concatenate([images for images, _ in batches])
  assert images.dtype == np.float32
  reference = _standardised(_downsampled(arrays['test']['dat']))
  np.testing.assert_allclose(images, reference[:, 8:40, 8:40, :], atol=1e-4)


def test_eval_input_with_several_crops(norb):
  data_dir, arrays = norb
  crops = len(smallnorb.CROP_OFFSETS)
  batches, shapes = graph_util.read_dataset(
      lambda: smallnorb.eval_input(data_dir, 8, crops=crops)[0])
  assert shapes == [[None, crops, 32, 32, 2], [None]]
  images = np.concatenate([images for images, _ in batches])
  assert images.shape == (_NUM_EXAMPLES, crops, 32, 32, 2)
  reference = _standardised(_downsampled(arrays['test']['dat']))
  for k, (row, col) in enumerate(smallnorb.CROP_OFFSETS):
    np.testing.assert_allclose(
        images[:, k], reference[:, row:row + 32, col:col + 32, :], atol=1e-4)
  for bad in (0, crops + 1):
    with pytest.raises(ValueError, match='crops'):
      smallnorb.eval_input(data_dir, 8, crops=bad)


def test_eval_input_on_a_viewpoint_split(norb):
  data_dir, arrays = norb
  mask = _viewpoint_mask(arrays['test']['info'], 'test', 'elevation')
  with tf.Graph().as_default():
    _, num_examples = smallnorb.eval_input(data_dir, 4, split='elevation')
  assert num_examples == mask.sum()
  batches, _ = graph_util.read_dataset(
      lambda: smallnorb.eval_input(data_dir, 4, split='elevation')[0])
  labels = np.concatenate([labels for _, labels in batches])
  np.testing.assert_array_equal(labels, arrays['test']['cat'][mask])
