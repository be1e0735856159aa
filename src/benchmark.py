"""Speed and memory of the training graph of capsules_v0, one JSON line per
configuration.

  python src/benchmark.py                         # iterations 1-3, batch 24
                                                  # and a larger batch
  python src/benchmark.py --configs=3x24 --steps=20

Each configuration "ITERATIONSxBATCH" runs in its own process, so that its
peak resident memory is its own: it builds the real training graph
(training.build: network, spread loss, Adam, clipping) on random
MNIST-shaped inputs held on the device, runs --warmup steps, times --steps
training steps and --steps inference batches, and prints images per second,
milliseconds per step and the process's peak resident memory.
"""

import json
import math
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import model
import runtime
import training

FLAGS = flags.FLAGS

flags.DEFINE_list('configs', ['1x24', '2x24', '3x24', '1x96', '3x64'],
                  'Configurations ITERATIONSxBATCH_SIZE to measure.')
flags.DEFINE_integer('steps', 10, 'Timed steps per configuration.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps first (XLA compiles here).')
runtime.define_network_flags()
flags.DEFINE_bool('xla', True, 'Compile the routing with XLA.')
flags.DEFINE_bool('vote_moments', True, 'First M-step of the ConvCaps '
                  'layers from poses and transforms, without votes.')
flags.DEFINE_bool('memory_optimizer', False,
                  "Keep grappler's memory optimiser.")
flags.DEFINE_integer('intra_op_threads', 0, 'Intra-op threads (0 = auto).')
flags.DEFINE_integer('inter_op_threads', 0, 'Inter-op threads (0 = auto).')
flags.DEFINE_string('run_one', None, 'Internal: measure one configuration '
                    'in this process.')

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def _parse(config):
  try:
    iterations, batch_size = (int(v) for v in config.lower().split('x'))
  except ValueError:
    raise app.UsageError(f'bad configuration {config!r}; expected '
                         'ITERATIONSxBATCH_SIZE such as 3x24') from None
  if iterations < 1 or batch_size < 1:
    raise app.UsageError(f'bad configuration {config!r}: values must be >= 1')
  return iterations, batch_size


def _time(session, op, steps):
  start = time.perf_counter()
  for _ in range(steps):
    session.run(op)
  return (time.perf_counter() - start) / steps


def measure(iterations, batch_size):
  """Times training and inference steps; returns the JSON record."""
  config = model.ModelConfig(num_classes=NUM_CLASSES, iterations=iterations,
                             a=FLAGS.A, b=FLAGS.B, c=FLAGS.C, d=FLAGS.D)
  rng = np.random.default_rng(0)
  with tf.Graph().as_default():
    images = tf.Variable(rng.uniform(size=(batch_size,) + IMAGE_SHAPE),
                         dtype=tf.float32, trainable=False)
    labels = tf.Variable(rng.integers(0, NUM_CLASSES, batch_size),
                         dtype=tf.int32, trainable=False)
    graph = training.build(images, labels, config, training.TrainConfig(),
                           FLAGS.xla, FLAGS.vote_moments)
    session_config = runtime.session_config(
        '0', FLAGS.intra_op_threads, FLAGS.inter_op_threads,
        FLAGS.memory_optimizer)
    with tf.compat.v1.Session(config=session_config) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      _time(session, graph['train_op'], FLAGS.warmup)
      train_seconds = _time(session, graph['train_op'], FLAGS.steps)
      final_loss = float(session.run(graph['loss']))
      _time(session, graph['activations'], FLAGS.warmup)
      infer_seconds = _time(session, graph['activations'], FLAGS.steps)
  return {
      'network': {'A': FLAGS.A, 'B': FLAGS.B, 'C': FLAGS.C, 'D': FLAGS.D},
      'iterations': iterations,
      'batch_size': batch_size,
      'train_images_per_s': round(batch_size / train_seconds, 1),
      'inference_images_per_s': round(batch_size / infer_seconds, 1),
      'train_ms_per_step': round(1000 * train_seconds, 1),
      'final_loss': round(final_loss, 6),
      'peak_rss_mb': round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
      'steps': FLAGS.steps,
      'xla': FLAGS.xla,
      'vote_moments': FLAGS.vote_moments,
      'memory_optimizer': FLAGS.memory_optimizer,
      'intra_op_threads': FLAGS.intra_op_threads,
      'inter_op_threads': FLAGS.inter_op_threads,
      'tensorflow': tf.__version__,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.steps < 1 or FLAGS.warmup < 0:
    raise app.UsageError('need --steps >= 1 and --warmup >= 0')
  if FLAGS.run_one:
    record = measure(*_parse(FLAGS.run_one))
    print(json.dumps(record), flush=True)
    if not math.isfinite(record['final_loss']):
      raise SystemExit(f'{FLAGS.run_one}: the loss is not finite')
    return
  configs = [_parse(c) for c in FLAGS.configs]
  passed = [a for a in sys.argv[1:]
            if not a.startswith(('--configs', '--run_one'))]
  for iterations, batch_size in configs:
    result = subprocess.run(
        [sys.executable, __file__, f'--run_one={iterations}x{batch_size}'] +
        passed, stdout=subprocess.PIPE, check=False, text=True)
    if result.returncode:
      raise SystemExit(f'{iterations}x{batch_size} failed with exit code '
                       f'{result.returncode}')
    print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
