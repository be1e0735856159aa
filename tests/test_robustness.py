"""The pieces of the robustness comparisons (issue 12), in process: the CNN
baseline and its loss, MNIST on the 40x40 canvas, the affNIST-style test
set, and the FGSM and BIM attacks on tiny networks.

Tests that read MNIST use the real files and skip without them.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import adversarial
import graph_util
import model
import training
from datasets import affnist
from datasets import mnist
from datasets import mnist40

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CAPSULES = model.ModelConfig(dataset='mnist40', a=4, b=3, c=3, d=3,
                                  conv1_padding='SAME')
TINY_BASELINE = model.ModelConfig(dataset='mnist40', model='cnn_baseline',
                                  cnn_channels=4, cnn_hidden=16)
CANVAS = (40, 40, 1)


def _mnist_dir():
  data_dir = os.environ.get('CAPSULES_MNIST_DIR',
                            os.path.join(REPO, 'data', 'mnist'))
  if not all(os.path.exists(os.path.join(data_dir, name))
             for name in mnist.FILE_MD5):
    pytest.skip(f'real MNIST files not found in {data_dir}')
  return data_dir


@pytest.fixture(scope='module')
def mnist_test():
  """The real MNIST test set: (data_dir, images uint8, labels)."""
  data_dir = _mnist_dir()
  return (data_dir,) + mnist.load(data_dir, 'test')


def _parameters():
  return sum(int(np.prod(v.shape))
             for v in tf.compat.v1.trainable_variables())


# The CNN baseline.


@pytest.mark.parametrize('shape,classes,count', [
    ((28, 28, 1), 10, 3274634),   # MNIST
    ((40, 40, 1), 10, 6616970),   # mnist40
    ((32, 32, 2), 5, 4253349),    # smallNORB crops: the paper's "4.2M"
])
def test_baseline_size(shape, classes, count):
  config = model.ModelConfig(model='cnn_baseline', num_classes=classes)
  with tf.Graph().as_default():
    poses, activations = config.build(
        tf.compat.v1.placeholder(tf.float32, (None,) + shape))
    assert poses is None
    assert activations.shape.as_list() == [None, classes]
    assert _parameters() == count


def test_baseline_activations_are_probabilities_without_dropout():
  images = np.random.default_rng(0).uniform(size=(3,) + CANVAS)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    _, activations = TINY_BASELINE.build(tf.constant(images, tf.float32))
    session.run(tf.compat.v1.global_variables_initializer())
    first, second = session.run(activations), session.run(activations)
  np.testing.assert_allclose(first.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(first, second)  # no dropout at evaluation


@pytest.mark.parametrize('values,message', [
    ({'model': 'cnn_baseline', 'reconstruction_weight': 0.1},
     'reconstruction_weight must be 0 with model cnn_baseline'),
    ({'model': 'resnet'}, 'model must be one of'),
    ({'model': 'cnn_baseline', 'cnn_channels': 0}, 'cnn_channels must be'),
    ({'cnn_hidden': 0}, 'cnn_hidden must be'),
])
def test_model_config_refuses(values, message):
  with pytest.raises(ValueError, match=message):
    model.ModelConfig(**values)


def test_a_config_written_before_the_baseline_loads_as_capsules(tmp_path):
  record = dataclasses.asdict(model.ModelConfig(conv1_padding='SAME'))
  for name in ('model', 'cnn_channels', 'cnn_hidden'):
    del record[name]
  (tmp_path / model.CONFIG_FILE).write_text(json.dumps(record))
  assert model.ModelConfig.load(str(tmp_path)) == model.ModelConfig(
      conv1_padding='SAME')


def test_capsules_have_no_logits():
  with pytest.raises(ValueError, match='no logits'):
    TINY_CAPSULES.logits(tf.zeros([1] + list(CANVAS)))


def test_baseline_trains_on_cross_entropy():
  """training.build gives the baseline the softmax cross-entropy (no spread
  loss, no margin) and a few steps lower it."""
  rng = np.random.default_rng(1)
  images = rng.uniform(size=(8,) + CANVAS).astype(np.float32)
  labels = np.arange(8, dtype=np.int32) % 10
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    tf.compat.v1.set_random_seed(0)
    outputs = training.build(tf.constant(images), tf.constant(labels),
                             TINY_BASELINE, training.TrainConfig())
    assert 'margin' not in outputs
    session.run(tf.compat.v1.global_variables_initializer())
    losses = [session.run([outputs['train_op'], outputs['loss']])[1]
              for _ in range(10)]
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]
  assert losses[0] == pytest.approx(np.log(10), rel=0.5)


# The capsule network on the 40x40 canvas.


def test_capsules_on_the_canvas():
  assert model.default_conv1_padding('mnist40') == 'SAME'
  assert [h for _, h, _ in TINY_CAPSULES.geometry(40, 40)] == [
      40, 20, 20, 9, 7]
  with tf.Graph().as_default():
    poses, activations = TINY_CAPSULES.build(tf.zeros([2] + list(CANVAS)))
  assert poses.shape.as_list() == [2, 10, 4, 4]
  assert activations.shape.as_list() == [2, 10]


# mnist40 and the affNIST-style test set.


def test_affine_set_is_deterministic(mnist_test):
  _, images, _ = mnist_test
  digits = images[:200]
  first = affnist.transform(digits, seed=5)
  assert first.shape == (200, 40, 40) and first.dtype == np.uint8
  assert first.tobytes() == affnist.transform(digits, seed=5).tobytes()
  assert first.tobytes() != affnist.transform(digits, seed=6).tobytes()
  # An image's transformation does not depend on the images after it.
  np.testing.assert_array_equal(affnist.transform(digits[:7], seed=5),
                                first[:7])


def test_affine_transformations_keep_to_the_ranges(mnist_test):
  """Linear parts within affNIST's ranges, and every digit whole on the
  canvas: no ink on its border, and the ink scaled by the area change."""
  _, images, _ = mnist_test
  digits = images[:300]
  affines = affnist.random_affines(digits, seed=3)
  linear = affines[:, :, :2]
  uniforms = np.random.default_rng(3).uniform(size=(300, 6))
  params = affnist.random_parameters(uniforms[:, :4])
  assert np.all(np.abs(np.degrees(params['rotation'])) <= 20)
  assert np.all(np.abs(params['shear']) <= 0.2)
  for name in ('scale_x', 'scale_y'):
    assert np.all((params[name] >= 0.8) & (params[name] <= 1.2))
  np.testing.assert_allclose(linear, affnist.linear_maps(**params))
  warped = affnist.warp(digits, affines).astype(np.float64)
  border = np.concatenate([warped[:, 0], warped[:, -1], warped[:, :, 0],
                           warped[:, :, -1]], axis=1)
  assert not border.any()
  ink = warped.sum((1, 2)) / (digits.sum((1, 2)) *
                              np.abs(np.linalg.det(linear)))
  assert np.all(np.abs(ink - 1) < 0.1), (ink.min(), ink.max())
  # The translations spread the digits over the canvas.
  assert np.ptp(affines[:, :, 2], axis=0).min() > 6


def test_canvas_test_sets_keep_the_labels(mnist_test):
  """mnist40's test sets are MNIST's test digits, in order: the translated
  one holds every digit whole, at fixed positions; the affine one is
  affnist.transform's with the fixed seed."""
  data_dir, images, labels = mnist_test
  placed, placed_labels = mnist40.test_images(data_dir, 'test')
  affine, affine_labels = mnist40.test_images(data_dir, 'affnist')
  np.testing.assert_array_equal(placed_labels, labels)
  np.testing.assert_array_equal(affine_labels, labels)
  assert placed.shape == affine.shape == (10000, 40, 40)
  np.testing.assert_array_equal(placed.sum((1, 2), dtype=np.int64),
                                images.sum((1, 2), dtype=np.int64))
  np.testing.assert_array_equal(
      placed, mnist40.test_images(data_dir, 'test')[0])
  np.testing.assert_array_equal(affine[:50],
                                affnist.transform(images[:50], affnist.SEED))
  with pytest.raises(ValueError, match='test_set must be one of'):
    mnist40.test_images(data_dir, 'affine')


def test_canvas_training_input_places_digits_at_random(mnist_test):
  data_dir = mnist_test[0]
  batches, shapes = graph_util.read_dataset(
      lambda: mnist40.train_input(data_dir, 16, seed=2, shuffle_buffer=50),
      num_batches=2)
  assert shapes == [[16, 40, 40, 1], [16]]
  images = np.concatenate([b[0] for b in batches])[..., 0]
  assert images.dtype == np.float32
  assert images.min() >= 0 and images.max() == 1.0
  rows = images.any(axis=2)
  tops = rows.argmax(axis=1)
  assert len(set(tops.tolist())) > 4  # positions vary
  assert images.reshape(32, -1).sum(1).min() > 0


# The attacks.


@pytest.fixture(scope='module', params=['capsules', 'cnn_baseline'])
def network(request):
  """A tiny untrained network of each kind on the canvas (capsules with 2
  routing iterations and the fused kernels, as attack.py builds it)."""
  config = (dataclasses.replace(TINY_CAPSULES, iterations=2)
            if request.param == 'capsules' else TINY_BASELINE)
  with adversarial.Network(config, CANVAS, seed=0) as built:
    built.initialize()
    yield built


@pytest.fixture(scope='module')
def batch():
  """Images [6, 40, 40, 1] in [0, 1], some pixels at 0 and 1, and labels."""
  rng = np.random.default_rng(4)
  images = rng.uniform(size=(6,) + CANVAS).astype(np.float32)
  images[:, :8] = 0.0
  images[:, -8:] = 1.0
  return images, np.array([0, 1, 2, 3, 4, 9], np.int32)


def test_gradients_through_em_routing_are_finite(network, batch):
  gradient = network.gradient(*batch)
  assert np.all(np.isfinite(gradient))
  assert np.mean(gradient != 0) > 0.5


@pytest.mark.parametrize('targeted', [False, True])
def test_a_small_step_moves_the_loss_the_right_way(network, batch,
                                                   targeted):
  images, labels = batch
  goal = adversarial.targets(labels, 10) if targeted else labels
  before = network.loss(images, goal)
  after = network.loss(adversarial.fgsm(
      images, network.gradient(images, goal), 1e-3, targeted), goal)
  assert (after < before) if targeted else (after > before)


@pytest.mark.parametrize('epsilon', [0.0, 0.05, 0.3])
def test_perturbations_stay_within_epsilon_and_the_pixel_range(
    network, batch, epsilon):
  images, labels = batch
  goal = adversarial.targets(labels, 10)
  for adversarial_images in (
      adversarial.fgsm(images, network.gradient(images, labels), epsilon,
                       False),
      adversarial.bim(images, goal, network.gradient, epsilon, 3,
                      adversarial.bim_step_size(epsilon, 3), True),
      adversarial.bim(images, labels, network.gradient, epsilon, 2,
                      0.5, False)):  # steps far larger than epsilon
    assert adversarial_images.dtype == np.float32
    change = np.abs(adversarial_images - images)
    assert change.max() <= epsilon + 1e-6
    assert adversarial_images.min() >= 0 and adversarial_images.max() <= 1
    if epsilon > 0:
      assert change.max() >= epsilon - 1e-6  # the budget is used


def test_zero_epsilon_leaves_the_accuracy_unchanged(network, batch):
  images, labels = batch
  results = adversarial.evaluate(
      network, images, labels, adversarial.targets(labels, 10), [0.0, 0.1],
      bim_iterations=2, batch_size=4)
  clean = np.mean(network.predict(images) == labels)
  assert results['clean_accuracy'] == clean
  assert sorted(results) == ['bim_targeted', 'bim_untargeted',
                             'clean_accuracy', 'fgsm_targeted',
                             'fgsm_untargeted']
  for name in ('fgsm_untargeted', 'fgsm_targeted', 'bim_untargeted',
               'bim_targeted'):
    zero, positive = results[name]
    assert (zero['epsilon'], positive['epsilon']) == (0.0, 0.1)
    assert zero['accuracy'] == clean and zero['max_perturbation'] == 0
    assert 0 < positive['max_perturbation'] <= 0.1 + 1e-6
    assert ('success_rate' in zero) == name.endswith('_targeted')


def test_targets():
  labels = np.array([0, 3, 9, 9, 5], np.int32)
  np.testing.assert_array_equal(adversarial.targets(labels, 10),
                                [1, 4, 0, 0, 6])
  many = np.tile(np.arange(10, dtype=np.int32), 100)
  drawn = adversarial.targets(many, 10, 'random', seed=7)
  assert not np.any(drawn == many)
  assert set(drawn.tolist()) == set(range(10))
  np.testing.assert_array_equal(
      drawn, adversarial.targets(many, 10, 'random', seed=7))
  assert np.any(drawn != adversarial.targets(many, 10, 'random', seed=8))
  with pytest.raises(ValueError, match='rule must be one of'):
    adversarial.targets(labels, 10, 'furthest')
