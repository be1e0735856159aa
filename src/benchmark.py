"""Speed and memory of the training graph of capsules_v0, beside a naive
implementation of the same network, one JSON line per measurement.

  python src/benchmark.py                         # the README's table
  python src/benchmark.py --configs=3x24 --steps=20 --nofused_votes

Each configuration "ITERATIONSxBATCH" runs in its own process, so that its
peak resident memory is its own: it builds the real training graph
(training.build: network, spread loss, Adam, clipping) on random
MNIST-shaped inputs held on the device, runs --warmup steps, times --steps
training steps and --steps inference batches, and prints images per second,
milliseconds per step and the process's peak resident memory. With --naive,
every configuration of at most --naive_max_batch images is then measured
again, in its own process, on `naive.capsules_v0_naive` (the same network
and variables, built the naive way), and the first record gains the
speed-ups. Every record names the CPU and the instruction set oneDNN uses.
"""

import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import model
import naive
import runtime
import training

FLAGS = flags.FLAGS

flags.DEFINE_list('configs', ['1x24', '2x24', '3x24', '3x64', '1x96'],
                  'Configurations ITERATIONSxBATCH_SIZE to measure.')
flags.DEFINE_integer('steps', 10, 'Timed steps per configuration.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps first (XLA compiles here).')
flags.DEFINE_bool('naive', True, 'Also measure the naive implementation, in '
                  'the same run, and report the speed-ups.')
flags.DEFINE_integer('naive_max_batch', 24, 'Measure the naive implementation '
                     'only up to this batch size (its memory grows fast).')
runtime.define_network_flags()
flags.DEFINE_enum('conv1_padding', model.default_conv1_padding('mnist'),
                  list(model.PADDINGS), 'ReLU Conv1 padding (MNIST default).')
flags.DEFINE_bool('xla', False, 'Compile the routing with XLA.')
flags.DEFINE_bool('vote_moments', True, 'First M-step of the ConvCaps '
                  'layers from poses and transforms, when votes are stored.')
flags.DEFINE_bool('fused_votes', True, 'ConvCaps routing with votes '
                  'recomputed in CPU kernels, never stored.')
flags.DEFINE_bool('memory_optimizer', False,
                  "Keep grappler's memory optimiser.")
flags.DEFINE_integer('intra_op_threads', 0, 'Intra-op threads (0 = auto).')
flags.DEFINE_integer('inter_op_threads', 0, 'Inter-op threads (0 = auto).')
flags.DEFINE_string('run_one', None, 'Internal: measure one configuration '
                    'in this process.')
flags.DEFINE_bool('run_naive', False, 'Internal: measure the naive network.')

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
_CONFIG_PATTERN = re.compile(r'(\d+)x(\d+)')


def _parse(config):
  match = _CONFIG_PATTERN.fullmatch(config.strip().lower())
  if not match:
    raise app.UsageError(f'bad configuration {config!r}; expected '
                         'ITERATIONSxBATCH_SIZE such as 3x24')
  iterations, batch_size = int(match.group(1)), int(match.group(2))
  if iterations < 1 or batch_size < 1:
    raise app.UsageError(f'bad configuration {config!r}: values must be >= 1')
  return iterations, batch_size


def cpu_model():
  """The CPU's model name, as the kernel reports it."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def onednn_isa():
  """The instruction set oneDNN dispatches to, from its verbose log."""
  probe = ('import tensorflow as tf; x = tf.ones([8, 8]); '
           'tf.linalg.matmul(x, x).numpy()')
  result = subprocess.run(
      [sys.executable, '-c', probe], capture_output=True, text=True,
      check=False, env=dict(os.environ, ONEDNN_VERBOSE='1'), timeout=300)
  match = re.search(r'onednn_verbose,(?:v1,)?info,cpu,isa:([^\n]+)',
                    result.stdout + result.stderr)
  return match.group(1).strip() if match else 'unknown (oneDNN silent)'


def _time(session, op, warmup, steps):
  """Seconds per run of `op`, over `steps` runs after `warmup` untimed ones."""
  for _ in range(warmup):
    session.run(op)
  start = time.perf_counter()
  for _ in range(steps):
    session.run(op)
  return (time.perf_counter() - start) / steps


def _network(config, use_naive):
  """images -> (poses, activations), built the project's way or naively."""
  if use_naive:
    return lambda images: naive.capsules_v0_naive(
        images, config.num_classes, config.iterations, config.routing(),
        a=config.a, b=config.b, c=config.c, d=config.d,
        conv1_padding=config.conv1_padding)
  return lambda images: config.build(images, FLAGS.xla, FLAGS.vote_moments,
                                     FLAGS.fused_votes)


def measure(iterations, batch_size, use_naive):
  """Times training and inference steps; returns the JSON record."""
  config = model.ModelConfig(num_classes=NUM_CLASSES, iterations=iterations,
                             a=FLAGS.A, b=FLAGS.B, c=FLAGS.C, d=FLAGS.D,
                             conv1_padding=FLAGS.conv1_padding)
  rng = np.random.default_rng(0)
  with tf.Graph().as_default():
    images = tf.Variable(rng.uniform(size=(batch_size,) + IMAGE_SHAPE),
                         dtype=tf.float32, trainable=False)
    labels = tf.Variable(rng.integers(0, NUM_CLASSES, batch_size),
                         dtype=tf.int32, trainable=False)
    graph = training.build(images, labels, config, training.TrainConfig(),
                           network=_network(config, use_naive))
    session_config = runtime.session_config(
        '0', FLAGS.intra_op_threads, FLAGS.inter_op_threads,
        FLAGS.memory_optimizer)
    with tf.compat.v1.Session(config=session_config) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      train_seconds = _time(session, graph['train_op'], FLAGS.warmup,
                            FLAGS.steps)
      final_loss = float(session.run(graph['loss']))
      infer_seconds = _time(session, graph['activations'], FLAGS.warmup,
                            FLAGS.steps)
  switches = ({} if use_naive else
              {'xla': FLAGS.xla, 'vote_moments': FLAGS.vote_moments,
               'fused_votes': FLAGS.fused_votes,
               'memory_optimizer': FLAGS.memory_optimizer})
  return {
      'implementation': 'naive' if use_naive else 'capsulesEM',
      'network': {'A': FLAGS.A, 'B': FLAGS.B, 'C': FLAGS.C, 'D': FLAGS.D,
                  'conv1_padding': FLAGS.conv1_padding},
      'iterations': iterations,
      'batch_size': batch_size,
      'train_images_per_s': round(batch_size / train_seconds, 1),
      'inference_images_per_s': round(batch_size / infer_seconds, 1),
      'train_ms_per_step': round(1000 * train_seconds, 1),
      'final_loss': round(final_loss, 6),
      'peak_rss_mb': round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
      'steps': FLAGS.steps,
      **switches,
      'intra_op_threads': FLAGS.intra_op_threads,
      'inter_op_threads': FLAGS.inter_op_threads,
      'tensorflow': tf.__version__,
  }


def _measure_in_subprocess(iterations, batch_size, use_naive, passed):
  """Runs one measurement in a fresh process; returns its record."""
  command = [sys.executable, __file__,
             f'--run_one={iterations}x{batch_size}'] + passed
  if use_naive:
    command.append('--run_naive')
  result = subprocess.run(command, stdout=subprocess.PIPE, check=False,
                          text=True)
  name = f'{iterations}x{batch_size}{" naive" if use_naive else ""}'
  if result.returncode:
    raise SystemExit(f'{name} failed with exit code {result.returncode}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def _speedups(record, baseline):
  """The naive figures and the ratios, added to the record."""
  for key in ('train_images_per_s', 'inference_images_per_s'):
    record[f'naive_{key}'] = baseline[key]
    record[f'{key.split("_")[0]}_speedup'] = round(
        record[key] / baseline[key], 2)
  record['naive_peak_rss_mb'] = baseline['peak_rss_mb']


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.steps < 1 or FLAGS.warmup < 0:
    raise app.UsageError('need --steps >= 1 and --warmup >= 0')
  runtime.check_network_flags(FLAGS)
  if FLAGS.run_one:
    record = measure(*_parse(FLAGS.run_one), FLAGS.run_naive)
    print(json.dumps(record), flush=True)
    if not math.isfinite(record['final_loss']):
      raise SystemExit(f'{FLAGS.run_one}: the loss is not finite')
    return
  configs = [_parse(c) for c in FLAGS.configs]
  machine = {'cpu': cpu_model(), 'onednn_isa': onednn_isa(),
             'cores': os.cpu_count()}
  passed = [a for a in sys.argv[1:]
            if not a.startswith(('--configs', '--run_one', '--run_naive'))]
  for iterations, batch_size in configs:
    record = _measure_in_subprocess(iterations, batch_size, False, passed)
    if FLAGS.naive and batch_size <= FLAGS.naive_max_batch:
      baseline = _measure_in_subprocess(iterations, batch_size, True, passed)
      print(json.dumps({**baseline, **machine}), flush=True)
      _speedups(record, baseline)
    print(json.dumps({**record, **machine}), flush=True)


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
