"""Data-parallel training on several devices and machines with TensorFlow's
own MirroredStrategy and MultiWorkerMirroredStrategy: this project's
counterpart of slim's deployment/model_deploy.py. train.py stays flags and
glue.

One replica of the training graph runs on each device, on an even share of
the global batch; the replicas' gradients are summed by an all-reduce, so
every replica applies the same update to its mirror of the variables, and
training is synchronous. The variables keep the names of single-device
training, so checkpoints, tests.py, resume and the diagnostic tools read
them unchanged, on any number of devices.

With one device no strategy is built at all: the graph is today's.

Several machines: every worker runs train.py with the same flags and the
standard TF_CONFIG environment variable naming the cluster and its own
index; worker 0 is the chief, which writes checkpoints, summaries and
starts.jsonl into the shared --train_dir. Every worker runs exactly the
same collective operations in each step, so nothing that only the chief
fetches may be reduced over the workers (`TrainStep.summaries`), and a
`Watchdog` ends a worker whose peers stopped answering instead of letting
it wait for ever (notes/distribution.md).

On a machine without GPUs, `cpu_replicas` splits the CPU into that many
logical devices (`device_count` in the session config) and mirrors over
them. That is how CI exercises the multi-device path; on a 2-core CPU it is
an overhead check, not a speed-up (notes/distribution.md).
"""

import dataclasses
import faulthandler
import json
import os
import threading
import time

from absl import logging
import tensorflow as tf

# What the chief's hooks read of the global step: a plain read, cached where
# training_util looks, so that reading it runs no collective operation.
_GLOBAL_STEP_READ_KEY = 'global_step_read_op_cache'


@dataclasses.dataclass(frozen=True)
class Deployment:
  """Where the replicas of the training graph run.

  Attributes:
    devices: one device name per replica on this machine, e.g. ('/gpu:0',
      '/gpu:1'); a single device on a single machine means no strategy.
    cpu_replicas: logical CPU devices the session must create (1 = the
      usual one).
    workers: 'host:port' of every worker of a multi-worker cluster
      (TF_CONFIG), or () on one machine.
    task_index: this worker's index in `workers`; 0 is the chief.
  """
  devices: tuple = ('/cpu:0',)
  cpu_replicas: int = 1
  workers: tuple = ()
  task_index: int = 0

  @property
  def multi_worker(self):
    return len(self.workers) > 1

  @property
  def is_chief(self):
    return self.task_index == 0

  @property
  def num_replicas(self):
    return len(self.devices) * max(1, len(self.workers))

  def describe(self):
    """E.g. '/cpu:0, /cpu:1' or 'worker 1 of 2 (/cpu:0)'."""
    devices = ', '.join(self.devices)
    if not self.multi_worker:
      return devices
    return f'worker {self.task_index} of {len(self.workers)} ({devices})'


def _cluster(tf_config):
  """(workers, task index) from a TF_CONFIG string; ((), 0) if None."""
  if not tf_config:
    return (), 0
  try:
    parsed = json.loads(tf_config)
    workers = tuple(parsed['cluster']['worker'])
    task = parsed['task']
    task_type, task_index = task['type'], int(task['index'])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'TF_CONFIG is not a cluster and task: {e!r}; e.g. '
                     '{"cluster": {"worker": ["host0:port", "host1:port"]}, '
                     '"task": {"type": "worker", "index": 0}}') from e
  jobs = set(parsed['cluster']) - {'worker'}
  if jobs or task_type != 'worker':
    raise ValueError(f'TF_CONFIG: only "worker" jobs are used (worker 0 is '
                     f'the chief); got jobs {sorted(parsed["cluster"])} and '
                     f'task type {task_type!r}')
  if not 0 <= task_index < len(workers):
    raise ValueError(f'TF_CONFIG: task index {task_index} is not one of the '
                     f'{len(workers)} workers')
  return workers, task_index


def from_flags(gpu, cpu_replicas, num_gpus=None, tf_config=None):
  """The deployment that --gpu, --cpu_replicas and TF_CONFIG ask for.

  Args:
    gpu: the --gpu value, comma-separated GPU indices (visible_device_list,
      which TensorFlow renumbers from 0).
    cpu_replicas: --cpu_replicas; > 1 mirrors over logical CPU devices.
    num_gpus: GPUs TensorFlow can see, or None to ask it.
    tf_config: the TF_CONFIG value, or None to read the environment.

  Returns:
    a Deployment.

  Raises:
    ValueError: on a bad flag or TF_CONFIG.
  """
  if cpu_replicas < 1:
    raise ValueError(f'--cpu_replicas must be >= 1, got {cpu_replicas}')
  if tf_config is None:
    tf_config = os.environ.get('TF_CONFIG')
  workers, task_index = _cluster(tf_config)
  if cpu_replicas > 1:
    if len(workers) > 1:
      raise ValueError('--cpu_replicas cannot be combined with a '
                       'multi-worker TF_CONFIG')
    return Deployment(tuple(f'/cpu:{i}' for i in range(cpu_replicas)),
                      cpu_replicas)
  if num_gpus is None:
    num_gpus = len(tf.config.list_physical_devices('GPU'))
  if len(workers) > 1:
    # MultiWorkerMirroredStrategy mirrors over every GPU the worker sees.
    gpus = tuple(f'/gpu:{i}' for i in range(num_gpus))
    return Deployment(gpus or ('/cpu:0',), 1, workers, task_index)
  wanted = len(gpu.split(','))
  if wanted > 1 and num_gpus < wanted:
    logging.warning('--gpu=%s asks for %d GPUs but %d are visible; training '
                    'on one device.', gpu, wanted, num_gpus)
  elif wanted > 1:
    return Deployment(tuple(f'/gpu:{i}' for i in range(wanted)))
  return Deployment(('/gpu:0',) if num_gpus else ('/cpu:0',))


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


def make_strategy(deployment):
  """The distribution strategy of the deployment; None on one device."""
  if deployment.multi_worker:
    return tf.compat.v1.distribute.experimental.MultiWorkerMirroredStrategy()
  if deployment.num_replicas > 1:
    return tf.compat.v1.distribute.MirroredStrategy(list(deployment.devices))
  return None


def start_server(deployment, strategy, config):
  """Starts this worker's server in a multi-worker cluster.

  Graph-mode MultiWorkerMirroredStrategy starts none itself.

  Returns:
    (master, config): the session target ('' on one machine) and the
    session config, completed with the cluster's collective settings.
  """
  if not deployment.multi_worker:
    return '', config
  config = strategy.update_config_proto(config)
  server = tf.distribute.Server(
      tf.train.ClusterSpec({'worker': list(deployment.workers)}),
      job_name='worker', task_index=deployment.task_index, config=config,
      protocol='grpc')
  return server.target, config


@dataclasses.dataclass
class TrainStep:
  """The training step over every replica.

  Attributes:
    outputs: scalar tensors averaged over all replicas and 'train_op',
      which runs one step on every replica; every worker must fetch the
      same of them in each session.run.
    summaries: the same scalars for the chief's summaries: the averages on
      one machine; on several, this worker's first replica's, since a value
      averaged over the workers would make the chief alone run a collective.
    global_step: the global step, read without collective operations.
    local_init_op: to run once when the session starts, or None.
  """
  outputs: dict
  summaries: dict
  global_step: tf.Tensor
  local_init_op: object = None


def build(deployment, strategy, dataset, replica_step):
  """The training step over every replica.

  Args:
    deployment: a Deployment.
    strategy: make_strategy(deployment).
    dataset: a tf.data.Dataset of global batches (images, labels).
    replica_step: a function (images, labels, num_replicas) -> dict with a
      'train_op' and scalar tensors, run once on each replica's share of
      the batch. It must divide the loss it differentiates by num_replicas
      and leave the summing of gradients to the optimizer (see
      training.build).

  Returns:
    a TrainStep.
  """
  if strategy is None:
    images, labels = tf.compat.v1.data.make_one_shot_iterator(
        dataset).get_next()
    outputs = replica_step(images, labels, 1)
    return TrainStep(outputs, outputs,
                     tf.compat.v1.train.get_or_create_global_step())
  with strategy.scope():
    global_step = tf.compat.v1.train.get_or_create_global_step()
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
  summaries = outputs
  if deployment.multi_worker:
    summaries = {name: strategy.experimental_local_results(value)[0]
                 for name, value in per_replica.items()}
  read = global_step.read_value()
  tf.compat.v1.add_to_collection(_GLOBAL_STEP_READ_KEY, read)
  return TrainStep(outputs, summaries, read, iterator.initializer)


class Watchdog(tf.compat.v1.train.SessionRunHook):
  """Ends the process when no step finishes within `timeout_secs`.

  In multi-worker training a worker whose peer died waits in the step's
  all-reduce for ever, and so would its session's close. The watchdog logs
  `message` and every thread's stack, then exits with status 3; the last
  checkpoint is intact and the run resumes from it. Creating the session
  (joining the other workers, restoring the checkpoint) and the first
  step, which are slower than a step, get `startup_secs` instead.

  Args:
    timeout_secs: int, the longest a step may take.
    message: str, logged after the time that ran out.
    startup_secs: int or None, the same for start-up and the first step;
      raised to `timeout_secs` if below it.
  """

  def __init__(self, timeout_secs, message, startup_secs=None):
    self._timeout_secs = timeout_secs
    self._startup_secs = max(timeout_secs, startup_secs or 0)
    self._message = message
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._arm(self._startup_secs, stepped=False)

  def _arm(self, allowed, stepped):
    """Allows `allowed` seconds from now. The state (deadline, seconds
    allowed, whether a step finished) is replaced whole, so that the
    watching thread never reads half of an update."""
    self._state = (time.monotonic() + allowed, allowed, stepped)

  def start(self):
    """Starts watching; start-up and the first step get `startup_secs`."""
    self._arm(self._startup_secs, stepped=False)
    self._thread.start()

  def stop(self):
    self._done.set()

  def after_run(self, run_context, run_values):
    self._arm(self._timeout_secs, stepped=True)

  def overdue(self, now):
    """The message to log if at `now` (time.monotonic()) the current step
    or the start-up is late, else None."""
    deadline, allowed, stepped = self._state
    if now <= deadline:
      return None
    waited = 'no training step finished' if stepped else (
        'start-up and the first step did not finish')
    return f'{waited.capitalize()} in {allowed} s: {self._message}'

  def _watch(self):
    while not self._done.wait(1.0):
      late = self.overdue(time.monotonic())
      if late:
        logging.error('%s', late)
        logging.flush()
        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)  # pylint: disable=protected-access
