"""naive.py: the variables and the function of nets.capsules_v0, naively.

Each naive layer and the naive network are built on the same variables as
nets/ and must give the same outputs and the same gradients with respect to
every variable and to the inputs, with nets/'s speed switches on (their
defaults) and off.

Tolerances (for gradients, `gradient_atol` times the largest entry of each):
in float32 the randomly initialised tiny network is poorly conditioned
(costs of about 50 standardised over 3 parent types that differ by about
0.1; E-step exponents in the hundreds), so any two orders of the same
arithmetic differ by up to about 6e-4 of a gradient's largest entry; against
a float64 run of the naive network, nets/ and naive.py were about equally far
from the exact values. A single layer on random capsules agrees to about
1e-5, except plain Procedure 1 (no variance floor) with nets/'s speed
switches on: there nets/ itself was up to 2e-4 from the float64 values.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import model
import naive
import nets
from nets import layers

TINY = dict(a=4, b=3, c=3, d=3)
NUM_CLASSES = 10
IMAGE_SHAPE = (2, 28, 28, 1)
STABILISED = model.ModelConfig().routing()
PLAIN = layers.Routing(inverse_temperature=lambda t: 1.0 - 0.95 ** (t + 1))
GUARDED = dataclasses.replace(STABILISED, min_mass=1e-20, xla=True)
MATHS_FIELDS = ('inverse_temperature', 'min_variance', 'cost_standardization',
                'log_space', 'min_mass', 'activation_cost', 'cost_scale',
                'pose_damping',
                'initial_assignments', 'e_step_normalization',
                'e_step_annealing', 'stop_assignment_gradients')


def _speed_switches_off(routing):
  """The same maths without XLA, vote moments or any other speed switch."""
  return dataclasses.replace(routing, **{
      f.name: False for f in dataclasses.fields(routing)
      if f.name not in MATHS_FIELDS})


def _initializer(variable):
  """The op types and constants that compute a variable's initial value.

  Returns:
    sorted list of (op type, repr of the constant or None).
  """
  found, pending, seen = [], [variable.initial_value.op], set()
  while pending:
    op = pending.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    value = None
    if op.type == 'Const':
      value = tf.make_ndarray(op.get_attr('value')).tolist()
    found.append((op.type, repr(value)))
    pending.extend(t.op for t in op.inputs)
  return sorted(found)


def _variables(build):
  """(name, shape, initialiser) of every variable `build` creates, in order."""
  with tf.Graph().as_default():
    build(tf.zeros(IMAGE_SHAPE))
    return [(v.op.name, v.shape.as_list(), _initializer(v))
            for v in tf.compat.v1.global_variables()]


def test_same_variables():
  fast = _variables(
      lambda x: nets.capsules_v0(x, NUM_CLASSES, 2, STABILISED, **TINY))
  slow = _variables(
      lambda x: naive.capsules_v0_naive(x, NUM_CLASSES, 2, STABILISED,
                                        **TINY))
  assert len(fast) == 15
  assert [v[:2] for v in slow] == [v[:2] for v in fast]
  assert slow == fast
  initializers = {name: initializer for name, _, initializer in fast}
  assert ('Const', '0.5') in initializers[
      'capsules_v0/class_caps/transforms']  # stddev sqrt(1/4)


def _objective(outputs, seed):
  """A fixed random linear function of poses and activations: a scalar."""
  rng = np.random.default_rng(seed)
  return sum(tf.reduce_sum(
      rng.normal(size=t.shape.as_list()).astype(np.float32) * t)
             for t in outputs)


def _randomise_zero_initialised(session, rng):
  """Random betas and biases, so that no parameter is at a special value."""
  for variable in tf.compat.v1.global_variables():
    if variable.op.name.rsplit('/', 1)[-1] in ('beta_v', 'beta_a', 'biases'):
      variable.load(rng.normal(0.0, 0.5, variable.shape.as_list()), session)


def _compare(build_fast, build_slow, inputs, seed, rtol, atol, gradient_atol):
  """Builds both on shared variables; compares outputs and gradients.

  Args:
    build_fast, build_slow: functions inputs -> (poses, activations).
    inputs: list of numpy arrays, made constants and passed to both.
    seed: for the variables and the objective.
    rtol, atol: for the outputs and, with gradient_atol times the largest
      entry of each gradient as atol, for the gradients.
    gradient_atol: see rtol.
  """
  rng = np.random.default_rng(seed)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(seed)
    inputs = [tf.constant(x, tf.float32) for x in inputs]
    fast = build_fast(*inputs)
    num_variables = len(tf.compat.v1.global_variables())
    with tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(),
                                     reuse=True):
      slow = build_slow(*inputs)
    assert len(tf.compat.v1.global_variables()) == num_variables
    wrt = tf.compat.v1.trainable_variables() + inputs
    gradients = [tf.gradients(_objective(outputs, seed), wrt)
                 for outputs in (fast, slow)]
    assert all(g is not None for g in gradients[0] + gradients[1])
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      _randomise_zero_initialised(session, rng)
      fast, slow, gradients = session.run([fast, slow, gradients])
  for name, fast_value, slow_value in zip(('poses', 'activations'), fast,
                                          slow):
    assert np.all(np.isfinite(fast_value)), name
    np.testing.assert_allclose(slow_value, fast_value, rtol, atol,
                               err_msg=name)
  for name, fast_value, slow_value in zip(
      [str(t.name) for t in wrt], *gradients):
    assert np.all(np.isfinite(fast_value)), name
    np.testing.assert_allclose(
        slow_value, fast_value, rtol,
        gradient_atol * np.abs(fast_value).max(), err_msg=name)


def _capsules(rng, height, width, types):
  """Poses [2, H, W, B, 4, 4] and activations [2, H, W, B] in (0, 1)."""
  return [rng.normal(size=(2, height, width, types, 4, 4)),
          rng.uniform(0.05, 0.95, size=(2, height, width, types))]


@pytest.mark.parametrize('size,stride,iterations,routing', [
    (7, 2, 1, STABILISED), (7, 2, 3, STABILISED), (5, 1, 2, STABILISED),
    (7, 2, 2, PLAIN), (5, 1, 3, PLAIN), (7, 2, 3, GUARDED)])
@pytest.mark.parametrize('speed_switches', [True, False])
def test_conv_caps_matches_capsules_conv(size, stride, iterations, routing,
                                         speed_switches):
  """With GUARDED (with the speed switches: XLA and the fused kernels), the
  first image's children under the first parent position are active at
  1e-30 only, so min_mass binds there at every iteration."""
  shape = [3, 3, 3, 4]
  inputs = _capsules(np.random.default_rng(size + iterations), size, size, 3)
  if routing.min_mass:
    inputs[1][0, :3, :3] = 1e-30
  if speed_switches:
    fast_routing, atol, gradient_atol = routing, 5e-5, 1e-3
  else:
    fast_routing, atol, gradient_atol = (_speed_switches_off(routing), 1e-5,
                                         3e-5)
  _compare(
      lambda *x: layers.capsules_conv(x, shape, [1, stride, stride, 1],
                                      iterations, fast_routing, name='caps'),
      lambda *x: naive._conv_caps(  # pylint: disable=protected-access
          x, shape, stride, iterations, routing, 'caps'),
      inputs, iterations, 1e-5, atol, gradient_atol)


@pytest.mark.parametrize('coordinate_addition,iterations,routing', [
    (True, 1, STABILISED), (False, 3, STABILISED), (True, 3, PLAIN)])
def test_class_caps_matches_capsules_fc(coordinate_addition, iterations,
                                        routing):
  _compare(
      lambda *x: layers.capsules_fc(x, 5, iterations, coordinate_addition,
                                    routing, name='caps'),
      lambda *x: naive._class_caps(  # pylint: disable=protected-access
          x, 5, iterations, coordinate_addition, routing, 'caps'),
      _capsules(np.random.default_rng(iterations), 3, 4, 3),
      iterations, rtol=1e-5, atol=1e-5, gradient_atol=3e-5)


@pytest.mark.parametrize('iterations', [1, 2, 3])
@pytest.mark.parametrize('speed_switches', [True, False])
def test_network_matches_capsules_v0(iterations, speed_switches):
  routing = model.ModelConfig(iterations=iterations).routing()
  fast_routing = routing if speed_switches else _speed_switches_off(routing)
  _compare(
      lambda x: nets.capsules_v0(x, NUM_CLASSES, iterations, fast_routing,
                                 **TINY),
      lambda x: naive.capsules_v0_naive(x, NUM_CLASSES, iterations, routing,
                                        **TINY),
      [np.random.default_rng(iterations).uniform(size=IMAGE_SHAPE)],
      iterations, rtol=1e-5, atol=1e-5, gradient_atol=2e-3)


@pytest.mark.parametrize('change', [
    {'e_step_normalization': 'parent_types'}, {'e_step_annealing': 0.5},
    {'pose_damping': 0.1}])
def test_naive_network_refuses_the_departures(change):
  with tf.Graph().as_default(), pytest.raises(ValueError, match='naive.py'):
    naive.capsules_v0_naive(tf.zeros(IMAGE_SHAPE), NUM_CLASSES, 2,
                            dataclasses.replace(STABILISED, **change), **TINY)
