"""How the network's variables start: the initialisation schemes of the
recipes in notes/recipes.md.

A scheme is an `Initialization`, named in `SCHEMES`; `ModelConfig` records
its name. Every scheme builds the same variables with the same shapes, so a
checkpoint of one loads into the network of any other.

  normal    this project's first: He for ReLU Conv1 and PrimaryCaps,
            transforms with stddev 1/2 (a vote has the scale of a pose: each
            entry sums 4 products), zero biases, beta_v = beta_a = 0. The
            default until 2026-11-29, then named `default` (LEGACY_NAMES).
  authors   google-research capsule_em: ReLU Conv1 stddev 0.05 and bias 0.1;
            PrimaryCaps pose kernel stddev 0.5, activation kernel stddev 3.0
            and a = logistic(x - 1); ConvCaps transforms stddev 0.3, class
            transforms 0.01; ConvCaps beta_v = beta_a = 0.5, class
            beta_v = 2.0, beta_a = 1.0 (in the authors' activation cost,
            routing.ACTIVATION_COSTS).
  ibm       IBM/matrix-capsules-with-em-routing: transforms stddev 1.0,
            beta_a ~ truncated normal (-1000, 500), beta_v Xavier uniform.
  identity  transforms W = I + noise of stddev 0.1, so that every vote
            starts as its child's pose (the pose-preserving recipe); as
            `normal` otherwise. train.py's default (DEFAULT) since
            2026-11-29: the best at 1 iteration in the routing research
            (notes/results.md).
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

POSE_SIZE = 4


@dataclasses.dataclass(frozen=True)
class Init:
  """One variable's initial distribution.

  Attributes:
    kind: 'constant' (every entry `mean`), 'truncated_normal' (mean, stddev;
      TensorFlow's truncation at 2 stddev), 'he' (truncated normal, stddev
      sqrt(2 / fan_in)), or 'xavier_uniform' (uniform within
      +-sqrt(6 / (fan_in + fan_out))).
    mean, stddev: of 'constant' and 'truncated_normal'.
    identity: add the 4 x 4 identity to every transform (transforms only).
  """
  kind: str = 'constant'
  mean: float = 0.0
  stddev: float = 0.0
  identity: bool = False

  def __post_init__(self):
    kinds = ('constant', 'truncated_normal', 'he', 'xavier_uniform')
    if self.kind not in kinds:
      raise ValueError(f'Init kind must be one of {kinds}, got {self.kind!r}')

  def initializer(self, fan_in=1, fan_out=1):
    """A tf.compat.v1 initializer for a variable with those fans."""
    if self.kind == 'he':
      base = tf.compat.v1.truncated_normal_initializer(
          stddev=math.sqrt(2.0 / fan_in))
    elif self.kind == 'xavier_uniform':
      limit = math.sqrt(6.0 / (fan_in + fan_out))
      base = tf.compat.v1.random_uniform_initializer(-limit, limit)
    elif self.kind == 'truncated_normal':
      base = tf.compat.v1.truncated_normal_initializer(self.mean, self.stddev)
    else:
      base = tf.compat.v1.constant_initializer(self.mean)
    if not self.identity:
      return base

    def with_identity(shape, dtype=tf.float32, partition_info=None):
      del partition_info
      eye = np.eye(POSE_SIZE, dtype=np.float32)
      return base(shape, dtype) + tf.constant(
          np.broadcast_to(eye, shape), dtype)
    return with_identity


def _normal(stddev, mean=0.0):
  return Init('truncated_normal', mean, stddev)


def _constant(value):
  return Init('constant', value)


@dataclasses.dataclass(frozen=True)
class Initialization:
  """The initial distributions of every kind of variable in capsules_v0.

  Attributes:
    conv1_weights, conv1_biases: ReLU Conv1.
    primary_poses, primary_activations: PrimaryCaps' 1 x 1 kernels.
    primary_activation_biases: PrimaryCaps' activation biases (a constant
      -1 gives the authors' logistic(x - 1) at the start).
    conv_transforms, class_transforms: W_ij of ConvCaps and class capsules.
    conv_beta_v, conv_beta_a, class_beta_v, class_beta_a: per output type.
  """
  conv1_weights: Init = Init('he')
  conv1_biases: Init = _constant(0.0)
  primary_poses: Init = Init('he')
  primary_activations: Init = Init('he')
  primary_activation_biases: Init = _constant(0.0)
  conv_transforms: Init = _normal(1.0 / math.sqrt(POSE_SIZE))
  class_transforms: Init = _normal(1.0 / math.sqrt(POSE_SIZE))
  conv_beta_v: Init = _constant(0.0)
  conv_beta_a: Init = _constant(0.0)
  class_beta_v: Init = _constant(0.0)
  class_beta_a: Init = _constant(0.0)


SCHEMES = {
    'normal': Initialization(),
    'authors': Initialization(
        conv1_weights=_normal(0.05), conv1_biases=_constant(0.1),
        primary_poses=_normal(0.5), primary_activations=_normal(3.0),
        primary_activation_biases=_constant(-1.0),
        conv_transforms=_normal(0.3), class_transforms=_normal(0.01),
        conv_beta_v=_constant(0.5), conv_beta_a=_constant(0.5),
        class_beta_v=_constant(2.0), class_beta_a=_constant(1.0)),
    'ibm': Initialization(
        conv_transforms=_normal(1.0), class_transforms=_normal(1.0),
        conv_beta_v=Init('xavier_uniform'), class_beta_v=Init('xavier_uniform'),
        conv_beta_a=_normal(500.0, -1000.0),
        class_beta_a=_normal(500.0, -1000.0)),
    'identity': Initialization(
        conv_transforms=Init('truncated_normal', stddev=0.1, identity=True),
        class_transforms=Init('truncated_normal', stddev=0.1, identity=True)),
}


DEFAULT = 'identity'

# Earlier names of schemes, as model_config.json files of earlier runs
# record them.
LEGACY_NAMES = {'default': 'normal'}


def get(name):
  """The scheme `name`; a clear error when unknown."""
  if name not in SCHEMES:
    raise ValueError(f'unknown initialization {name!r}; choose one of '
                     f'{sorted(SCHEMES)}')
  return SCHEMES[name]
