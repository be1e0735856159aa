"""Spread loss, margin and inverse-temperature schedules, learning rate."""

import numpy as np
import pytest
import tensorflow as tf

import model
import nets
import training
from nets import losses
from nets import routing as em
from nets import schedules


def _loss(labels, activations, margin):
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    return session.run(nets.spread_loss(
        tf.constant(labels, tf.int32), tf.constant(activations, tf.float32),
        margin))


def _at_steps(build, steps):
  """Evaluates build(global_step) at each of `steps`."""
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    step = tf.compat.v1.placeholder(tf.int64, [])
    value = build(step)
    return np.array([session.run(value, {step: s}) for s in steps])


# Spread loss.


def test_spread_loss_one_example():
  """Class 1 is beyond the margin (0); class 2 gives (0.2 + 0.05)^2."""
  loss = _loss([0], [[0.9, 0.5, 0.95]], 0.2)
  assert loss == pytest.approx(0.0625, rel=1e-5)


def test_spread_loss_is_batch_mean_not_sum():
  # Example 2: (0.2 - 0.1)^2 + (0.2 + 0.1)^2 = 0.01 + 0.09 = 0.1.
  assert _loss([2], [[0.1, 0.3, 0.2]], 0.2) == pytest.approx(0.1, rel=1e-5)
  loss = _loss([0, 2], [[0.9, 0.5, 0.95], [0.1, 0.3, 0.2]], 0.2)
  assert loss == pytest.approx((0.0625 + 0.1) / 2, rel=1e-5)


def test_spread_loss_target_class_never_contributes():
  """A term for the target itself would add margin^2 = 0.04."""
  assert _loss([1], [[0.0, 0.5, 0.0]], 0.2) == 0.0
  assert _loss([1], [[0.3, 0.3, 0.3]], 0.2) == pytest.approx(0.08, rel=1e-5)


def test_spread_loss_margin_tensor():
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    margin = tf.compat.v1.placeholder(tf.float32, [])
    loss = nets.spread_loss(tf.constant([0]), tf.constant([[0.9, 0.5, 0.95]]),
                            margin)
    assert session.run(loss, {margin: 0.2}) == pytest.approx(0.0625, 1e-5)
    # m = 0.9: (0.9 - 0.4)^2 + (0.9 + 0.05)^2.
    assert session.run(loss, {margin: 0.9}) == pytest.approx(1.1525, 1e-5)


def test_spread_loss_gradient():
  """d/da_i = 2 max(0, m - (a_t - a_i)) / N for i != t; a_t gets minus the
  sum of those."""
  values = np.array([[0.9, 0.5, 0.95], [0.1, 0.3, 0.2]], np.float32)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    activations = tf.constant(values)
    loss = nets.spread_loss(tf.constant([0, 2]), activations, 0.2)
    gradient = session.run(tf.gradients(loss, activations)[0])
  expected = np.array([[-0.5, 0.0, 0.5], [0.2, 0.6, -0.8]]) / 2
  np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-7)


# Margin schedule.


def test_linear_margin():
  values = _at_steps(
      lambda step: schedules.margin(step, 'linear', 0.2, 0.9, 100),
      [0, 50, 100, 101, 1000])
  np.testing.assert_allclose(values, [0.2, 0.55, 0.9, 0.9, 0.9], rtol=1e-6)


def test_sigmoid_margin():
  """The authors' ramp: logistic(min(10, step / ramp_steps - 4)), half-way
  at 4 * ramp_steps."""
  steps = [0, 50, 100, 200, 400, 600, 800, 1400, 2000, 10 ** 5]
  values = _at_steps(
      lambda step: schedules.margin(step, 'sigmoid', 0.2, 0.9, 100), steps)
  fraction = 1 / (1 + np.exp(-np.minimum(10.0, np.array(steps) / 100 - 4)))
  np.testing.assert_allclose(values, 0.2 + 0.7 * fraction, rtol=1e-5)
  assert np.all(np.diff(values) >= 0) and values[-1] > values[0]
  assert np.all((values > 0.2) & (values < 0.9))
  assert values[steps.index(400)] == pytest.approx(0.55, rel=1e-6)
  assert values[-1] == values[steps.index(1400)]  # capped at logistic(10)


def test_margin_defaults_are_the_papers():
  values = _at_steps(lambda step: schedules.margin(step, 'linear'),
                     [0, 10000])
  np.testing.assert_allclose(values, [0.2, 0.9], rtol=1e-6)


@pytest.mark.parametrize('schedule,ramp_steps,match', [
    ('cosine', 100, 'unknown margin schedule'),
    ('linear', 0, 'ramp_steps'),
    ('sigmoid', -5, 'ramp_steps')])
def test_margin_rejects(schedule, ramp_steps, match):
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match=match):
      schedules.margin(tf.constant(0), schedule, ramp_steps=ramp_steps)


# Inverse temperature.


def test_constant_inverse_temperature():
  schedule = schedules.inverse_temperature('constant', 0.01)
  assert [schedule(t) for t in range(3)] == [0.01, 0.01, 0.01]


def test_authors_inverse_temperature():
  schedule = schedules.inverse_temperature('authors', 2.0)
  np.testing.assert_allclose([schedule(t) for t in range(3)],
                             [2 * 0.05, 2 * 0.0975, 2 * 0.142625], rtol=1e-12)


def test_unknown_inverse_temperature_schedule():
  with pytest.raises(ValueError, match='unknown inverse temperature'):
    schedules.inverse_temperature('linear', 1.0)


# Learning rate.


def test_constant_learning_rate():
  config = training.TrainConfig(learning_rate=3e-3)
  values = _at_steps(lambda step: training.learning_rate(config, step),
                     [0, 20000, 10 ** 6])
  np.testing.assert_allclose(values, 3e-3, rtol=1e-6)


def test_exponential_learning_rate_decay():
  config = training.TrainConfig(learning_rate=1e-3,
                                learning_rate_decay_rate=0.5,
                                learning_rate_decay_steps=100)
  values = _at_steps(lambda step: training.learning_rate(config, step),
                     [0, 50, 100, 200])
  np.testing.assert_allclose(values, [1e-3, 1e-3 * 0.5 ** 0.5, 5e-4, 2.5e-4],
                             rtol=1e-5)


def _class_layer_gap(votes, beta_a, inverse_temperature, target):
  """min over i != t of a_t - a_i from one class layer, shared beta_a."""
  num_classes = votes.shape[2]
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    _, activations, _ = em.em_routing(
        tf.constant(votes), tf.ones([1, 1, votes.shape[3]]),
        tf.zeros([num_classes]), tf.fill([num_classes], float(beta_a)), 1,
        inverse_temperature=inverse_temperature, min_variance=1e-4,
        cost_standardization=True, log_space=True)
    a = session.run(activations)[0, 0]
  return a[target] - np.delete(a, target).max()


@pytest.mark.parametrize('inverse_temperature', [1.0, 2.0])
def test_largest_activation_gap_is_what_the_routing_reaches(
    inverse_temperature):
  """Votes that agree perfectly for the target and spread alike for every
  other class give the extreme standardised costs; the best shared beta_a
  then reaches the bound, and random votes stay below it."""
  rng = np.random.default_rng(0)
  spread = rng.normal(size=(20, 16)).astype(np.float32)
  votes = np.tile(spread[None, None, None], [1, 1, 10, 1, 1])
  votes[0, 0, 3] = 0.5  # every child votes the same pose for class 3
  bound = losses.largest_activation_gap(10, inverse_temperature, True)
  best = max(_class_layer_gap(votes, beta_a, inverse_temperature, 3)
             for beta_a in np.linspace(-3, 0, 61))
  assert best == pytest.approx(bound, abs=2e-3)
  for seed in range(3):
    random_votes = np.random.default_rng(seed).normal(
        size=(1, 1, 10, 20, 16)).astype(np.float32)
    assert _class_layer_gap(random_votes, -1.0, inverse_temperature,
                            0) < bound
  assert losses.largest_activation_gap(10, 1.0, False) == 1.0


def test_default_margin_is_reachable():
  """The default configuration's loss can reach zero: its final margin is
  below the largest gap its class activations can show (issue 9, 5c)."""
  for dataset, num_classes in (('mnist', 10), ('smallnorb', 5)):
    config = model.ModelConfig(
        dataset=dataset, num_classes=num_classes,
        final_lambda=model.default_final_lambda(dataset))
    assert training.TrainConfig().margin_end < config.largest_activation_gap()
    legacy = model.ModelConfig(dataset=dataset, num_classes=num_classes)
    assert training.TrainConfig().margin_end > legacy.largest_activation_gap()
