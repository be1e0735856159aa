"""What train.py, tests.py and benchmark.py share: the session's devices and
threads, and where the data lives."""

import os
import re

import tensorflow as tf

DATA_ROOT = 'data'


def session_config(gpu, intra_op_threads=0, inter_op_threads=0):
  """A ConfigProto that shows TensorFlow only the GPUs in `gpu`.

  Args:
    gpu: comma-separated GPU indices, e.g. '0' or '0,1', set as
      `visible_device_list`. With `allow_soft_placement` the graph runs on
      the CPU when there is no GPU.
    intra_op_threads, inter_op_threads: thread pools (0 = TensorFlow picks).

  Returns:
    tf.compat.v1.ConfigProto.
  """
  if not re.fullmatch(r'\d+(,\d+)*', gpu):
    raise ValueError(f'--gpu must be comma-separated GPU indices such as 0 or '
                     f'0,1; got {gpu!r}')
  return tf.compat.v1.ConfigProto(
      allow_soft_placement=True,
      gpu_options=tf.compat.v1.GPUOptions(visible_device_list=gpu,
                                          allow_growth=True),
      intra_op_parallelism_threads=intra_op_threads,
      inter_op_parallelism_threads=inter_op_threads)


def data_dir(flag_value, dataset):
  """The data directory: the flag if given, else data/<dataset>."""
  return flag_value or os.path.join(DATA_ROOT, dataset)
