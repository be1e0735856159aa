"""The numpy statistics of evaluation.py."""

import numpy as np

import evaluation


def test_per_class_accuracy_is_nan_for_absent_classes():
  predictions = np.array([0, 1, 1, 2])
  labels = np.array([0, 1, 2, 2])
  accuracy = evaluation.per_class_accuracy(predictions, labels, 4)
  np.testing.assert_allclose(accuracy[:3], [1.0, 1.0, 0.5])
  assert np.isnan(accuracy[3])


def test_pose_spread_is_the_within_class_deviation():
  """Two classes whose poses differ by a large offset but vary little
  within each class: the spread sees only the within-class variation."""
  labels = np.array([0, 0, 1, 1])
  poses = np.zeros((4, 16))
  poses[:, 0] = [10.0, 10.2, -10.0, -10.4]
  poses[:, 1] = [1.0, -1.0, 3.0, 3.0]
  magnitude, spread = evaluation.pose_spread(poses, labels)
  np.testing.assert_allclose(magnitude[:2], [10.15, 2.0])
  np.testing.assert_allclose(spread[:2], [(0.1 + 0.2) / 2, (1.0 + 0.0) / 2])
  np.testing.assert_array_equal(magnitude[2:], 0.0)
  np.testing.assert_array_equal(spread[2:], 0.0)


def test_class_means_beat_any_other_label_only_guess():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(40, 5, 5, 1))
  labels = rng.integers(0, 3, size=40)
  means = evaluation.class_means(images, labels)
  assert means.shape == images.shape
  for k in range(3):
    np.testing.assert_allclose(means[labels == k][0],
                               images[labels == k].mean(axis=0))
  best = evaluation.squared_error(images, means)
  shifted = evaluation.squared_error(images, means + 0.01)
  global_mean = evaluation.squared_error(
      images, np.broadcast_to(images.mean(axis=0), images.shape))
  assert best < shifted and best < global_mean


def test_squared_error_sums_pixels_and_averages_images():
  images = np.zeros((2, 2, 3, 1))
  reconstructions = np.zeros((2, 2, 3, 1))
  reconstructions[0] = 1.0  # 6 pixels off by 1
  reconstructions[1, 0, 0, 0] = 2.0  # one pixel off by 2
  assert evaluation.squared_error(images, reconstructions) == (6 + 4) / 2


def test_linear_readout_finds_the_entries_that_determine_the_image():
  """Images that are an affine function of pose entries 4-15 (a different
  one per class), scaled 1e-3 like the collapsed rows: those entries read
  them out exactly on held-out images, the first row no better than the
  class mean."""
  rng = np.random.default_rng(4)
  labels = np.repeat([0, 1], 200)
  poses = rng.normal(size=(400, 16))
  poses[:, 4:] *= 1e-3
  maps = rng.normal(size=(2, 12, 25)) * 1e3
  images = np.einsum('ne,nep->np', poses[:, 4:], maps[labels]).reshape(
      400, 5, 5) + labels[:, None, None]
  error = {name: evaluation.linear_readout_error(poses, images, labels, e)
           for name, e in (('none', ()), ('row 0', range(4)),
                           ('rows 1-3', range(4, 16)),
                           ('all', range(16)))}
  assert error['rows 1-3'] < 1e-6 * error['none']
  assert error['all'] < 1e-6 * error['none']
  assert error['row 0'] > 0.9 * error['none'] > 0


def test_linear_readout_without_a_split_class_is_nan():
  poses, images = np.zeros((1, 16)), np.zeros((1, 2, 2))
  assert np.isnan(evaluation.linear_readout_error(poses, images, np.zeros(
      1, int), range(16)))
