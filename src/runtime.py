"""What train.py, tests.py and benchmark.py share: the session's devices and
threads, and where the data lives."""

import json
import os
import re

from absl import app
from absl import flags
import tensorflow as tf

from tensorflow.core.protobuf import rewriter_config_pb2

DATA_ROOT = 'data'
# Datasets made from another's files, which they share.
_MADE_FROM = {'mnist40': 'mnist'}


def session_config(gpu, intra_op_threads=0, inter_op_threads=0,
                   memory_optimizer=False):
  """A ConfigProto that shows TensorFlow only the GPUs in `gpu`.

  Args:
    gpu: comma-separated GPU indices, e.g. '0' or '0,1', set as
      `visible_device_list`. With `allow_soft_placement` the graph runs on
      the CPU when there is no GPU.
    intra_op_threads, inter_op_threads: thread pools (0 = TensorFlow picks).
    memory_optimizer: keep grappler's memory optimiser, which sums the
      gradients of the vote tensor (used by every routing iteration) in
      place through temporary variables: slower here at 2-3 iterations for
      no lower peak (notes/performance.md).

  Returns:
    tf.compat.v1.ConfigProto.
  """
  if not re.fullmatch(r'\d+(,\d+)*', gpu):
    raise ValueError(f'--gpu must be comma-separated GPU indices such as 0 or '
                     f'0,1; got {gpu!r}')
  config = tf.compat.v1.ConfigProto(
      allow_soft_placement=True,
      gpu_options=tf.compat.v1.GPUOptions(visible_device_list=gpu,
                                          allow_growth=True),
      intra_op_parallelism_threads=intra_op_threads,
      inter_op_parallelism_threads=inter_op_threads)
  if not memory_optimizer:
    config.graph_options.rewrite_options.memory_optimization = (
        rewriter_config_pb2.RewriterConfig.NO_MEM_OPT)
  return config


def checked_session_config(values):
  """Checks the flags that train.py and tests.py share and returns the
  session config they describe.

  Args:
    values: the parsed flags, with data_dir, gpu, intra_op_threads and
      inter_op_threads.

  Returns:
    tf.compat.v1.ConfigProto.

  Raises:
    app.UsageError: --data_dir is not a directory, or --gpu is malformed.
  """
  if values.data_dir and not os.path.isdir(values.data_dir):
    raise app.UsageError(f'--data_dir {values.data_dir} is not a directory')
  try:
    return session_config(values.gpu, values.intra_op_threads,
                          values.inter_op_threads)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def write_json(path, record, **options):
  """Writes `record` as JSON to `path` through a temporary file, renamed into
  place, so that a reader never sees half a file. `options` go to
  json.dump."""
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, **options)
  os.replace(path + '.tmp', path)


def checkpoint_path(train_dir, step=None):
  """The checkpoint of `step` in train_dir, or the latest.

  Raises:
    app.UsageError: there is no such checkpoint.
  """
  if step is None:
    path = tf.train.latest_checkpoint(train_dir)
    if path is None:
      raise app.UsageError(f'no checkpoint in {train_dir}')
    return path
  path = os.path.join(train_dir, f'model.ckpt-{step}')
  if not os.path.exists(path + '.index'):
    raise app.UsageError(f'no checkpoint of step {step} in {train_dir}')
  return path


def define_checkpoint_flags():
  """The flags of the scripts that read a run's checkpoint and test images
  (pose_stats.py, diagnose.py)."""
  flags.DEFINE_string('train_dir', 'runs/default', 'Directory of the run.')
  flags.DEFINE_integer('step', None, 'Checkpoint step; default the latest.')
  flags.DEFINE_integer('num_images', 1000, 'First test images to use.')
  flags.DEFINE_integer('batch_size', 100, 'Images per forward pass.')
  flags.DEFINE_string('data_dir', None, 'Dataset directory; default '
                      'data/<dataset>.')
  flags.DEFINE_string('gpu', '1', 'GPUs to use (visible_device_list).')
  flags.DEFINE_integer('intra_op_threads', 0, 'Intra-op threads (0 = auto).')
  flags.DEFINE_integer('inter_op_threads', 0, 'Inter-op threads (0 = auto).')


def checked_checkpoint_flags(values, load_config):
  """Checks the flags of define_checkpoint_flags.

  Args:
    values: the parsed flags.
    load_config: model.ModelConfig.load.

  Returns:
    (session config, the run's model config, the checkpoint's path).

  Raises:
    app.UsageError: a flag is invalid, the run or checkpoint is missing, or
      the run is not of the capsule network (both scripts examine its
      capsules).
  """
  for name in ('num_images', 'batch_size'):
    if values[name].value < 1:
      raise app.UsageError(f'--{name} must be >= 1, got {values[name].value}')
  session_config = checked_session_config(values)
  try:
    config = load_config(values.train_dir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from e
  if config.model != 'capsules':
    raise app.UsageError(f'{values.train_dir} holds a {config.model} run, '
                         'which has no capsules to examine.')
  return session_config, config, checkpoint_path(values.train_dir,
                                                 values.step)


def define_network_flags():
  """Defines --A, --B, --C, --D: the sizes of capsules_v0's four layers."""
  flags.DEFINE_integer('A', 32, 'ReLU Conv1 channels.')
  flags.DEFINE_integer('B', 32, 'PrimaryCaps capsule types.')
  flags.DEFINE_integer('C', 32, 'ConvCaps1 capsule types.')
  flags.DEFINE_integer('D', 32, 'ConvCaps2 capsule types.')


def check_network_flags(values):
  """Raises app.UsageError unless --A, --B, --C and --D are >= 1."""
  for name in ('A', 'B', 'C', 'D'):
    if values[name].value < 1:
      raise app.UsageError(f'--{name} must be >= 1, got {values[name].value}')


def data_dir(flag_value, dataset):
  """The data directory: the flag if given, else data/<dataset>, or the
  directory of the files the dataset is made from (mnist40: data/mnist)."""
  return flag_value or os.path.join(DATA_ROOT,
                                    _MADE_FROM.get(dataset, dataset))
