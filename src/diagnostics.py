"""What the routing does, layer by layer: the library behind diagnose.py.

Every capsule layer leaves a `layers.LayerTrace` in the graph. From it, per
batch, in the graph:

  * for each routing iteration t, the entropy of each child's assignments
    over all of its parents, H_i = -sum_k p_ik log p_ik with
    p_ik = R_ik / sum_k R_ik, divided by log K_i, K_i the child's number of
    parents (C types times the positions that see it): 1 for the uniform
    start, 0 for a child given wholly to one parent; averaged over the
    children. (Procedure 1's assignments sum to 1 over the parents; the
    authors' per-slot start gives a child in n positions n.) Under
    another `e_step_normalization` the entropy is taken within the units
    that the E-step normalises, so that 0 still means one parent and 1
    the uniform start: in each slot over the C types ('parent_types'), or
    for each child and type over its n_i positions ('parent_positions';
    children in one position have no choice there and are left out).
  * the variances (sigma_j^h)^2 of the last M-step, without the floor: their
    mean, and the fraction of them below the floor;
  * the fraction of capsules with activation a > 0.5;
  * the poses, flattened, for the numpy side: mean |mu|, over all entries
    and for each row of the 4 x 4 pose matrices (a vote's row r is the
    child pose's row r times W_ij, so a row that shrinks in one layer stays
    small in the next), and the standard deviation of every pose entry over
    the examples of one class, averaged over entries and classes
    (`PoseMoments`, streaming over batches).
"""

import numpy as np
import tensorflow as tf

from nets import layers
from nets import routing


def _entropy(sums, totals):
  """H of p_k = R_k / T from S = -sum_k R_k log R_k and T = sum_k R_k:
  H = S / T + log T."""
  return tf.math.divide_no_nan(sums, totals) + tf.math.log(totals)


def normalized_entropy(assignments, child_ids=None,
                       normalization='all_parents'):
  """Mean over the E-step's units of H / log(their number of parents), per
  example: the units are the children (K_i = C n_i parents), or with
  `normalization` the slots (C types) or each child's types (n_i
  positions).

  Args:
    assignments: R [N, P, C, I] of one M-step.
    child_ids: int array [P, I] naming the child in each slot (ConvCaps), or
      None when every child sits in one slot.
    normalization: one of routing.E_STEP_NORMALIZATIONS.

  Returns:
    [N].
  """
  plogp = -tf.math.xlogy(assignments, assignments)
  num_types = assignments.shape[2]
  if routing.normalizes_within_slot(child_ids, normalization):
    entropy = _entropy(tf.reduce_sum(plogp, axis=2),
                       tf.reduce_sum(assignments, axis=2))  # [N, P, I]
    return tf.reduce_mean(entropy, axis=[1, 2]) / np.log(num_types)
  slots = np.bincount(child_ids.ravel())
  if normalization == 'parent_positions':
    per_type = tf.stack([plogp, assignments])  # [2, N, P, C, I]
    seen = np.flatnonzero(slots > 1)  # a child in one position: no choice
    per_child = tf.gather(tf.math.unsorted_segment_sum(
        tf.transpose(per_type, [2, 4, 0, 1, 3]), child_ids, len(slots)),
                          seen)  # [children, 2, N, C]
    log_parents = np.log(slots[seen]).astype(np.float32)[:, None, None]
    return tf.reduce_mean(_entropy(per_child[:, 0], per_child[:, 1]) /
                          log_parents, axis=[0, 2])
  per_slot = tf.stack([tf.reduce_sum(plogp, axis=2),
                       tf.reduce_sum(assignments, axis=2)])  # [2, N, P, I]
  seen = np.flatnonzero(slots)  # children in no patch have no parents
  per_child = tf.gather(tf.math.unsorted_segment_sum(
      tf.transpose(per_slot, [2, 3, 0, 1]), child_ids, len(slots)),
                        seen)  # [children seen, 2, N]
  log_parents = np.log(num_types * slots[seen]).astype(np.float32)
  return tf.reduce_mean(
      _entropy(per_child[:, 0], per_child[:, 1]) / log_parents[:, None],
      axis=0)


def _per_example_mean(values):
  return tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), -1)


def layer_fetches(trace):
  """Per-batch tensors of one layer: per-example statistics [N] (and [T, N]
  entropies), and the flattened poses [N, capsules * 16]."""
  fetches = {
      'active': _per_example_mean(
          tf.cast(trace.activations > 0.5, tf.float32)),
      'poses': tf.reshape(trace.poses, [tf.shape(trace.poses)[0], -1]),
  }
  if trace.iterations:
    fetches['entropy'] = tf.stack(
        [normalized_entropy(step['assignments'], trace.child_ids,
                            trace.e_step_normalization)
         for step in trace.iterations])
    raw = trace.iterations[-1]['variances'] - trace.min_variance
    fetches['variance'] = _per_example_mean(raw)
    if trace.min_variance > 0:
      fetches['below_floor'] = _per_example_mean(
          tf.cast(raw < trace.min_variance, tf.float32))
  return fetches


def graph_fetches(graph=None):
  """{layer name: layer_fetches} for every LayerTrace in the graph."""
  graph = graph or tf.compat.v1.get_default_graph()
  return {trace.name: layer_fetches(trace)
          for trace in graph.get_collection(layers.TRACES)}


class PoseMoments:
  """Per-class running moments of flattened poses, over batches."""

  def __init__(self):
    self._count, self._sum, self._squares = {}, {}, {}
    self._row_magnitudes = np.zeros(4)
    self._values = 0

  def add(self, poses, labels):
    """poses [N, K * 16] (K capsules' 4 x 4 poses, row-major), labels int
    [N]."""
    poses = poses.astype(np.float64)
    self._row_magnitudes += np.abs(poses.reshape(len(poses), -1, 4, 4)).sum(
        axis=(0, 1, 3))
    self._values += poses.size
    for label in np.unique(labels):
      rows = poses[labels == label]
      self._count[label] = self._count.get(label, 0) + len(rows)
      self._sum[label] = self._sum.get(label, 0.0) + rows.sum(axis=0)
      self._squares[label] = self._squares.get(label, 0.0) + np.square(
          rows).sum(axis=0)

  def mean_magnitude(self):
    """Mean |mu| over every entry of every example."""
    return self._row_magnitudes.sum() / max(self._values, 1)

  def row_magnitudes(self):
    """Mean |mu| of each row of the 4 x 4 poses [4], over every example."""
    return self._row_magnitudes / max(self._values / 4, 1)

  def within_class_spread(self):
    """Standard deviation of each entry over a class's examples, averaged
    over entries and over the classes with at least two examples."""
    spreads = []
    for label, count in self._count.items():
      if count < 2:
        continue
      mean = self._sum[label] / count
      variance = np.maximum(self._squares[label] / count - mean ** 2, 0.0)
      spreads.append(np.sqrt(variance).mean())
    return float(np.mean(spreads)) if spreads else float('nan')
