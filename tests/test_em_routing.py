"""EM routing against the numpy Procedure 1, and its numerical guarantees."""

import contextlib
import functools

import numpy as np
import pytest
import tensorflow as tf

import procedure1
from nets import routing as em
from nets import receptive_fields
from nets import schedules
from nets import votes

STABILISED = dict(min_variance=1e-4, cost_standardization=True,
                  log_space=True)


def _run(votes, activations, beta_v, beta_a, iterations, **kwargs):
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    outputs = em.em_routing(tf.constant(votes), tf.constant(activations),
                            tf.constant(beta_v), tf.constant(beta_a),
                            iterations, **kwargs)
    return session.run(outputs)


def _problem(rng, num_positions, num_types, num_slots, scale=1.0):
  votes = scale * rng.normal(size=(2, num_positions, num_types, num_slots,
                                   16)).astype(np.float32)
  activations = rng.uniform(0.05, 1.0, size=(2, num_positions, num_slots))
  beta_v = rng.normal(0, 0.1, size=num_types).astype(np.float32)
  beta_a = rng.normal(0, 0.1, size=num_types).astype(np.float32)
  return votes, activations.astype(np.float32), beta_v, beta_a


def _conv_child_ids(height, kernel_size, stride, num_in):
  indices = receptive_fields.patch_indices(height, height, kernel_size, stride)
  return receptive_fields.child_ids(indices, num_in)


def _child_activations(rng, child_ids):
  """Per-slot activations [2, P, I] consistent with one value per child."""
  per_child = rng.uniform(0.05, 1.0, size=(2, child_ids.max() + 1))
  return per_child[:, child_ids].astype(np.float32)


def _check_against_numpy(votes, activations, beta_v, beta_a, lambdas,
                         child_ids, log_space):
  poses, a_out, assignments = _run(
      votes, activations, beta_v, beta_a, len(lambdas),
      inverse_temperature=lambda t: lambdas[t], child_ids=child_ids,
      log_space=log_space)
  num_positions = votes.shape[1]
  for n in range(votes.shape[0]):
    a, graph_votes, connected = procedure1.from_layout(
        votes[n], activations[n], child_ids)
    mu, a_ref, r_ref = procedure1.em_routing(
        a, graph_votes, connected, np.tile(beta_v, num_positions),
        np.tile(beta_a, num_positions), lambdas)
    np.testing.assert_allclose(poses[n].reshape(-1, 16), mu, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(a_out[n].reshape(-1), a_ref, rtol=1e-4,
                               atol=1e-6)
    _, graph_assignments, _ = procedure1.from_layout(
        assignments[n][..., None], activations[n], child_ids)
    np.testing.assert_allclose(graph_assignments[..., 0], r_ref, rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize('iterations', [1, 2, 3])
@pytest.mark.parametrize('log_space', [False, True])
def test_fully_connected_matches_numpy(iterations, log_space):
  rng = np.random.default_rng(iterations)
  votes, activations, beta_v, beta_a = _problem(rng, 1, 5, 12)
  lambdas = [0.01 * (1 - 0.95 ** (t + 1)) * 50 for t in range(iterations)]
  _check_against_numpy(votes, activations, beta_v, beta_a, lambdas, None,
                       log_space)


@pytest.mark.parametrize('iterations', [1, 2, 3])
@pytest.mark.parametrize('log_space', [False, True])
def test_convolutional_matches_numpy(iterations, log_space):
  """5x5 children, 3x3 kernel, stride 1: up to 9 parent positions a child."""
  rng = np.random.default_rng(10 + iterations)
  child_ids = _conv_child_ids(5, 3, 1, num_in=2)  # [9, 18]
  votes, _, beta_v, beta_a = _problem(rng, 9, 3, 18)
  activations = _child_activations(rng, child_ids)
  lambdas = [0.02] * iterations
  _check_against_numpy(votes, activations, beta_v, beta_a, lambdas,
                       child_ids, log_space)


def test_convolutional_assignments_normalised_over_all_parents():
  """Each child's R sums to 1 over every parent position and type it votes
  for, not per patch."""
  rng = np.random.default_rng(0)
  child_ids = _conv_child_ids(7, 3, 2, num_in=3)  # 3x3 parents, stride 2
  votes, _, beta_v, beta_a = _problem(rng, 9, 4, 27)
  activations = _child_activations(rng, child_ids)
  _, _, assignments = _run(votes, activations, beta_v, beta_a, 2,
                           child_ids=child_ids, **STABILISED)
  per_slot = assignments.sum(axis=2)  # [N, P, I], summed over parent types
  for n in range(per_slot.shape[0]):
    totals = np.bincount(child_ids.ravel(), per_slot[n].ravel())
    np.testing.assert_allclose(totals, 1.0, rtol=1e-5)
  shared = np.bincount(child_ids.ravel()).max()
  assert shared == 4  # the test is only meaningful if children are shared
  assert not np.allclose(per_slot, 1.0)


def test_initial_assignments_spread_over_parents():
  child_ids = _conv_child_ids(5, 3, 1, num_in=1)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    r = session.run(em.uniform_assignments(tf.ones([1, 9, 9]), 2, child_ids))
  totals = np.bincount(child_ids.ravel(), r[0].sum(axis=1).ravel())
  np.testing.assert_allclose(totals, 1.0, rtol=1e-6)
  assert r[0, 0, 0, 0] == pytest.approx(0.5)  # corner child: one position


def test_fully_connected_assignments_sum_to_one_over_types():
  rng = np.random.default_rng(1)
  votes, activations, beta_v, beta_a = _problem(rng, 1, 10, 30)
  _, a_out, assignments = _run(votes, activations, beta_v, beta_a, 3,
                               **STABILISED)
  np.testing.assert_allclose(assignments.sum(axis=2), 1.0, rtol=1e-5)
  assert np.all((a_out > 0) & (a_out < 1))


def test_stabilisers_off_by_default_and_change_result_when_on():
  rng = np.random.default_rng(2)
  problem = _problem(rng, 1, 4, 8)
  exact = _run(*problem, 2)
  floored = _run(*problem, 2, min_variance=1.0)
  assert not np.allclose(exact[1], floored[1])


EXTREMES = {
    'huge': lambda rng: 1e4 * rng.normal(size=(2, 1, 10, 30, 16)),
    'tiny': lambda rng: 1e-6 * rng.normal(size=(2, 1, 10, 30, 16)),
    'identical': lambda rng: np.ones((2, 1, 10, 30, 16)),
    'zero': lambda rng: np.zeros((2, 1, 10, 30, 16)),
}


@pytest.mark.parametrize('iterations', [1, 2, 3])
@pytest.mark.parametrize('kind', sorted(EXTREMES))
def test_stabilised_routing_finite_on_extreme_votes(kind, iterations):
  rng = np.random.default_rng(3)
  votes = EXTREMES[kind](rng).astype(np.float32)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    votes_t = tf.constant(votes)
    activations = tf.constant(rng.uniform(0, 1, (2, 1, 30)), tf.float32)
    beta_v = tf.zeros([10])
    beta_a = tf.zeros([10])
    poses, a_out, assignments = em.em_routing(
        votes_t, activations, beta_v, beta_a, iterations,
        inverse_temperature=schedules.inverse_temperature('authors', 1.0),
        **STABILISED)
    loss = tf.reduce_sum(poses) + tf.reduce_sum(a_out)
    grads = tf.gradients(loss, [votes_t, activations, beta_v, beta_a])
    values = session.run([poses, a_out, assignments] + grads)
  for value in values:
    assert np.all(np.isfinite(value))
  assert np.all((values[1] >= 0) & (values[1] <= 1))


@pytest.mark.parametrize('xla', [False, True])
@pytest.mark.parametrize('iterations', [1, 2])
@pytest.mark.parametrize('inactive', [0.0, 1e-30])
def test_parents_without_mass_give_finite_outputs_and_gradients(
    inactive, iterations, xla):
  """Every child (almost) inactive at one parent position: its parents get
  (almost) no mass and equal costs, whose spread over the types is zero
  or underflows. Standardising those costs must stay finite, forward and
  backward; their activations are then logistic(lambda beta_a) = 0.5."""
  rng = np.random.default_rng(4)
  activations = rng.uniform(0.1, 1.0, (2, 3, 5)).astype(np.float32)
  activations[:, 1] = inactive * rng.uniform(0.5, 1.0, (2, 5))
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    votes = tf.constant(rng.normal(size=(2, 3, 4, 5, 16)), tf.float32)
    activations_t = tf.constant(activations)
    beta_v, beta_a = tf.zeros([4]), tf.zeros([4])
    scope = (tf.compat.v1.xla.experimental.jit_scope(
        separate_compiled_gradients=False) if xla else contextlib.nullcontext())
    with scope:
      poses, a_out, _ = em.em_routing(votes, activations_t, beta_v, beta_a,
                                      iterations, **STABILISED)
    grads = tf.gradients(tf.reduce_sum(poses) + tf.reduce_sum(a_out * a_out),
                         [votes, activations_t, beta_v, beta_a])
    values = session.run([poses, a_out] + grads)
  for value in values:
    assert np.all(np.isfinite(value))
  np.testing.assert_allclose(values[1][:, 1], 0.5, atol=1e-3)


@pytest.mark.parametrize('iterations,kwargs,message', [
    (0, {}, 'iterations'), (1, {'min_mass': -1e-20}, 'min_mass')])
def test_rejects_bad_arguments(iterations, kwargs, message):
  with pytest.raises(ValueError, match=message):
    _run(np.zeros((1, 1, 2, 3, 16), np.float32),
         np.ones((1, 1, 3), np.float32), np.zeros(2, np.float32),
         np.zeros(2, np.float32), iterations, **kwargs)


@pytest.mark.parametrize('iterations', [1, 2, 3])
def test_vote_moments_path_matches_votes_path(iterations):
  """The first M-step from poses and transforms equals the one from votes."""
  rng = np.random.default_rng(20 + iterations)
  poses = rng.normal(size=(2, 9, 18, 4, 4)).astype(np.float32)
  transforms = rng.normal(0, 0.5, size=(18, 3, 4, 4)).astype(np.float32)
  child_ids = _conv_child_ids(5, 3, 1, num_in=2)
  activations = _child_activations(rng, child_ids)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    poses_t, transforms_t = tf.constant(poses), tf.constant(transforms)
    votes_t = votes.compute_votes(poses_t, transforms_t)
    kwargs = dict(child_ids=child_ids, **STABILISED)
    args = (votes_t, tf.constant(activations), tf.zeros([3]), tf.zeros([3]),
            iterations)
    direct = em.em_routing(*args, **kwargs)
    via_moments = em.em_routing(*args, vote_moments=functools.partial(
        votes.vote_moments, poses_t, transforms_t), **kwargs)
    grads = [tf.gradients(out[0] + out[1][..., None], [poses_t, transforms_t])
             for out in (direct, via_moments)]
    direct, via_moments, grads = session.run([direct, via_moments, grads])
  for a, b in zip(direct, via_moments):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)


def test_compute_votes_is_pose_times_transform():
  rng = np.random.default_rng(5)
  poses = rng.normal(size=(2, 3, 6, 4, 4)).astype(np.float32)
  transforms = rng.normal(size=(6, 5, 4, 4)).astype(np.float32)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    result = session.run(votes.compute_votes(tf.constant(poses),
                                             tf.constant(transforms)))
  expected = np.einsum('npirt,icts->npcirs', poses, transforms)
  np.testing.assert_allclose(result, expected.reshape(2, 3, 5, 6, 16),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('conv', [False, True])
def test_stopped_assignment_gradients_are_the_last_m_step_at_fixed_r(conv):
  """With stop_assignment_gradients the outputs are unchanged, and their
  gradient is that of the last M-step with its R_ij fed in as a constant;
  without it the routing's path to R_ij adds to the gradient."""
  rng = np.random.default_rng(7)
  if conv:
    child_ids = _conv_child_ids(5, 3, 2, 3)
    votes, _, beta_v, beta_a = _problem(rng, 4, 4, 27, scale=0.5)
    activations = _child_activations(rng, child_ids)
  else:
    child_ids = None
    votes, activations, beta_v, beta_a = _problem(rng, 1, 5, 12, scale=0.5)
  weights = rng.normal(size=votes.shape[:3] + (16,)).astype(np.float32)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    inputs = [tf.constant(x) for x in (votes, activations, beta_v, beta_a)]

    def loss_and_gradients(poses, a_out):
      loss = tf.reduce_sum(poses * weights) + tf.reduce_sum(a_out)
      return [loss] + tf.gradients(loss, inputs)

    outputs = {}
    for stop in (False, True):
      trace = []
      poses, a_out, _ = em.em_routing(
          *inputs, 3, child_ids=child_ids, trace=trace,
          stop_assignment_gradients=stop, **STABILISED)
      outputs[stop] = loss_and_gradients(poses, a_out)
      last_assignments = trace[-1]['assignments']
    fixed = tf.compat.v1.placeholder(tf.float32, last_assignments.shape)
    poses, _, logits = em.m_step(
        fixed, inputs[1], inputs[0], inputs[2], inputs[3], 1.0,
        STABILISED['min_variance'], STABILISED['cost_standardization'])
    reference = loss_and_gradients(poses, tf.sigmoid(logits))
    full, stopped = session.run(outputs[False]), session.run(outputs[True])
    routed = session.run(last_assignments)
    expected = session.run(reference, {fixed: routed})
  np.testing.assert_allclose(stopped[0], full[0], rtol=1e-6)
  for got, want in zip(stopped[1:], expected[1:]):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert not np.allclose(full[1], stopped[1], rtol=1e-3, atol=1e-4)


def _groups(child_ids, num_types, normalization):
  """Group id [P, C, I] of every slot and type: the parents among which a
  child's assignments sum to 1."""
  num_positions, num_slots = child_ids.shape
  slots = np.arange(num_positions * num_slots).reshape(child_ids.shape)
  types = np.arange(num_types)[None, :, None]
  key = {'all_parents': child_ids[:, None, :] + 0 * types,
         'parent_types': slots[:, None, :] + 0 * types,
         'parent_positions': child_ids[:, None, :] * num_types + types}
  return key[normalization]


def _numpy_e_step(votes, poses, variances, logits, groups):
  """R = a_j p_j / sum over the group of a_k p_k, by explicit group sums."""
  log_p = (-0.5 * np.sum((votes - poses[:, :, :, None]) ** 2 /
                         variances[:, :, :, None], axis=-1) -
           0.5 * np.sum(np.log(2 * np.pi * variances), axis=-1)[..., None])
  numerators = np.exp(log_p - np.log1p(np.exp(-logits))[..., None])
  totals = np.stack([np.bincount(groups.ravel(), x.ravel())
                     for x in numerators])
  return numerators / totals[:, groups]


@pytest.mark.parametrize('log_space', [False, True])
@pytest.mark.parametrize('normalization', em.E_STEP_NORMALIZATIONS)
def test_e_step_normalisations_match_numpy(normalization, log_space):
  """Each ConvCaps E-step normalisation divides by its own group's sum:
  every parent of the child, the types in one slot, or the positions of
  one type; and the log-space gradient is that of the plain formula."""
  rng = np.random.default_rng(11)
  child_ids = _conv_child_ids(7, 3, 2, num_in=3)  # children shared by 4
  votes, _, _, _ = _problem(rng, 9, 4, 27, scale=0.3)
  poses = rng.normal(0, 0.3, size=(2, 9, 4, 16)).astype(np.float32)
  variances = rng.uniform(0.2, 1.0, size=(2, 9, 4, 16)).astype(np.float32)
  logits = rng.normal(size=(2, 9, 4)).astype(np.float32)
  weights = rng.normal(size=votes.shape[:4]).astype(np.float32)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    inputs = [tf.constant(x) for x in (votes, poses, variances, logits)]
    assignments = {
        space: em.e_step(*inputs, child_ids=child_ids, log_space=space,
                         normalization=normalization)
        for space in (False, True)}
    gradients = {space: tf.gradients(tf.reduce_sum(r * weights), inputs)
                 for space, r in assignments.items()}
    got, gradient, plain_gradient = session.run(
        [assignments[log_space], gradients[log_space], gradients[False]])
  groups = _groups(child_ids, 4, normalization)
  expected = _numpy_e_step(votes, poses, variances, logits, groups)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
  totals = np.stack([np.bincount(groups.ravel(), r.ravel()) for r in got])
  np.testing.assert_allclose(totals[:, np.unique(groups)], 1.0, rtol=1e-5)
  for log_grad, plain in zip(gradient, plain_gradient):
    np.testing.assert_allclose(log_grad, plain, rtol=1e-3, atol=1e-5)


def test_e_step_normalisations_differ_in_conv_layers_only():
  """Routed by each normalisation, a ConvCaps layer's outputs differ; a
  fully connected layer's child has only the types as parents, so there
  the three agree."""
  rng = np.random.default_rng(12)
  child_ids = _conv_child_ids(5, 3, 1, num_in=2)
  conv_problem = _problem(rng, 9, 4, 18, scale=0.5)
  conv_problem = (conv_problem[0], _child_activations(rng, child_ids),
                  *conv_problem[2:])
  fc_problem = _problem(rng, 1, 5, 12, scale=0.5)
  conv, fc = {}, {}
  for normalization in em.E_STEP_NORMALIZATIONS:
    conv[normalization] = _run(*conv_problem, 3, child_ids=child_ids,
                               e_step_normalization=normalization,
                               **STABILISED)[:2]
    fc[normalization] = _run(*fc_problem, 3,
                             e_step_normalization=normalization,
                             **STABILISED)[:2]
  for normalization in em.E_STEP_NORMALIZATIONS[1:]:
    assert not np.allclose(conv[normalization][0], conv['all_parents'][0],
                           rtol=1e-3, atol=1e-4)
    for got, want in zip(fc[normalization], fc['all_parents']):
      np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match='e_step_normalization'):
    _run(*fc_problem, 2, e_step_normalization='per_child')


@pytest.mark.parametrize('log_space', [False, True])
@pytest.mark.parametrize('normalization', em.E_STEP_NORMALIZATIONS)
def test_annealed_e_step_raises_numerators_to_beta(normalization, log_space):
  """R ~ (a_j p_j)^beta within the group: beta = 0 spreads a child evenly,
  beta = 1 (a float or a tensor) is the plain E-step."""
  rng = np.random.default_rng(13)
  child_ids = _conv_child_ids(5, 3, 1, num_in=2)
  votes, _, _, _ = _problem(rng, 9, 3, 18, scale=0.3)
  poses = rng.normal(0, 0.3, size=(2, 9, 3, 16)).astype(np.float32)
  variances = rng.uniform(0.3, 1.0, size=(2, 9, 3, 16)).astype(np.float32)
  logits = rng.normal(size=(2, 9, 3)).astype(np.float32)
  groups = _groups(child_ids, 3, normalization)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    inputs = [tf.constant(x) for x in (votes, poses, variances, logits)]
    got = session.run({
        beta: em.e_step(*inputs, child_ids=child_ids, log_space=log_space,
                        normalization=normalization, annealing=annealing)
        for beta, annealing in ((0.0, 0.0), (0.5, tf.constant(0.5)),
                                (1.0, tf.constant(1.0)), ('plain', 1.0))})
  sizes = np.bincount(groups.ravel())[groups]
  np.testing.assert_allclose(got[0.0], np.broadcast_to(1 / sizes,
                                                       got[0.0].shape),
                             rtol=1e-5)
  plain = _numpy_e_step(votes, poses, variances, logits, groups)
  np.testing.assert_allclose(got[1.0], plain, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(got['plain'], plain, rtol=1e-4, atol=1e-7)
  half = np.sqrt(plain)  # (a p)^0.5 up to each group's factor
  totals = np.stack([np.bincount(groups.ravel(), h.ravel()) for h in half])
  np.testing.assert_allclose(got[0.5], half / totals[:, groups], rtol=1e-4,
                             atol=1e-7)


def test_routing_at_beta_zero_repeats_the_first_m_step():
  """With beta = 0 every E-step returns the uniform start, so 3 iterations
  give exactly what 1 gives; with beta = 1 they do not."""
  rng = np.random.default_rng(14)
  child_ids = _conv_child_ids(5, 3, 2, num_in=3)
  votes, _, beta_v, beta_a = _problem(rng, 4, 4, 27, scale=0.5)
  activations = _child_activations(rng, child_ids)
  one = _run(votes, activations, beta_v, beta_a, 1, child_ids=child_ids,
             **STABILISED)
  for beta, same in ((0.0, True), (1.0, False)):
    three = _run(votes, activations, beta_v, beta_a, 3, child_ids=child_ids,
                 e_step_annealing=beta, **STABILISED)
    for got, want in zip(three[:2], one[:2]):
      assert np.allclose(got, want, rtol=1e-5, atol=1e-6) == same


@pytest.mark.parametrize('beta', [0.0, 0.5])
@pytest.mark.parametrize('log_space', [False, True])
def test_annealed_e_step_gradients_finite_where_densities_underflow(
    beta, log_space):
  """Votes far from some parents make a_j p_j underflow to 0; the annealed
  E-step still gives finite assignments and gradients."""
  rng = np.random.default_rng(15)
  votes = rng.normal(size=(1, 1, 3, 6, 16)).astype(np.float32)
  poses = np.zeros((1, 1, 3, 16), np.float32)
  poses[:, :, 0] = 40.0  # parent 0: exp(-16 * 40^2 / 0.02) underflows,
  variances = np.ones((1, 1, 3, 16), np.float32)  # parents 1, 2 do not
  variances[:, :, 0] = 0.01
  logits = rng.normal(size=(1, 1, 3)).astype(np.float32)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    inputs = [tf.constant(x) for x in (votes, poses, variances, logits)]
    assignments = em.e_step(*inputs, log_space=log_space, annealing=beta)
    gradients = tf.gradients(tf.reduce_sum(assignments * votes[..., 0]),
                             inputs)
    r, grads = session.run([assignments, gradients])
  assert np.all(np.isfinite(r))
  np.testing.assert_allclose(r.sum(axis=2), 1.0, rtol=1e-5)
  for gradient in grads:
    assert np.all(np.isfinite(gradient))
