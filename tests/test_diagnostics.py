"""The routing diagnostics of src/diagnostics.py on known assignments and a
tiny network."""

import numpy as np
import pytest
import tensorflow as tf

import diagnostics
import model
from nets import layers
from nets import receptive_fields
from nets import routing as em


def _entropy(assignments, child_ids=None):
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    return session.run(diagnostics.normalized_entropy(
        tf.constant(assignments, tf.float32), child_ids))


def _conv_child_ids():
  """5x5 children of 2 types, 3x3 kernel, stride 1: 9 positions, 18 slots;
  a child sits in 1 to 9 slots."""
  indices = receptive_fields.patch_indices(5, 5, 3, 1)
  return receptive_fields.child_ids(indices, 2)


def test_uniform_assignments_have_entropy_one():
  child_ids = _conv_child_ids()
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    uniform = session.run(em.uniform_assignments(
        tf.ones([2, 9, 18]), 3, child_ids))
  np.testing.assert_allclose(_entropy(uniform, child_ids), [1.0, 1.0],
                             rtol=1e-5)
  np.testing.assert_allclose(_entropy(np.full((2, 1, 4, 6), 0.25)),
                             [1.0, 1.0], rtol=1e-6)


def test_children_in_no_patch_are_left_out():
  """6x6 children, 3x3 kernel, stride 2: the last row and column are in no
  patch; the uniform start still has entropy 1 over the children that
  vote."""
  indices = receptive_fields.patch_indices(6, 6, 3, 2)
  child_ids = receptive_fields.child_ids(indices, 2)
  assert len(np.unique(child_ids)) < 6 * 6 * 2
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    uniform = session.run(em.uniform_assignments(
        tf.ones([1, 4, 18]), 3, child_ids))
  np.testing.assert_allclose(_entropy(uniform, child_ids), [1.0], rtol=1e-5)


def test_per_slot_start_has_entropy_one():
  """The authors' start, 1/C in every slot, gives a child in n positions a
  total of n: the entropy is that of R normalised over the child's
  parents, 1 for this uniform start."""
  child_ids = _conv_child_ids()
  per_slot = np.full((2, 9, 3, 18), 1.0 / 3, np.float32)
  np.testing.assert_allclose(_entropy(per_slot, child_ids), [1.0, 1.0],
                             rtol=1e-5)


def test_one_hot_assignments_have_entropy_zero():
  one_hot = np.zeros((3, 1, 4, 6), np.float32)
  one_hot[:, :, 2, :] = 1.0
  np.testing.assert_allclose(_entropy(one_hot), [0.0, 0.0, 0.0], atol=1e-7)


def test_entropy_is_over_all_parents_of_a_child():
  """A child split evenly between two of its K parents has entropy log 2 /
  log K, wherever in its slots the two parents are."""
  child_ids = _conv_child_ids()
  rng = np.random.default_rng(0)
  assignments = np.zeros((1, 9, 3, 18), np.float32)
  parents = np.bincount(child_ids.ravel()) * 3
  for child in range(child_ids.max() + 1):
    slots = np.argwhere(child_ids == child)  # (position, slot) pairs
    choices = [(p, c, i) for p, i in slots for c in range(3)]
    for k in rng.choice(len(choices), 2, replace=False):
      assignments[(0,) + choices[k]] = 0.5
  expected = np.mean(np.log(2.0) / np.log(parents))
  np.testing.assert_allclose(_entropy(assignments, child_ids), [expected],
                             rtol=1e-5)


def test_pose_moments_stream_over_batches():
  rng = np.random.default_rng(1)
  poses = rng.normal(size=(40, 32)) * np.tile(np.repeat([1, 2, 3, 4], 4), 2)
  labels = np.repeat([0, 1, 2, 3], 10)
  whole, split = diagnostics.PoseMoments(), diagnostics.PoseMoments()
  whole.add(poses, labels)
  order = rng.permutation(40)
  for chunk in np.array_split(order, 3):
    split.add(poses[chunk], labels[chunk])
  expected = np.mean([poses[labels == k].std(axis=0).mean()
                      for k in range(4)])
  assert whole.within_class_spread() == pytest.approx(expected, rel=1e-9)
  assert split.within_class_spread() == pytest.approx(expected, rel=1e-9)
  assert split.mean_magnitude() == pytest.approx(np.abs(poses).mean())
  rows = np.abs(poses.reshape(40, 2, 4, 4)).mean(axis=(0, 1, 3))
  np.testing.assert_allclose(split.row_magnitudes(), rows, rtol=1e-9)
  assert np.all(np.diff(rows) > 0)


@pytest.mark.parametrize('iterations', [1, 3])
def test_every_capsule_layer_is_traced(iterations):
  """A tiny capsules_v0 leaves a trace per capsule layer, with one entropy
  per routing iteration: the first 1 (uniform start), every value in
  [0, 1], activations and variances in range."""
  config = model.ModelConfig(iterations=iterations, a=4, b=3, c=3, d=3)
  rng = np.random.default_rng(2)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    images = tf.constant(rng.uniform(size=(2, 28, 28, 1)), tf.float32)
    config.build(images)
    traces = tf.compat.v1.get_collection(layers.TRACES)
    fetches = diagnostics.graph_fetches()
    session.run(tf.compat.v1.global_variables_initializer())
    values = session.run(fetches)
  assert [t.name.split('/')[-1] for t in traces] == [
      'primary_caps', 'conv_caps1', 'conv_caps2', 'class_caps']
  assert 'entropy' not in values['capsules_v0/primary_caps']
  for name in ('conv_caps1', 'conv_caps2', 'class_caps'):
    stats = values['capsules_v0/' + name]
    assert stats['entropy'].shape == (iterations, 2)
    np.testing.assert_allclose(stats['entropy'][0], 1.0, rtol=1e-5)
    assert np.all((stats['entropy'] >= -1e-6) & (stats['entropy'] <= 1 + 1e-5))
    assert np.all(stats['variance'] >= -1e-7)
    assert np.all((stats['below_floor'] >= 0) & (stats['below_floor'] <= 1))
  for stats in values.values():
    assert np.all((stats['active'] >= 0) & (stats['active'] <= 1))
    assert stats['poses'].shape[0] == 2


def _one_position_per_child_and_type(child_ids, num_types):
  """R [1, P, C, I]: every child gives all of every type to the first slot
  that holds it."""
  assignments = np.zeros((1,) + (child_ids.shape[0], num_types,
                                 child_ids.shape[1]), np.float32)
  first = {}
  for p, i in np.ndindex(child_ids.shape):
    first.setdefault(child_ids[p, i], (p, i))
  for p, i in first.values():
    assignments[0, p, :, i] = 1.0
  return assignments


def test_entropy_within_the_e_step_normalisation():
  """Under parent_types the unit is a slot (over C types), under
  parent_positions a child's type (over its n_i positions): the uniform
  assignments of each have entropy 1, and assignments concentrated within
  each unit 0, though they are spread over the child's parents."""
  child_ids = _conv_child_ids()
  slots = np.bincount(child_ids.ravel())[child_ids]  # n_i per slot
  by_slot = np.zeros((1, 9, 3, 18), np.float32)
  by_slot[0, :, 0, :] = 1.0  # type 0 in every slot: spread over positions
  by_position = _one_position_per_child_and_type(child_ids, 3)
  cases = {
      'parent_types': (np.full((1, 9, 3, 18), 1 / 3, np.float32), by_slot),
      'parent_positions': (np.broadcast_to(1 / slots[None, :, None, :],
                                           (1, 9, 3, 18)), by_position)}
  for normalization, (uniform, concentrated) in cases.items():
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
      got = session.run([diagnostics.normalized_entropy(
          tf.constant(r, tf.float32), child_ids, normalization)
                         for r in (uniform, concentrated)])
    np.testing.assert_allclose(got[0], [1.0], rtol=1e-5)
    np.testing.assert_allclose(got[1], [0.0], atol=1e-6)
    assert _entropy(concentrated, child_ids)[0] > 0.1  # over all parents
