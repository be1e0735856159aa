"""Datasets of capsulesEM and a lookup by name.

Every dataset module exposes the same names: NUM_CLASSES, IMAGE_SHAPE,
train_input(data_dir, batch_size, seed=None, **options) and
eval_input(data_dir, batch_size, **options) -> (dataset, num_examples).
"""

from datasets import mnist
from datasets import mnist40
from datasets import smallnorb

DATASETS = {'mnist': mnist, 'mnist40': mnist40, 'smallnorb': smallnorb}


def get_dataset(name):
  """Returns the dataset module called `name`.

  Args:
    name: str, a key of DATASETS.

  Raises:
    ValueError: unknown name; the message lists the choices.
  """
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(f'Unknown dataset {name!r}; choose one of '
                     f'{", ".join(sorted(DATASETS))}.') from None
