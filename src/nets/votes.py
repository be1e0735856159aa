"""Votes V_ij = M_i W_ij of child capsules for parent capsules.

Child slot i (a kernel position and child type, or a position and type for
the class capsules) has pose M_i; W_ij is the learned 4 x 4 transform from
child slot i to parent type j.

`compute_votes` materialises V [N, P, C, I, 16]. `vote_moments` gives the
first M-step what it needs, sum_i w_i V_ij and sum_i w_i V_ij^2, as matrix
products of the poses and transforms, without ever forming V: at the first
iteration the assignments R_ij = 1 / |parents of i| do not depend on the
parent type j, so the weights w_i = R_ij a_i do not either. With one routing
iteration the vote tensor is then never computed at all.
"""

import tensorflow as tf

from nets import shapes

POSE_SIZE = 4


def compute_votes(poses, transforms):
  """V_ij = M_i W_ij for every child slot i and parent type j.

  One batched matrix product over the slots: for slot i, the rows of every
  pose M_i in the batch are stacked, [N * P * 4, 4] x [4, C * 4], so nothing
  is tiled over the C parent types.

  Args:
    poses: M_i [N, P, I, 4, 4].
    transforms: W_ij [I, C, 4, 4].

  Returns:
    votes [N, P, C, I, 16].
  """
  num_slots, num_out = shapes.static_sizes(transforms, [0, 1], 'votes')
  batch_shape = tf.shape(poses)[:2]
  rows = tf.reshape(tf.transpose(poses, [2, 0, 1, 3, 4]),
                    [num_slots, -1, POSE_SIZE])  # [I, N*P*4, 4]
  columns = tf.reshape(tf.transpose(transforms, [0, 2, 1, 3]),
                       [num_slots, POSE_SIZE, num_out * POSE_SIZE])
  products = tf.matmul(rows, columns)  # [I, N*P*4, C*4]
  products = tf.reshape(products, tf.concat(
      [[num_slots], batch_shape, [POSE_SIZE, num_out, POSE_SIZE]], axis=0))
  votes = tf.transpose(products, [1, 2, 4, 0, 3, 5])  # [N, P, C, I, 4, 4]
  return tf.reshape(votes, tf.concat(
      [batch_shape, [num_out, num_slots, POSE_SIZE * POSE_SIZE]], axis=0))


def vote_moments(poses, transforms, weights):
  """sum_i w_i V_ij and sum_i w_i V_ij^2, elementwise, without forming V.

  With V_ij[r, s] = sum_t M_i[r, t] W_ij[t, s]:
    sum_i w_i V_ij[r, s]   = sum_{i,t} (w_i M_i[r, t]) W_ij[t, s]
    sum_i w_i V_ij[r, s]^2 = sum_{i,t,u} (w_i M_i[r, t] M_i[r, u])
                                         (W_ij[t, s] W_ij[u, s])
  Each is one matrix product contracting over (i, t) or (i, t, u); the
  symmetric pairs t <= u are summed once, with weight 2 off the diagonal.

  Args:
    poses: M_i [N, P, I, 4, 4].
    transforms: W_ij [I, C, 4, 4].
    weights: w_i [N, P, I].

  Returns:
    (sum_i w_i V_ij, sum_i w_i V_ij^2), each [N, P, C, 16].
  """
  first_t, second_t, pair_weight = _upper_triangle_pairs()
  weighted = poses * weights[..., None, None]  # w_i M_i [N, P, I, 4, 4]
  first = _contract(weighted, transforms)
  weighted_products = (tf.gather(weighted, first_t, axis=-1) *
                       tf.gather(poses, second_t, axis=-1))  # [N,P,I,4,10]
  transform_products = pair_weight[:, None] * (
      tf.gather(transforms, first_t, axis=-2) *
      tf.gather(transforms, second_t, axis=-2))  # [I, C, 10, 4]
  second = _contract(weighted_products, transform_products)
  return first, second


def _upper_triangle_pairs():
  """The 10 pairs t <= u of a 4 x 4 symmetric product, and their weights."""
  pairs = [(t, u) for t in range(POSE_SIZE) for u in range(t, POSE_SIZE)]
  first = tf.constant([t for t, _ in pairs])
  second = tf.constant([u for _, u in pairs])
  weight = tf.constant([1.0 if t == u else 2.0 for t, u in pairs])
  return first, second, weight


def _contract(left, right):
  """out[n, p, j, r, s] = sum_{i, k} left[n, p, i, r, k] right[i, j, k, s].

  Args:
    left: [N, P, I, 4, K].
    right: [I, C, K, 4].

  Returns:
    [N, P, C, 16].
  """
  num_slots, num_out, depth = shapes.static_sizes(right, [0, 1, 2], 'votes')
  batch_shape = tf.shape(left)[:2]
  rows = tf.reshape(tf.transpose(left, [0, 1, 3, 2, 4]),
                    [-1, num_slots * depth])  # [N*P*4, I*K]
  columns = tf.reshape(tf.transpose(right, [0, 2, 1, 3]),
                       [num_slots * depth, num_out * POSE_SIZE])
  out = tf.reshape(tf.matmul(rows, columns), tf.concat(
      [batch_shape, [POSE_SIZE, num_out, POSE_SIZE]], axis=0))
  return tf.reshape(tf.transpose(out, [0, 1, 3, 2, 4]), tf.concat(
      [batch_shape, [num_out, POSE_SIZE * POSE_SIZE]], axis=0))
