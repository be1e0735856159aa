"""Data-parallel training on several devices with TensorFlow's own
MirroredStrategy: this project's counterpart of slim's
deployment/model_deploy.py. train.py stays flags and glue.

One replica of the training graph runs on each device, on an even share of
the global batch; the replicas' gradients are summed by an all-reduce, so
every replica applies the same update to its mirror of the variables, and
training is synchronous. The variables keep the names of single-device
training, so checkpoints, tests.py, resume and the diagnostic tools read
them unchanged, on any number of devices.

With one device no strategy is built at all: the graph is today's.

On a machine without GPUs, `cpu_replicas` splits the CPU into that many
logical devices (`device_count` in the session config) and mirrors over
them. That is how CI exercises the multi-device path; on a 2-core CPU it is
an overhead check, not a speed-up (notes/distribution.md).
"""

import dataclasses

from absl import logging
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Deployment:
  """Where the replicas of the training graph run.

  Attributes:
    devices: one device name per replica, e.g. ('/gpu:0', '/gpu:1'); a
      single device means no strategy.
    cpu_replicas: logical CPU devices the session must create (1 = the
      usual one).
  """
  devices: tuple = ('/cpu:0',)
  cpu_replicas: int = 1

  @property
  def num_replicas(self):
    return len(self.devices)


def from_flags(gpu, cpu_replicas, num_gpus=None):
  """The deployment that --gpu and --cpu_replicas ask for.

  Args:
    gpu: the --gpu value, comma-separated GPU indices (visible_device_list,
      which TensorFlow renumbers from 0).
    cpu_replicas: --cpu_replicas; > 1 mirrors over logical CPU devices.
    num_gpus: GPUs TensorFlow can see, or None to ask it.

  Returns:
    a Deployment.
  """
  if cpu_replicas < 1:
    raise ValueError(f'--cpu_replicas must be >= 1, got {cpu_replicas}')
  if cpu_replicas > 1:
    return Deployment(tuple(f'/cpu:{i}' for i in range(cpu_replicas)),
                      cpu_replicas)
  wanted = len(gpu.split(','))
  if num_gpus is None:
    num_gpus = len(tf.config.list_physical_devices('GPU'))
  if wanted > 1 and num_gpus < wanted:
    logging.warning('--gpu=%s asks for %d GPUs but %d are visible; training '
                    'on one device.', gpu, wanted, num_gpus)
    return Deployment()
  if wanted > 1:
    return Deployment(tuple(f'/gpu:{i}' for i in range(wanted)))
  return Deployment()


def check_batch_size(deployment, batch_size):
  """The global batch must split evenly over the replicas."""
  if batch_size % deployment.num_replicas:
    raise ValueError(
        f'--batch_size={batch_size} does not split evenly over '
        f'{deployment.num_replicas} replicas; use a multiple of '
        f'{deployment.num_replicas}.')


def session_config(deployment, config):
  """`config` with the logical CPU devices the deployment needs. An explicit
  session config overrides TensorFlow's device settings, so it must carry
  them itself."""
  if deployment.cpu_replicas > 1:
    config.device_count['CPU'] = deployment.cpu_replicas
  return config


def build(deployment, dataset, replica_step):
  """The training step over every replica.

  Args:
    deployment: a Deployment.
    dataset: a tf.data.Dataset of global batches (images, labels).
    replica_step: a function (images, labels, num_replicas) -> dict with a
      'train_op' and scalar tensors, run once on each replica's share of
      the batch. It must divide the loss it differentiates by num_replicas
      and leave the summing of gradients to the optimizer (see
      training.build).

  Returns:
    (outputs, local_init_op): the scalars, averaged over the replicas, and
    'train_op', which runs one step on every replica; and an op the session
    must run once to start the input (None with one device).
  """
  if deployment.num_replicas == 1:
    images, labels = tf.compat.v1.data.make_one_shot_iterator(
        dataset).get_next()
    return replica_step(images, labels, 1), None
  strategy = tf.compat.v1.distribute.MirroredStrategy(list(deployment.devices))
  with strategy.scope():
    tf.compat.v1.train.get_or_create_global_step()
    iterator = strategy.make_dataset_iterator(dataset)

    def step(inputs):
      outputs = dict(replica_step(*inputs, strategy.num_replicas_in_sync))
      train_op = outputs.pop('train_op')
      with tf.control_dependencies([train_op]):
        return {name: tf.identity(value) for name, value in outputs.items()}

    per_replica = strategy.experimental_run(step, iterator)
    outputs = {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value,
                                     axis=None)
               for name, value in per_replica.items()}
    outputs['train_op'] = tf.group(*outputs.values())
    return outputs, iterator.initializer
