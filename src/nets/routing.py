"""EM routing between two capsule layers: Procedure 1 of the paper.

Hinton, Sabour & Frosst, "Matrix capsules with EM routing", ICLR 2018:

  procedure EM ROUTING(a, V)
    R_ij <- 1 / |Omega_{L+1}|
    for t iterations do
      M-STEP(a, R, V, j)   for every parent j
      E-STEP(mu, sigma, a, V, i)   for every child i
    return a, M

A routing problem here has N examples, P parent positions, C parent capsule
types, I child slots per parent position and H = 16 pose components. The
tensors of the paper are held as

  votes                V_ij^h   [N, P, C, I, H]
  input activations    a_i      [N, P, I]      (one per child slot)
  assignments          R_ij     [N, P, C, I]
  parent poses         mu_j^h   [N, P, C, H]
  parent variances     (sigma_j^h)^2 [N, P, C, H]
  output activations   a_j      [N, P, C]

Parents-major layout: every sum over children "sum_i" is a batched
vector-matrix product over the last two axes, and every sum over pose
components "sum_h" a batched matrix-vector product, so neither the weighted
votes R_ij V_ij^h nor the scaled deviations (V - mu)^2 / sigma^2 are
materialised as separate tensors.

A fully connected layer has P = 1 and every child in one slot. In a
convolutional layer one child sits in the slots of every parent position whose
receptive field contains it; `child_ids` [P, I] names the child in each slot,
and the E-step normalises a child's assignments over all of those parents
times all C parent types, as the paper's Procedure 1 describes (the authors'
released code differs: notes/recipes_sources.md).

Numerical stabilisers, each switchable; at the neutral setting named in
brackets the function computes Procedure 1 exactly (notes/em_routing.md):
  min_variance          variance floor added to (sigma_j^h)^2   [0.0]
  min_mass              where a parent's mass sum_i R_ij a_i is
                        at most this, its mu_j and sigma_j^2 are
                        held constant in the gradient, whose
                        -mu_j / mass and -sigma_j^2 / mass
                        overflow for a mass near 1e-37 (the
                        forward pass is unchanged)              [0.0]
  cost_standardization  standardise cost_j over the C types     [False]
  log_space             E-step in log space, max-shifted, with a stable
                        log-sigmoid; an exact rewrite of the
                        same formulas                           [False]

Departures of the released codes, each switchable; the paper's setting in
brackets (notes/recipes.md):
  activation_cost       'authors': the activation logit of google-research
                        capsule_em (`_activation_logits`)       ['paper']
  cost_scale            'ibm': the cost times 100 C / I, IBM's
                        100 / (children per parent type)        ['none']
  pose_damping          d: mu_j <- (1 - d) mu_j + d mu_j of the previous
                        iteration (0 before the first), sigma_j^2 taken
                        around the damped mu_j (authors: 0.1)    [0.0]
  initial_assignments   'per_slot': R_ij = 1 / C in every slot, so a child
                        in n parent positions sends n times its
                        activation (authors)                    ['per_child']

Departures of this project's, switchable (notes/recipes.md):
  e_step_normalization  the parents over which a ConvCaps child's
                        assignments sum to 1: 'all_parents' (every
                        position x every type, Procedure 1),
                        'parent_types' (the C types, each slot on its
                        own), 'parent_positions' (the positions, each
                        type on its own: the authors' ConvCaps
                        E-step, at its correct geometry). A fully
                        connected layer's child has only the C types
                        as parents, so there every mode is
                        'all_parents'                 ['all_parents']
  e_step_annealing      beta in [0, 1]: the E-step computes
                        R_ij proportional to (a_j p_j)^beta, the
                        deterministic annealing EM of Ueda & Nakano
                        (1998); 0 gives the uniform R_ij of the
                        normalisation (with the matching R_0 and no
                        pose damping, every iteration then repeats
                        the first M-step). train.py raises it from
                        0 to 1 over --routing_warmup_steps   [1.0]
  stop_assignment_gradients
                        hold each E-step's R_ij constant in the
                        gradient: the loss differentiates the last
                        M-step with respect to votes, activations and
                        betas at the routed R, not the routing's path
                        to R (the forward pass is unchanged)   [False]
"""

import math

import numpy as np
import tensorflow as tf

from nets import shapes

# Floor on the variance of the costs over parent types (a standard deviation
# of 0.01 in cost units, far below real spreads): where every parent type at
# a position receives almost no mass, rounding noise in the costs is not
# standardised into O(1) values with huge, Inf or NaN gradients.
_COST_VARIANCE_FLOOR = 1e-4

# The min_mass that train.py suggests when the loss goes non-finite. A
# heuristic: a live parent's local factor -sigma_j^2 / mass is then below
# sigma_j^2 1e10, whose square (the global gradient norm squares every
# entry) stays below float32's 3.4e38 unless sigma_j^2 exceeds about 2e9;
# with 1e-20, masses just above it reach that at sigma_j^2 of about 0.2.
# Factors further along the chain can still overflow.
RECOMMENDED_MIN_MASS = 1e-10

ACTIVATION_COSTS = ('paper', 'authors')
COST_SCALES = ('none', 'ibm')
INITIAL_ASSIGNMENTS = ('per_child', 'per_slot')
E_STEP_NORMALIZATIONS = ('all_parents', 'parent_types', 'parent_positions')

# The authors' logit: H (1 + ln 2 pi) multiplies beta_v per pose component,
# 5000 multiplies beta_a (google-research capsule_em, em_layers.py).
_AUTHORS_BETA_V_SCALE = 1.0 + math.log(2.0 * math.pi)
_AUTHORS_BETA_A_SCALE = 5000.0


def _as_schedule(inverse_temperature):
  """Turns a constant or a schedule into a function of the iteration t."""
  if callable(inverse_temperature):
    return inverse_temperature
  return lambda unused_t: inverse_temperature


def _weighted_child_sum(weights, values):
  """sum_i weights_i values_i^h.

  Args:
    weights: [N, P, C, I].
    values: [N, P, C, I, H].

  Returns:
    [N, P, C, H].
  """
  return tf.squeeze(tf.matmul(weights[..., None, :], values), axis=-2)


def _component_sum(values, weights):
  """sum_h values_i^h weights^h.

  Args:
    values: [N, P, C, I, H].
    weights: [N, P, C, H].

  Returns:
    [N, P, C, I].
  """
  return tf.squeeze(tf.matmul(values, weights[..., None]), axis=-1)


def uniform_assignments(activations, num_parent_types, child_ids=None):
  """R_ij = 1 / |parents of i|, spread evenly over every parent of each child.

  Args:
    activations: input activations [N, P, I] (gives the shape and dtype).
    num_parent_types: C.
    child_ids: int array [P, I] naming the child in each slot, or None when
      every child sits in exactly one slot.

  Returns:
    [N, P, C, I].
  """
  slots = np.ones(shapes.static_sizes(activations, [1, 2], 'EM routing'),
                  np.float32)
  if child_ids is not None:
    slots_per_child = np.bincount(child_ids.ravel())
    slots = slots_per_child[child_ids].astype(np.float32)
  uniform = np.broadcast_to(1.0 / (num_parent_types * slots[:, None, :]),
                            (slots.shape[0], num_parent_types, slots.shape[1]))
  batch = tf.shape(activations)[:1]
  return tf.broadcast_to(tf.constant(uniform, activations.dtype),
                         tf.concat([batch, uniform.shape], axis=0))


def divide_by_mass(sums, mass, min_mass=0.0):
  """sums / mass: mu_j or (sigma_j^h)^2 from sums over the children, 0 where
  the mass is 0. Where the mass is at most `min_mass` (0: off), the same
  quotient is held constant in the gradient, whose -sums / mass^2 overflows
  float32 for a mass near 1e-37.

  Args:
    sums: [N, P, C, H].
    mass: sum_i R_ij a_i [N, P, C, 1].
    min_mass: a float >= 0.

  Returns:
    [N, P, C, H].
  """
  quotient = tf.math.divide_no_nan(sums, mass)
  if not min_mass:
    return quotient
  live = mass > min_mass
  divisor = tf.where(live, mass, tf.ones_like(mass))  # no 1 / tiny anywhere
  return tf.where(live, tf.math.divide_no_nan(sums, divisor),
                  tf.stop_gradient(quotient))


def m_step(assignments, activations, votes, beta_v, beta_a,
           inverse_temperature, min_variance=0.0,
           cost_standardization=False, vote_moments=None,
           activation_cost='paper', cost_scale=1.0, pose_damping=0.0,
           previous_poses=None, min_mass=0.0):
  """M-STEP(a, R, V, j) for every parent j.

  Args:
    assignments: R_ij [N, P, C, I].
    activations: a_i [N, P, I].
    votes: V_ij^h [N, P, C, I, H], or a fused_votes.FusedVotes that gives
      the moments below without stored votes.
    beta_v, beta_a: [C], learned per parent type.
    inverse_temperature: lambda, a float or scalar tensor.
    min_variance: variance floor added to (sigma_j^h)^2.
    cost_standardization: standardise sum_h cost_j^h over the C types.
    vote_moments: None, or, when R_ij does not depend on j, a function
      w [N, P, I] -> (sum_i w_i V_ij^h, sum_i w_i (V_ij^h)^2) that computes
      the moments without the votes (nets.votes.vote_moments).
    activation_cost: 'paper' or 'authors' (`_activation_logits`).
    cost_scale: a factor on the cost (1, or IBM's 100 C / I).
    pose_damping: d, the weight of `previous_poses` in mu_j.
    previous_poses: mu_j of the previous iteration [N, P, C, H], or None
      (zeros) at the first.
    min_mass: holds mu_j and (sigma_j^h)^2 constant in the gradient where
      sum_i R_ij a_i <= min_mass (0: off).

  Returns:
    poses mu_j^h [N, P, C, H], variances (sigma_j^h)^2 [N, P, C, H] and
    activation logits [N, P, C], a_j = logistic(logits).
  """
  if vote_moments is None and not isinstance(votes, tf.Tensor):
    # Fused kernels: R_ij a_i and the three sums over i, the votes recomputed.
    mass, first, squared_deviations = votes.moments(assignments, activations)
    mass = mass[..., None]  # sum_i R_ij a_i
    poses = divide_by_mass(first, mass, min_mass)
    variances = divide_by_mass(squared_deviations, mass, min_mass)
  else:
    weighted = assignments * activations[:, :, None, :]  # R_ij <- R_ij a_i
    mass = tf.reduce_sum(weighted, axis=-1)[..., None]  # sum_i R_ij
    if vote_moments is None:
      poses = divide_by_mass(_weighted_child_sum(weighted, votes), mass,
                             min_mass)
      squared_deviations = tf.math.squared_difference(votes,
                                                      poses[..., None, :])
      variances = divide_by_mass(
          _weighted_child_sum(weighted, squared_deviations), mass, min_mass)
    else:
      # First M-step: sum_i R_ij V_ij^h and sum_i R_ij (V_ij^h)^2 as matrix
      # products of poses and transforms, R_ij being the same for every j.
      first, second = vote_moments(weighted[:, :, 0, :])
      poses = divide_by_mass(first, mass, min_mass)
      # E[V^2] - mu^2 >= 0 up to rounding, which the floor at zero removes.
      variances = tf.nn.relu(divide_by_mass(second, mass, min_mass) -
                             tf.square(poses))
  if pose_damping:
    # sum_i R_ij (V - mu')^2 / sum_i R_ij = variance + (mean - mu')^2.
    damped = (1.0 - pose_damping) * poses
    if previous_poses is not None:
      damped += pose_damping * previous_poses
    variances += tf.math.squared_difference(poses, damped)
    poses = damped
  variances += min_variance
  logits = _activation_logits(mass, variances, beta_v, beta_a,
                              inverse_temperature, activation_cost,
                              cost_scale, cost_standardization)
  return poses, variances, logits


def _activation_logits(mass, variances, beta_v, beta_a, inverse_temperature,
                       activation_cost, cost_scale, cost_standardization):
  """The logit of a_j from the cost of explaining its children.

  'paper':   cost_j = sum_h (beta_v + ln sigma_j^h) sum_i R_ij,
             logit = lambda (beta_a - cost_j).
  'authors': cost_j = sum_i R_ij (sum_h ln (sigma_j^h)^2
                                  + H (1 + ln 2 pi) beta_v),
             logit = lambda (-cost_j - 5000 beta_a); the paper's form with
             lambda doubled, beta_v scaled by 1.42 and beta_a by -2500.

  Args:
    mass: sum_i R_ij a_i [N, P, C, 1].
    variances: (sigma_j^h)^2 [N, P, C, H].
    beta_v, beta_a: [C].
    inverse_temperature: lambda.
    activation_cost: 'paper' or 'authors'.
    cost_scale: a factor on cost_j.
    cost_standardization: standardise cost_j over the C types.

  Returns:
    [N, P, C].
  """
  if activation_cost == 'paper':
    # cost^h = (beta_v + log sigma^h) sum_i R_ij, log sigma = log(sigma^2)/2.
    cost = (beta_v[:, None] + 0.5 * tf.math.log(variances)) * mass
    cost = tf.reduce_sum(cost, axis=-1)  # sum_h cost^h [N, P, C]
    offset = beta_a
  elif activation_cost == 'authors':
    num_components = shapes.static_size(variances, -1, 'the M-step')
    cost = mass[..., 0] * (
        tf.reduce_sum(tf.math.log(variances), axis=-1) +
        num_components * _AUTHORS_BETA_V_SCALE * beta_v)
    offset = -_AUTHORS_BETA_A_SCALE * beta_a
  else:
    raise ValueError(f'activation_cost must be one of {ACTIVATION_COSTS}, '
                     f'got {activation_cost!r}')
  cost *= cost_scale
  if cost_standardization:
    mean, variance = tf.nn.moments(cost, axes=[-1], keepdims=True)
    cost = (cost - mean) * tf.math.rsqrt(variance + _COST_VARIANCE_FLOOR)
  return inverse_temperature * (offset - cost)  # a_j = logistic(logits)


def log_gaussian_density(votes, poses, variances):
  """log p_j(V_ij): the log of a diagonal Gaussian's density.

  log p_j = -sum_h (V_ij^h - mu_j^h)^2 / (2 (sigma_j^h)^2)
            - sum_h log(sigma_j^h) - (H / 2) log(2 pi).

  Args:
    votes: V_ij^h [N, P, C, I, H], or a fused_votes.FusedVotes.
    poses: mu_j^h [N, P, C, H].
    variances: (sigma_j^h)^2 [N, P, C, H].

  Returns:
    [N, P, C, I].
  """
  num_components = shapes.static_size(variances, -1, 'the E-step')
  if isinstance(votes, tf.Tensor):
    squared_deviations = tf.math.squared_difference(votes,
                                                    poses[..., None, :])
    exponent = _component_sum(squared_deviations, 0.5 / variances)
  else:
    exponent = votes.quadratic_form(poses, 0.5 / variances)
  log_normaliser = (0.5 * tf.reduce_sum(tf.math.log(variances), axis=-1) +
                    0.5 * num_components * math.log(2.0 * math.pi))
  return -exponent - log_normaliser[..., None]


def _reduce_over_positions(values, child_ids, reduce_fn):
  """Reduces per-slot values over every slot of the same child.

  Args:
    values: [N, P, C', I], C' the parent types or 1.
    child_ids: int array [P, I].
    reduce_fn: tf.math.unsorted_segment_sum or unsorted_segment_max.

  Returns:
    [N, P, C', I]: each slot holds the reduction over all slots of its
    child, separately for each of the C'.
  """
  slots_first = tf.transpose(values, [1, 3, 0, 2])  # [P, I, N, C']
  per_child = reduce_fn(slots_first, child_ids, int(child_ids.max()) + 1)
  return tf.transpose(tf.gather(per_child, child_ids), [2, 0, 3, 1])


def normalizes_within_slot(child_ids, normalization):
  """Whether each slot's assignments sum to 1 over its C types on their own:
  a fully connected layer's child (child_ids None, one slot each) or
  'parent_types'."""
  return child_ids is None or normalization == 'parent_types'


def _over_parents(values, child_ids, normalization, reduction):
  """Sums (reduction 'sum') or maximises ('max') [N, P, C, I] over the
  parents among which a child's assignments are normalised; returns
  [N, P, C or 1, I], broadcastable to the input."""
  over_types = tf.reduce_sum if reduction == 'sum' else tf.reduce_max
  over_slots = (tf.math.unsorted_segment_sum if reduction == 'sum'
                else tf.math.unsorted_segment_max)
  if normalizes_within_slot(child_ids, normalization):
    return over_types(values, axis=2, keepdims=True)
  if normalization == 'parent_positions':
    return _reduce_over_positions(values, child_ids, over_slots)
  return _reduce_over_positions(over_types(values, axis=2, keepdims=True),
                                child_ids, over_slots)


def _normalize_log_space(log_numerators, child_ids, normalization):
  """R_ij = exp(x_ij) / sum_k exp(x_ik) over the parents k of child i.

  The gradient, dx_ij = R_ij (dR_ij - sum_k R_ik dR_ik), is written out so
  that only R is kept for it, not the exponentials as well.
  """
  if normalizes_within_slot(child_ids, normalization):
    return tf.nn.softmax(log_numerators, axis=2)

  def over_parents(values):
    return _over_parents(values, child_ids, normalization, 'sum')

  @tf.custom_gradient
  def normalize(x):
    numerators = tf.exp(x - _over_parents(x, child_ids, normalization, 'max'))
    assignments = numerators / over_parents(numerators)
    return assignments, lambda d: assignments * (
        d - over_parents(assignments * d))

  return normalize(log_numerators)


def _normalize(numerators, child_ids, normalization):
  """R_ij = x_ij / sum_k x_ik over the parents k of child i."""
  return numerators / _over_parents(numerators, child_ids, normalization,
                                    'sum')


def e_step(votes, poses, variances, logits, child_ids=None, log_space=False,
           normalization='all_parents', annealing=1.0):
  """E-STEP(mu, sigma, a, V, i) for every child i.

  p_j = exp(-sum_h (V_ij^h - mu_j^h)^2 / (2 (sigma_j^h)^2))
        / sqrt(prod_h 2 pi (sigma_j^h)^2)
  R_ij = a_j p_j / sum_k a_k p_k

  Args:
    votes: V_ij^h [N, P, C, I, H], or a fused_votes.FusedVotes.
    poses: mu_j^h [N, P, C, H].
    variances: (sigma_j^h)^2 [N, P, C, H].
    logits: activation logits, a_j = logistic(logits) [N, P, C].
    child_ids: int array [P, I] for a convolutional layer, else None.
    log_space: compute log(a_j p_j) and normalise with a max shift.
    normalization: one of E_STEP_NORMALIZATIONS, the parents k of the sum
      (module docstring); only a convolutional layer's children have a
      choice.
    annealing: beta, a float or scalar tensor in [0, 1]: R_ij is
      proportional to (a_j p_j)^beta (module docstring); 1 is Procedure 1.

  Returns:
    assignments R_ij [N, P, C, I].
  """
  log_p = log_gaussian_density(votes, poses, variances)
  if not (isinstance(annealing, (int, float)) and annealing == 1):
    # (a_j p_j)^beta from the logs: a power of an underflowed a_j p_j
    # would lose it and have an infinite gradient.
    log_numerators = annealing * (tf.math.log_sigmoid(logits)[..., None] +
                                  log_p)
    if log_space:
      return _normalize_log_space(log_numerators, child_ids, normalization)
    return _normalize(tf.exp(log_numerators), child_ids, normalization)
  if log_space:
    log_a = tf.math.log_sigmoid(logits)[..., None]
    return _normalize_log_space(log_a + log_p, child_ids, normalization)
  a = tf.math.sigmoid(logits)[..., None]
  return _normalize(a * tf.exp(log_p), child_ids, normalization)


def cost_scale_factor(cost_scale, votes_shape):
  """The factor on the cost: 1, or IBM's 100 / (I / C) for I child slots per
  parent position and C parent types ('ibm')."""
  if cost_scale == 'none':
    return 1.0
  if cost_scale == 'ibm':
    return 100.0 * int(votes_shape[2]) / int(votes_shape[3])
  raise ValueError(f'cost_scale must be one of {COST_SCALES}, got '
                   f'{cost_scale!r}')


def em_routing(votes, activations, beta_v, beta_a, iterations,
               inverse_temperature=1.0, child_ids=None, min_variance=0.0,
               cost_standardization=False, log_space=False,
               vote_moments=None, trace=None, activation_cost='paper',
               cost_scale='none', pose_damping=0.0,
               initial_assignments='per_child',
               e_step_normalization='all_parents', e_step_annealing=1.0,
               stop_assignment_gradients=False, min_mass=0.0):
  """Procedure 1: routes votes to parents by EM.

  Args:
    votes: V_ij^h [N, P, C, I, H], or a fused_votes.FusedVotes, which
      recomputes the votes where they are used and never stores them.
    activations: input activations a_i [N, P, I].
    beta_v, beta_a: [C], learned per parent type.
    iterations: number of EM iterations, >= 1.
    inverse_temperature: lambda, a float or a function t -> lambda_t of the
      iteration t = 0 .. iterations - 1.
    child_ids: int array [P, I] naming the child in each slot (convolutional
      layers), or None when every child sits in one slot (fully connected).
    min_variance, cost_standardization, log_space, min_mass: numerical
      stabilisers (see the module docstring); the defaults compute
      Procedure 1 exactly.
    vote_moments: None, or a function w [N, P, I] -> (sum_i w_i V_ij^h,
      sum_i w_i (V_ij^h)^2) that the first M-step uses instead of the votes
      (nets.votes.vote_moments); with one iteration the votes are then never
      evaluated.
    trace: None, or a list to which each iteration appends a dict of the
      assignments R_ij its M-step used [N, P, C, I] and the variances
      (sigma_j^h)^2 it found [N, P, C, H] (diagnostics; nothing extra runs
      unless they are fetched).
    activation_cost, cost_scale, pose_damping, initial_assignments: the
      released codes' departures (see the module docstring); the defaults
      are the paper's.
    e_step_normalization, e_step_annealing, stop_assignment_gradients:
      this project's departures (see the module docstring); the defaults
      are the paper's.

  Returns:
    poses mu_j [N, P, C, H], activations a_j [N, P, C] and the assignments
    R_ij [N, P, C, I] of the last M-step.
  """
  if iterations < 1:
    raise ValueError(f'iterations must be >= 1, got {iterations}')
  if initial_assignments not in INITIAL_ASSIGNMENTS:
    raise ValueError(f'initial_assignments must be one of '
                     f'{INITIAL_ASSIGNMENTS}, got {initial_assignments!r}')
  if e_step_normalization not in E_STEP_NORMALIZATIONS:
    raise ValueError(f'e_step_normalization must be one of '
                     f'{E_STEP_NORMALIZATIONS}, got {e_step_normalization!r}')
  if min_mass < 0:
    raise ValueError(f'min_mass must be >= 0, got {min_mass}')
  if isinstance(e_step_annealing, (int, float)) and not (
      0 <= e_step_annealing <= 1):
    raise ValueError(f'e_step_annealing must be in [0, 1], got '
                     f'{e_step_annealing}')
  schedule = _as_schedule(inverse_temperature)
  scale = cost_scale_factor(cost_scale, votes.shape)
  assignments = uniform_assignments(
      activations, shapes.static_size(votes, 2, 'EM routing'),
      child_ids if initial_assignments == 'per_child' else None)
  poses = None
  for t in range(iterations):
    with tf.name_scope(f'iteration_{t + 1}'):
      poses, variances, logits = m_step(
          assignments, activations, votes, beta_v, beta_a, schedule(t),
          min_variance, cost_standardization,
          vote_moments if t == 0 else None, activation_cost, scale,
          pose_damping, poses, min_mass)
      if trace is not None:
        trace.append({'assignments': assignments, 'variances': variances})
      if t < iterations - 1:
        assignments = e_step(votes, poses, variances, logits, child_ids,
                             log_space, e_step_normalization,
                             e_step_annealing)
        if stop_assignment_gradients:
          assignments = tf.stop_gradient(assignments)
  return poses, tf.sigmoid(logits), assignments
