"""Named experiment configurations: flag values that train.py applies with
`--config NAME`. A flag given on the command line wins over the config."""

EXPERIMENTS = {
    # The reference's setting: 1 routing iteration, batch 24, Adam 1e-3.
    'default': {},
}


def get(name):
  """Flag values of the experiment `name`; a clear error when unknown."""
  if name not in EXPERIMENTS:
    raise ValueError(f'unknown --config {name!r}; choose one of '
                     f'{sorted(EXPERIMENTS)}')
  return EXPERIMENTS[name]
