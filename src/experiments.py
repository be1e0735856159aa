"""Named experiment configurations: flag values that train.py applies with
`--config NAME`. A flag given on the command line wins over the config.

R<r>I<i> follows the reference's plan: r = 1 adds the reconstruction loss,
i is the number of EM routing iterations.

The recipes `authors`, `ibm`, `identity` and `normal` are the routing
research's (notes/recipes.md, sources in notes/recipes_sources.md); every
choice in them is a flag of its own, so any one can be switched back.
"""

_RECONSTRUCTION_WEIGHT = 0.0005  # Sabour et al. (2017), per summed pixel.

# Optimisation of both released codes: Adam 3e-3 (the authors' OpenReview
# answer; their code's flag default is 0.01), decayed by 0.96 every 20k
# steps, no clipping, the margin 0.2 + 0.79 logistic(min(10, step/50k - 4)).
_RELEASED_OPTIMISATION = {
    'learning_rate': 3e-3, 'learning_rate_decay_rate': 0.96,
    'learning_rate_decay_steps': 20000, 'clip_gradient_norm': 0.0,
    'margin_schedule': 'sigmoid', 'margin_start': 0.2, 'margin_end': 0.99,
    'margin_ramp_steps': 50000,
}

# Both codes: lambda_t = 0.01 (1 - 0.95^(t + 1)), no cost standardisation.
_RELEASED_ROUTING = {
    'inverse_temperature_schedule': 'authors', 'final_lambda': 0.01,
    'cost_standardization': False,
}

EXPERIMENTS = {
    # The reference's setting: 1 routing iteration, batch 24, Adam 1e-3;
    # transforms starting at the identity (initializers.DEFAULT).
    'default': {},
    'R0I1': {'iterations': 1},
    'R0I2': {'iterations': 2},
    'R1I2': {'iterations': 2, 'reconstruction_weight': _RECONSTRUCTION_WEIGHT},
    'R0I3': {'iterations': 3},
    # The paper's small network (A=64, B=8, C=D=16).
    'small': {'A': 64, 'B': 8, 'C': 16, 'D': 16},
    # The paper's smallNORB recipe: 3 iterations, Adam 3e-3 decayed by 0.96
    # every 20k steps, weight decay 2e-7, the authors' margin schedule.
    'smallnorb_paper': {
        'dataset': 'smallnorb', 'iterations': 3, 'learning_rate': 3e-3,
        'learning_rate_decay_rate': 0.96, 'learning_rate_decay_steps': 20000,
        'weight_decay': 2e-7, 'margin_schedule': 'sigmoid',
        'margin_end': 0.99, 'margin_ramp_steps': 50000,
        'max_steps': 300000},
    # google-research capsule_em: its logit, initialisation, damping, R_0,
    # class-layer lambda / 4, variance floor 5e-4 and weight decay 2e-7.
    'authors': dict(
        _RELEASED_OPTIMISATION, **_RELEASED_ROUTING, iterations=3,
        initialization='authors', activation_cost='authors',
        pose_damping=0.1, initial_assignments='per_slot',
        class_lambda_scale=0.25, min_variance=5e-4, weight_decay=2e-7),
    # IBM/matrix-capsules-with-em-routing: cost x 100 C / I, its
    # initialisation, variance floor 1e-9, no weight decay.
    'ibm': dict(
        _RELEASED_OPTIMISATION, **_RELEASED_ROUTING, iterations=3,
        initialization='ibm', cost_scale='ibm', min_variance=1e-9),
    # Today's routing with transforms starting at the identity: the
    # default since 2026-11-29, kept as the routing research's name for it.
    'identity': {'initialization': 'identity'},
    # The default until 2026-11-29 (then `--initialization=default`):
    # transforms drawn around zero with stddev 1/2.
    'normal': {'initialization': 'normal'},
}


def get(name):
  """Flag values of the experiment `name`; a clear error when unknown."""
  if name not in EXPERIMENTS:
    raise ValueError(f'unknown --config {name!r}; choose one of '
                     f'{sorted(EXPERIMENTS)}')
  return EXPERIMENTS[name]
