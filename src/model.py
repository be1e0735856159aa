"""The model a training run builds, and how train.py hands it to tests.py.

`ModelConfig` holds everything that shapes the graph's variables or its
forward pass. train.py writes it to `<train_dir>/model_config.json` and
tests.py reads it back, so the evaluation loop rebuilds exactly the network
that wrote the checkpoints without repeating the flags.
"""

import dataclasses
import json
import math
import os

import tensorflow as tf

import runtime
from nets import capsules
from nets import cnn_baseline
from nets import decoder
from nets import initializers
from nets import layers
from nets import losses
from nets import receptive_fields
from nets import routing as em
from nets import schedules

CONFIG_FILE = 'model_config.json'
PADDINGS = ('VALID', 'SAME')
# 'capsules': the network of the paper's Figure 1; 'cnn_baseline': the
# convolutional baseline of the robustness comparisons (nets/cnn_baseline.py).
MODELS = ('capsules', 'cnn_baseline')


def default_final_lambda(dataset):
  """The inverse temperature with which the class activations can meet the
  spread loss's 0.9 margin under cost standardisation
  (losses.largest_activation_gap: 0.93 with 10 classes at lambda 2, 0.95
  with 5 at lambda 3; at lambda 1 they reach only 0.68 and 0.55)."""
  return 3.0 if dataset == 'smallnorb' else 2.0


def default_conv1_padding(dataset):
  """SAME on MNIST (28 -> 14 -> 6 -> 4, the TF 1.4 reference's network) and
  on its 40x40 canvas (40 -> 20 -> 9 -> 7), VALID elsewhere (the paper's
  32 -> 14 -> 6 -> 4 on smallNORB crops)."""
  return 'SAME' if dataset in ('mnist', 'mnist40') else 'VALID'


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The network (paper Figure 1) and its routing.

  Attributes:
    dataset: the dataset the network is trained on (datasets.DATASETS).
    num_classes: class capsules (10 for MNIST, 5 for smallNORB).
    iterations: EM routing iterations in every capsule layer.
    a, b, c, d: ReLU Conv1 channels and PrimaryCaps, ConvCaps1, ConvCaps2
      capsule types.
    coordinate_addition: in the class capsules.
    inverse_temperature_schedule: 'constant' or 'authors' (nets.schedules).
    final_lambda: the inverse temperature at the end of the schedule.
    min_variance: variance floor of the M-step (0 = off).
    cost_standardization: standardise the M-step cost over parent types.
    log_space: E-step in log space.
    min_mass: the M-step holds mu_j and sigma_j^2 constant in the gradient
      where sum_i R_ij a_i <= min_mass (0 = off, as a model_config.json
      from before this field loads; nets/routing.py). It changes the
      gradient only, so a run may resume with another value.
    reconstruction_weight: weight of the reconstruction loss; > 0 adds the
      decoder of nets/decoder.py (the reference's "R1" experiments).
    decoder_standardization: the decoder standardises its input pose
      entries with running statistics (nets/decoder.py; needs a decoder).
    conv1_padding: 'VALID' or 'SAME' for ReLU Conv1 (`geometry`); a
      model_config.json written before this field existed loads as VALID,
      the network it trained.
    initialization: a scheme of nets/initializers.py; a model_config.json
      that names it by an earlier name (initializers.LEGACY_NAMES) loads
      under today's.
    activation_cost, cost_scale, pose_damping, initial_assignments: the
      released codes' routing departures (nets/routing.py).
    class_lambda_scale: multiplies the class capsules' inverse temperature
      (the authors' code: 1/4).
    stop_assignment_gradients: no gradient through the E-steps' R_ij
      (nets/routing.py).
    e_step_normalization: the parents over which a ConvCaps child's
      assignments sum to 1 (nets/routing.py).
    class_iterations: EM routing iterations of the class capsules; 0 for
      `iterations` (then every capsule layer routes `iterations` times).
    model: one of MODELS. With 'cnn_baseline' the network is
      nets/cnn_baseline.py, sized by cnn_channels and cnn_hidden, and the
      capsule fields above are unused.
    cnn_channels: the baseline's first convolution's channels (the second
      has twice as many).
    cnn_hidden: units of the baseline's fully connected hidden layer.
  Fields added after the first runs default to what those runs trained.
  """
  dataset: str = 'mnist'
  num_classes: int = 10
  iterations: int = 1
  a: int = 32
  b: int = 32
  c: int = 32
  d: int = 32
  coordinate_addition: bool = True
  inverse_temperature_schedule: str = 'constant'
  final_lambda: float = 1.0
  min_variance: float = 1e-4
  cost_standardization: bool = True
  log_space: bool = True
  min_mass: float = 0.0
  reconstruction_weight: float = 0.0
  conv1_padding: str = 'VALID'
  initialization: str = 'normal'  # train.py's: initializers.DEFAULT.
  activation_cost: str = 'paper'
  cost_scale: str = 'none'
  pose_damping: float = 0.0
  initial_assignments: str = 'per_child'
  class_lambda_scale: float = 1.0
  stop_assignment_gradients: bool = False
  class_iterations: int = 0
  e_step_normalization: str = 'all_parents'
  model: str = 'capsules'
  cnn_channels: int = 32
  cnn_hidden: int = 1024
  decoder_standardization: bool = False

  def __post_init__(self):
    for name in ('num_classes', 'iterations', 'a', 'b', 'c', 'd'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    if self.class_iterations < 0:
      raise ValueError('class_iterations must be >= 0 (0: iterations), got '
                       f'{self.class_iterations}')
    if self.final_lambda <= 0:
      raise ValueError(f'final_lambda must be > 0, got {self.final_lambda}')
    if self.reconstruction_weight < 0:
      raise ValueError('reconstruction_weight must be >= 0, got '
                       f'{self.reconstruction_weight}')
    if self.decoder_standardization and self.reconstruction_weight == 0:
      raise ValueError('decoder_standardization needs a decoder: set '
                       'reconstruction_weight > 0')
    if self.min_variance < 0:
      raise ValueError(f'min_variance must be >= 0, got {self.min_variance}')
    if self.min_mass < 0:
      raise ValueError(f'min_mass must be >= 0, got {self.min_mass}')
    schedules.inverse_temperature(self.inverse_temperature_schedule, 1.0)
    if self.conv1_padding not in PADDINGS:
      raise ValueError(f'conv1_padding must be one of {PADDINGS}, got '
                       f'{self.conv1_padding!r}')
    initializers.get(self.initialization)
    for name, choices in (('activation_cost', em.ACTIVATION_COSTS),
                          ('cost_scale', em.COST_SCALES),
                          ('initial_assignments', em.INITIAL_ASSIGNMENTS),
                          ('e_step_normalization',
                           em.E_STEP_NORMALIZATIONS)):
      if getattr(self, name) not in choices:
        raise ValueError(f'{name} must be one of {choices}, got '
                         f'{getattr(self, name)!r}')
    if not 0 <= self.pose_damping < 1:
      raise ValueError(f'pose_damping must be in [0, 1), got '
                       f'{self.pose_damping}')
    if self.class_lambda_scale <= 0:
      raise ValueError(f'class_lambda_scale must be > 0, got '
                       f'{self.class_lambda_scale}')
    self._check_model()

  def _check_model(self):
    """Raises ValueError for an unknown model or a baseline that cannot be."""
    if self.model not in MODELS:
      raise ValueError(f'model must be one of {MODELS}, got {self.model!r}')
    for name in ('cnn_channels', 'cnn_hidden'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    if self.model == 'cnn_baseline' and self.reconstruction_weight > 0:
      raise ValueError(
          'reconstruction_weight must be 0 with model cnn_baseline: the '
          'decoder reconstructs from class capsule poses, which the CNN '
          f'does not have (got {self.reconstruction_weight})')

  def geometry(self, height, width):
    """(layer, height, width) of the grids, from the input's to the last
    ConvCaps layer's; the class capsules see the last grid times D types."""
    def conv1(size):
      return (math.ceil(size / 2) if self.conv1_padding == 'SAME'
              else receptive_fields.output_size(size, 5, 2))
    grids = [('input', height, width), ('relu_conv1', conv1(height),
                                        conv1(width))]
    grids.append(('primary_caps',) + grids[-1][1:])
    for name, stride in (('conv_caps1', 2), ('conv_caps2', 1)):
      grids.append((name,) + tuple(
          receptive_fields.output_size(size, 3, stride)
          for size in grids[-1][1:]))
    return grids

  @property
  def class_layer_iterations(self):
    """EM routing iterations of the class capsules."""
    return self.class_iterations or self.iterations

  def routing(self, xla=False, vote_moments=True, fused_votes=True,
              lambda_scale=1.0, e_step_annealing=1.0):
    """The `layers.Routing` of the ConvCaps layers; with `lambda_scale`, of
    a layer whose inverse temperature is scaled (the class capsules');
    `e_step_annealing` is the training's (nets/routing.py)."""
    return layers.Routing(
        inverse_temperature=schedules.inverse_temperature(
            self.inverse_temperature_schedule,
            lambda_scale * self.final_lambda),
        min_variance=self.min_variance,
        cost_standardization=self.cost_standardization,
        log_space=self.log_space, min_mass=self.min_mass, xla=xla,
        vote_moments=vote_moments, fused_votes=fused_votes,
        activation_cost=self.activation_cost,
        cost_scale=self.cost_scale, pose_damping=self.pose_damping,
        initial_assignments=self.initial_assignments,
        e_step_normalization=self.e_step_normalization,
        e_step_annealing=e_step_annealing,
        stop_assignment_gradients=self.stop_assignment_gradients)

  def largest_activation_gap(self):
    """The largest spread-loss margin the class capsules can meet
    (losses.largest_activation_gap at the class layer's last lambda)."""
    routing = self.routing(lambda_scale=self.class_lambda_scale)
    return losses.largest_activation_gap(
        self.num_classes,
        routing.inverse_temperature(self.class_layer_iterations - 1),
        self.cost_standardization)

  def build(self, images, xla=False, vote_moments=True, fused_votes=True,
            training=False, e_step_annealing=1.0):
    """The network on images [N, H, W, channels].

    Args:
      images: [N, H, W, channels].
      xla: compile the routing with XLA.
      vote_moments: first M-step of the ConvCaps layers without votes.
      fused_votes: M- and E-steps of the ConvCaps layers with votes
        recomputed in CPU kernels, never stored (nets/fused_votes.py).
      These change the speed, not the maths (notes/performance.md).
      training: the training graph (the baseline's dropout); the capsule
        network is the same either way.
      e_step_annealing: beta of every E-step, a float or a scalar tensor
        (nets/routing.py); 1, Procedure 1, except while training warms the
        routing up.

    Returns:
      poses [N, num_classes, 4, 4] and activations [N, num_classes]; for
      the cnn_baseline, None and the softmax probabilities.
    """
    if self.model == 'cnn_baseline':
      return None, tf.nn.softmax(self.logits(images, training))
    return capsules.capsules_v0(
        images, self.num_classes, self.iterations,
        self.routing(xla, vote_moments, fused_votes,
                     e_step_annealing=e_step_annealing),
        a=self.a, b=self.b, c=self.c, d=self.d,
        coordinate_addition=self.coordinate_addition,
        conv1_padding=self.conv1_padding,
        class_routing=self.routing(xla, vote_moments, fused_votes,
                                   self.class_lambda_scale, e_step_annealing),
        init=initializers.get(self.initialization),
        class_iterations=self.class_layer_iterations)

  def logits(self, images, training=False):
    """The cnn_baseline's class logits [N, num_classes] (its loss needs
    them; `build` gives their softmax)."""
    if self.model != 'cnn_baseline':
      raise ValueError(f'logits: model {self.model!r} has no logits')
    return cnn_baseline.cnn_baseline(
        images, self.num_classes, self.cnn_channels, self.cnn_hidden,
        training)

  def reconstruct(self, poses, classes, image_shape, training=False):
    """Images [N, H, W, channels] from the poses [N, J, 4, 4] of `classes`;
    `training`: the training graph (it updates the decoder's input
    statistics)."""
    return decoder.reconstruct(
        poses, classes, image_shape,
        standardize_input=self.decoder_standardization,
        update_statistics=training)

  def save(self, directory):
    """Writes the config to `directory`/model_config.json atomically."""
    runtime.write_json(os.path.join(directory, CONFIG_FILE),
                       dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def load(cls, directory):
    """Reads `directory`/model_config.json; a clear error if it is absent."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'{path} not found: {directory} holds no run of train.py (it '
          'writes this file when it starts).')
    with open(path) as f:
      values = json.load(f)
    name = values.get('initialization', cls.initialization)
    values['initialization'] = initializers.LEGACY_NAMES.get(name, name)
    return cls(**values)
