"""White-box gradient attacks on a trained network: FGSM and BIM.

FGSM, the fast gradient sign method (Goodfellow et al. 2015), moves every
pixel by epsilon in the direction of the sign of the loss gradient. BIM, the
basic iterative method (Kurakin et al. 2017), takes `iterations` smaller
steps of that kind, each followed by a projection onto the L-infinity ball
of radius epsilon around the image. Both clip to the pixel range [0, 1].

Untargeted, an attack raises the loss of the true label and is measured by
the accuracy left; targeted, it lowers the loss of a target class and is
measured by its success rate, the fraction of images classified as the
target (Hinton et al. 2018, section 6 and Figure 3). Both are taken over
all attacked images, correctly classified or not.

The loss differentiated. Hinton et al. do not say which loss they attack in
the capsule network. Here:
  cnn_baseline         its training loss, the softmax cross-entropy of its
                       logits;
  capsules, 'cross_entropy' (default)
                       the cross-entropy of the class activations normalised
                       to sum to 1, -log(a_y / sum_j a_j): the baseline's
                       loss with log a in place of the logits, so both
                       networks are attacked through the same form, and one
                       that is never flat, unlike the spread loss once its
                       margin is met;
  capsules, 'spread'   the spread loss at a fixed margin (default 0.9, the
                       end of the training schedule).

The gradient of the capsule network goes through every EM iteration; built
with fused votes, it goes through the fused kernels' own gradients (where
they cannot be compiled the layers store the votes, as in training).
"""

import numpy as np
import tensorflow as tf

from nets import losses

ATTACKS = ('fgsm', 'bim')
CAPSULE_LOSSES = ('cross_entropy', 'spread')
TARGET_RULES = ('next', 'random')
PIXEL_RANGE = (0.0, 1.0)
# Kurakin et al.'s BIM moves alpha = 1/255 per step for min(255 eps + 4,
# 1.25 x 255 eps) steps, at most 1.25 eps in all; without --bim_step_size the
# same total is spread over the iterations.
BIM_TOTAL_STEP = 1.25
# log(a) of the cross-entropy: activations below this count as this.
_MIN_ACTIVATION = 1e-30


def targets(labels, num_classes, rule='next', seed=0):
  """The target class of each image of a targeted attack.

  Args:
    labels: int [N].
    num_classes: J.
    rule: 'next', (label + 1) mod J; or 'random', uniform over the other
      J - 1 classes, drawn with `seed`.
    seed: of the random rule.

  Returns:
    int32 [N], never the label.
  """
  if rule not in TARGET_RULES:
    raise ValueError(f'rule must be one of {TARGET_RULES}, got {rule!r}')
  shift = (np.ones(len(labels), np.int64) if rule == 'next' else
           np.random.default_rng(seed).integers(1, num_classes, len(labels)))
  return ((labels + shift) % num_classes).astype(np.int32)


def attack_loss(config, images, labels, capsule_loss='cross_entropy',
                margin=0.9, fused_votes=True):
  """The network on `images` and the loss an attack differentiates.

  Args:
    config: the run's model.ModelConfig.
    images: float32 [N, H, W, C].
    labels: int32 [N], the true labels (untargeted) or the targets.
    capsule_loss: one of CAPSULE_LOSSES (capsule network only).
    margin: of the spread loss.
    fused_votes: build the capsule layers with the fused vote kernels.

  Returns:
    class activations [N, J] (the baseline's softmax probabilities) and
    the batch mean of the loss, a scalar.
  """
  if capsule_loss not in CAPSULE_LOSSES:
    raise ValueError(f'capsule_loss must be one of {CAPSULE_LOSSES}, got '
                     f'{capsule_loss!r}')
  if config.model == 'cnn_baseline':
    logits = config.logits(images)
    return tf.nn.softmax(logits), tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                       logits=logits))
  _, activations = config.build(images, fused_votes=fused_votes)
  if capsule_loss == 'spread':
    return activations, losses.spread_loss(labels, activations, margin)
  log_activations = tf.math.log(tf.maximum(activations, _MIN_ACTIVATION))
  return activations, tf.reduce_mean(
      tf.reduce_logsumexp(log_activations, axis=-1) -
      tf.gather(log_activations, labels, batch_dims=1))


class Network:
  """A run's network in its own graph and session, with the gradient of the
  attack's loss with respect to the images."""

  def __init__(self, config, image_shape, capsule_loss='cross_entropy',
               margin=0.9, fused_votes=True, session_config=None, seed=None):
    """Builds the graph (see attack_loss for the arguments); image_shape is
    [H, W, C]; seed, the graph seed of `initialize`'s random weights."""
    self._graph = tf.Graph()
    with self._graph.as_default():
      if seed is not None:
        tf.compat.v1.set_random_seed(seed)
      self._images = tf.compat.v1.placeholder(
          tf.float32, [None] + list(image_shape), name='images')
      self._labels = tf.compat.v1.placeholder(tf.int32, [None],
                                              name='labels')
      activations, loss = attack_loss(config, self._images, self._labels,
                                      capsule_loss, margin, fused_votes)
      self._predictions = tf.argmax(activations, -1, output_type=tf.int32)
      self._loss = loss
      self._gradient = tf.gradients(loss, self._images)[0]
      self._saver = tf.compat.v1.train.Saver()
      self._initializer = tf.compat.v1.global_variables_initializer()
    self._graph.finalize()
    self._session = tf.compat.v1.Session(graph=self._graph,
                                         config=session_config)

  def restore(self, checkpoint):
    """Loads the checkpoint's weights (extra variables are ignored)."""
    self._saver.restore(self._session, checkpoint)

  def initialize(self):
    """Fresh random weights instead of a checkpoint's (tests)."""
    self._session.run(self._initializer)

  def predict(self, images):
    """Predicted classes int32 [N] of float32 images [N, H, W, C]."""
    return self._session.run(self._predictions, {self._images: images})

  def loss(self, images, labels):
    """The batch mean of the attacked loss, a float."""
    return float(self._session.run(self._loss, {self._images: images,
                                                self._labels: labels}))

  def gradient(self, images, labels):
    """The gradient of the batch-mean loss [N, H, W, C]; image i's part is
    that of its own loss, divided by N."""
    return self._session.run(self._gradient, {self._images: images,
                                              self._labels: labels})

  def close(self):
    self._session.close()

  def __enter__(self):
    return self

  def __exit__(self, *exception):
    self.close()


def fgsm(images, gradient, epsilon, targeted):
  """One signed step of size epsilon, clipped to the pixel range.

  Args:
    images: float32 [N, H, W, C] in [0, 1].
    gradient: of the loss at `images`, same shape.
    epsilon: L-infinity size of the perturbation.
    targeted: descend the loss (of the targets) instead of ascending it.

  Returns:
    float32 [N, H, W, C].
  """
  direction = -1.0 if targeted else 1.0
  step = np.float32(direction * epsilon) * np.sign(gradient)
  return np.clip(images + step, *PIXEL_RANGE).astype(np.float32)


def bim(images, labels, gradient_fn, epsilon, iterations, step_size,
        targeted):
  """Iterated FGSM, projected onto the epsilon ball around `images`.

  Args:
    images: float32 [N, H, W, C] in [0, 1].
    labels: int32 [N], the labels (untargeted) or the targets.
    gradient_fn: (images, labels) -> the loss gradient at images.
    epsilon: radius of the L-infinity ball.
    iterations: steps.
    step_size: L-infinity size of each step.
    targeted: as fgsm.

  Returns:
    float32 [N, H, W, C].
  """
  adversarial = images.copy()
  if epsilon == 0:
    return adversarial
  low = np.maximum(images - np.float32(epsilon), PIXEL_RANGE[0])
  high = np.minimum(images + np.float32(epsilon), PIXEL_RANGE[1])
  for _ in range(iterations):
    stepped = fgsm(adversarial, gradient_fn(adversarial, labels), step_size,
                   targeted)
    adversarial = np.clip(stepped, low, high)
  return adversarial


def bim_step_size(epsilon, iterations, step_size=None):
  """step_size, or Kurakin et al.'s total of 1.25 epsilon over the steps."""
  return step_size if step_size else BIM_TOTAL_STEP * epsilon / iterations


def evaluate(network, images, labels, target_labels, epsilons,
             attacks=ATTACKS, bim_iterations=10, step_size=None,
             batch_size=100):
  """Every attack, untargeted and targeted, at every epsilon.

  Args:
    network: a Network, restored.
    images: float32 [N, H, W, C] in [0, 1].
    labels: int32 [N].
    target_labels: int32 [N], the targets of the targeted attacks.
    epsilons: floats >= 0.
    attacks: some of ATTACKS.
    bim_iterations: BIM's steps.
    step_size: BIM's step; None for bim_step_size's default.
    batch_size: images per pass.

  Returns:
    {'clean_accuracy': float,
     '<attack>_untargeted': [{'epsilon', 'accuracy', 'max_perturbation'}],
     '<attack>_targeted': [{'epsilon', 'accuracy', 'success_rate',
                            'max_perturbation'}]},
    one entry per epsilon, in order; max_perturbation is the largest
    |adversarial - image| seen.
  """
  counts = {}  # (name, epsilon index) -> [correct, on target, max change]
  clean = 0
  for start in range(0, len(labels), batch_size):
    batch = slice(start, start + batch_size)
    clean += int(np.sum(network.predict(images[batch]) == labels[batch]))
    for name, adversarial, index in _attacked(
        network, images[batch], labels[batch], target_labels[batch],
        epsilons, attacks, bim_iterations, step_size):
      predictions = network.predict(adversarial)
      entry = counts.setdefault((name, index), [0, 0, 0.0])
      entry[0] += int(np.sum(predictions == labels[batch]))
      entry[1] += int(np.sum(predictions == target_labels[batch]))
      entry[2] = max(entry[2], float(np.max(np.abs(adversarial -
                                                   images[batch]))))
  results = {'clean_accuracy': clean / len(labels)}
  for (name, index), (correct, on_target, change) in sorted(counts.items()):
    record = {'epsilon': float(epsilons[index]),
              'accuracy': correct / len(labels), 'max_perturbation': change}
    if name.endswith('_targeted'):
      record['success_rate'] = on_target / len(labels)
    results.setdefault(name, []).append(record)
  return results


def _attacked(network, images, labels, target_labels, epsilons, attacks,
              bim_iterations, step_size):
  """Yields (attack name, adversarial batch, epsilon index) for one batch;
  FGSM reuses one gradient for every epsilon."""
  for targeted in (False, True):
    goal = target_labels if targeted else labels
    name = 'targeted' if targeted else 'untargeted'
    if 'fgsm' in attacks:
      gradient = network.gradient(images, goal)
      for index, epsilon in enumerate(epsilons):
        yield (f'fgsm_{name}', fgsm(images, gradient, epsilon, targeted),
               index)
    if 'bim' in attacks:
      for index, epsilon in enumerate(epsilons):
        yield (f'bim_{name}', bim(
            images, goal, network.gradient, epsilon, bim_iterations,
            bim_step_size(epsilon, bim_iterations, step_size), targeted),
               index)
