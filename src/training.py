"""The training graph, shared by train.py and benchmark.py: spread loss with
its margin schedule (the capsule network) or softmax cross-entropy (the
cnn_baseline), optional reconstruction loss (capsules only) and weight
decay, Adam with optional exponential learning-rate decay and gradient-norm
clipping."""

import dataclasses

import tensorflow as tf

from nets import losses
from nets import schedules


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings (train.py's flags of the same names)."""
  learning_rate: float = 1e-3
  learning_rate_decay_rate: float = 1.0
  learning_rate_decay_steps: int = 20000
  weight_decay: float = 0.0
  clip_gradient_norm: float = 5.0
  margin_schedule: str = 'linear'
  margin_start: float = 0.2
  margin_end: float = 0.9
  margin_ramp_steps: int = 5000
  routing_warmup_steps: int = 0


def e_step_annealing(config, global_step):
  """beta of the E-steps (nets/routing.py): 1, Procedure 1, or with
  `routing_warmup_steps` = W, min(1, step / W): deterministic annealing
  (Ueda & Nakano 1998) from the uniform assignments up to EM's."""
  if config.routing_warmup_steps <= 0:
    return 1.0
  return tf.minimum(1.0, tf.cast(global_step, tf.float32) /
                    config.routing_warmup_steps)


def learning_rate(config, global_step):
  """Adam's learning rate: constant, or decayed by a factor every N steps."""
  if config.learning_rate_decay_rate == 1.0:
    return tf.constant(config.learning_rate)
  return tf.compat.v1.train.exponential_decay(
      config.learning_rate, global_step, config.learning_rate_decay_steps,
      config.learning_rate_decay_rate)


def _weight_decay_loss(weight_decay):
  """weight_decay * sum of w^2 / 2 over convolution weights and transforms."""
  weights = [v for v in tf.compat.v1.trainable_variables()
             if v.op.name.endswith(('weights', 'transforms'))]
  return weight_decay * tf.add_n([tf.nn.l2_loss(w) for w in weights])


def build(images, labels, model_config, train_config, xla=False,
          vote_moments=True, fused_votes=True, network=None, num_replicas=1):
  """Network, loss and train op on one batch, or on one replica's share.

  Args:
    images: [N, H, W, channels].
    labels: int32 [N].
    model_config: a model.ModelConfig.
    train_config: a TrainConfig.
    xla: compile the routing with XLA.
    vote_moments: first M-step of the ConvCaps layers without votes.
    fused_votes: the routing of the ConvCaps layers with votes recomputed
      in CPU kernels, never stored.
    network: None, or a function images -> (poses, activations) that
      replaces model_config.build (benchmark.py's naive reference).
    num_replicas: replicas of this graph under a MirroredStrategy
      (deployment.py), each on an equal share of the batch. Their gradients
      are summed over the replicas before clipping, so the update is the
      one a single device would make on the whole batch.

  Returns:
    dict of scalar tensors (loss, learning_rate, gradient_norm,
    train_accuracy, global_step; margin for the capsule network,
    e_step_annealing while it warms the routing up, and
    reconstruction_loss when it reconstructs), class activations
    [N, classes] (the cnn_baseline's softmax probabilities) under
    'activations' and the train op under 'train_op'.
  """
  global_step = tf.compat.v1.train.get_or_create_global_step()
  scalars = {}
  if network is None and model_config.model == 'cnn_baseline':
    logits = model_config.logits(images, training=True)
    activations = tf.nn.softmax(logits)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits))
  else:
    if network is None:
      annealing = e_step_annealing(train_config, global_step)
      if train_config.routing_warmup_steps > 0:
        scalars['e_step_annealing'] = annealing
      poses, activations = model_config.build(
          images, xla, vote_moments, fused_votes, training=True,
          e_step_annealing=annealing)
    else:
      poses, activations = network(images)
    scalars['margin'] = schedules.margin(
        global_step, train_config.margin_schedule, train_config.margin_start,
        train_config.margin_end, train_config.margin_ramp_steps)
    loss = losses.spread_loss(labels, activations, scalars['margin'])
  if model_config.reconstruction_weight > 0:
    reconstructions = model_config.reconstruct(poses, labels,
                                               images.shape[1:], training=True)
    scalars['reconstruction_loss'] = losses.reconstruction_loss(
        images, reconstructions)
    loss += model_config.reconstruction_weight * scalars[
        'reconstruction_loss']
  if train_config.weight_decay > 0:
    loss += _weight_decay_loss(train_config.weight_decay)
  rate = learning_rate(train_config, global_step)
  optimizer = tf.compat.v1.train.AdamOptimizer(rate)
  gradients, variables = zip(*optimizer.compute_gradients(loss /
                                                          num_replicas))
  if num_replicas > 1:
    gradients = _sum_over_replicas(gradients)
  gradient_norm = tf.linalg.global_norm(gradients)
  if train_config.clip_gradient_norm > 0:
    gradients, _ = tf.clip_by_global_norm(
        gradients, train_config.clip_gradient_norm, use_norm=gradient_norm)
  # The optimizer sums what the replicas apply: each applies 1/num_replicas.
  train_op = optimizer.apply_gradients(
      [(g / num_replicas, v) for g, v in zip(gradients, variables)],
      global_step)
  accuracy = tf.reduce_mean(tf.cast(
      tf.equal(tf.argmax(activations, -1, output_type=tf.int32), labels),
      tf.float32))
  scalars.update(loss=loss, learning_rate=rate, gradient_norm=gradient_norm,
                 train_accuracy=accuracy)
  return dict(scalars, global_step=global_step, activations=activations,
              train_op=train_op)


def _sum_over_replicas(gradients):
  """The gradient of the whole batch's mean loss, on every replica.

  An all-reduce through merge_call: ReplicaContext.all_reduce is itself
  differentiable, and its custom gradient looks the replicas' variables up
  by names that MirroredStrategy does not register in graph mode.
  """
  def all_reduce(strategy, per_replica):
    return strategy.extended.batch_reduce_to(
        tf.distribute.ReduceOp.SUM, [(g, g) for g in per_replica])

  return tf.distribute.get_replica_context().merge_call(
      all_reduce, args=(list(gradients),))


SUMMARIES = ('loss', 'reconstruction_loss', 'margin', 'e_step_annealing',
             'learning_rate', 'gradient_norm', 'train_accuracy')


def add_summaries(outputs):
  """Scalar summaries of build's outputs (after averaging over replicas)."""
  for name in SUMMARIES:
    if name in outputs:
      tf.compat.v1.summary.scalar(name, outputs[name])
