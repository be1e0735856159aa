"""Procedure 1 of the paper in plain numpy, on an explicit bipartite graph.

The test oracle for nets/em_routing.py: children i and parents j, a boolean
`connected[i, j]` (child i votes for parent j) and votes V[i, j, h], written
line by line from the paper with loops over parents and children, no
stabilisers and no layout tricks.
"""

import math

import numpy as np


def em_routing(a, votes, connected, beta_v, beta_a, inverse_temperatures,
               pose_damping=0.0, activation_cost='paper', cost_scale=1.0,
               slot_assignments=None):
  """Runs Procedure 1, or with the released codes' departures.

  Args:
    a: child activations [num_children].
    votes: V [num_children, num_parents, H] (ignored where not connected).
    connected: bool [num_children, num_parents].
    beta_v, beta_a: [num_parents].
    inverse_temperatures: lambda_t for each iteration t.
    pose_damping: d, mu_j = (1 - d) mean_j + d mu_j of the previous iteration
      (0 before the first), sigma_j^2 around that mu_j (the authors' code).
    activation_cost: 'paper', or 'authors': a_j = logistic(lambda (-r (sum_h
      ln sigma^2 + H (1 + ln 2 pi) beta_v) - 5000 beta_a)).
    cost_scale: a factor on the cost (IBM's code).
    slot_assignments: None, or the initial R of every connected pair (the
      authors' 1 / C per slot).

  Returns:
    parent poses mu [num_parents, H], parent activations [num_parents] and the
    assignments R [num_children, num_parents] used by the last M-step.
  """
  num_children, num_parents, num_components = votes.shape
  votes = votes.astype(np.float64)
  assignments = connected / connected.sum(axis=1, keepdims=True)
  if slot_assignments is not None:
    assignments = connected * slot_assignments
  mu = np.zeros((num_parents, num_components))
  for t, inverse_temperature in enumerate(inverse_temperatures):
    previous_mu = mu
    mu = np.zeros((num_parents, num_components))
    sigma_sq = np.zeros((num_parents, num_components))
    a_out = np.zeros(num_parents)
    for j in range(num_parents):  # M-step
      r = assignments[:, j] * a
      mean = (r[:, None] * votes[:, j]).sum(0) / r.sum()
      mu[j] = (1 - pose_damping) * mean + pose_damping * previous_mu[j]
      sigma_sq[j] = (r[:, None] * (votes[:, j] - mu[j]) ** 2).sum(0) / r.sum()
      if activation_cost == 'paper':
        cost = cost_scale * (beta_v[j] + np.log(np.sqrt(sigma_sq[j]))) * r.sum()
        logit = inverse_temperature * (beta_a[j] - cost.sum())
      else:
        cost = cost_scale * r.sum() * (
            np.log(sigma_sq[j]).sum() +
            num_components * (1 + math.log(2 * math.pi)) * beta_v[j])
        logit = inverse_temperature * (-cost - 5000 * beta_a[j])
      a_out[j] = 1.0 / (1.0 + np.exp(-logit))
    if t == len(inverse_temperatures) - 1:
      return mu, a_out, assignments
    new_assignments = np.zeros_like(assignments)
    for i in range(num_children):  # E-step
      p = np.zeros(num_parents)
      for j in np.flatnonzero(connected[i]):
        p[j] = (1.0 / np.sqrt(np.prod(2 * math.pi * sigma_sq[j])) * np.exp(
            -((votes[i, j] - mu[j]) ** 2 / (2 * sigma_sq[j])).sum()))
      new_assignments[i] = a_out * p / (a_out * p).sum()
    assignments = new_assignments
  raise ValueError('no iterations')


def from_layout(votes, activations, child_ids=None):
  """Turns one example of the TF layout into the bipartite graph.

  Args:
    votes: [P, C, I, H] of one example.
    activations: [P, I] of one example.
    child_ids: int [P, I] or None (every slot its own child).

  Returns:
    (a [children], V [children, P * C, H], connected [children, P * C]);
    parent j = p * C + c.
  """
  num_positions, num_types, num_slots, num_components = votes.shape
  if child_ids is None:
    child_ids = np.arange(num_positions * num_slots).reshape(
        num_positions, num_slots)
  num_children = child_ids.max() + 1
  a = np.zeros(num_children)
  graph_votes = np.zeros((num_children, num_positions * num_types,
                          num_components))
  connected = np.zeros((num_children, num_positions * num_types), bool)
  for p in range(num_positions):
    for i in range(num_slots):
      child = child_ids[p, i]
      a[child] = activations[p, i]
      parents = slice(p * num_types, (p + 1) * num_types)
      graph_votes[child, parents] = votes[p, :, i]
      connected[child, parents] = True
  return a, graph_votes, connected
