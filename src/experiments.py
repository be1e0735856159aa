"""Named experiment configurations: flag values that train.py applies with
`--config NAME`. A flag given on the command line wins over the config.

R<r>I<i> follows the reference's plan: r = 1 adds the reconstruction loss,
i is the number of EM routing iterations.
"""

_RECONSTRUCTION_WEIGHT = 0.0005  # Sabour et al. (2017), per summed pixel.

EXPERIMENTS = {
    # The reference's setting: 1 routing iteration, batch 24, Adam 1e-3.
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
}


def get(name):
  """Flag values of the experiment `name`; a clear error when unknown."""
  if name not in EXPERIMENTS:
    raise ValueError(f'unknown --config {name!r}; choose one of '
                     f'{sorted(EXPERIMENTS)}')
  return EXPERIMENTS[name]
