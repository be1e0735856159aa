"""Speed of the fused vote kernels alone, one JSON line per op.

  python src/benchmark_kernels.py                 # ConvCaps1 of capsules_v0
  python src/benchmark_kernels.py --batch_size=64 --threads=1

Runs each op of nets/fused_votes.py (forward and gradient) on random inputs
of one ConvCaps layer's routing problem, N examples x P positions x C parent
types x I slots, and prints the best of --steps runs in milliseconds and in
nanoseconds per (example, position, type, slot) vote.
"""

import json
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from nets import fused_votes

FLAGS = flags.FLAGS

flags.DEFINE_integer('batch_size', 24, 'N.')
flags.DEFINE_integer('positions', 25, 'P (ConvCaps1 of capsules_v0: 5x5).')
flags.DEFINE_integer('types', 32, 'C.')
flags.DEFINE_integer('slots', 288, 'I (3x3 kernel x 32 child types).')
flags.DEFINE_integer('steps', 10, 'Timed runs per op; the best is reported.')
flags.DEFINE_integer('threads', 0, 'Intra-op threads (0 = all cores).')


def _ops(n, p, c, i):
  """The four ops on random variables [N, P, C, I, ...]; name -> fetch."""
  rng = np.random.default_rng(0)

  def variable(*shape, low=None):
    values = (rng.uniform(low, 1.0, shape) if low is not None
              else rng.normal(size=shape))
    return tf.Variable(values.astype(np.float32))

  assignments, activations = variable(n, p, c, i, low=0.0), variable(
      n, p, i, low=0.05)
  poses, transforms = variable(n, p, i, 4, 4), variable(i, c, 4, 4)
  means, scales = variable(n, p, c, 16), variable(n, p, c, 16, low=0.1)
  mass, grad_mass = variable(n, p, c, low=0.1), variable(n, p, c)
  library = fused_votes.library()
  moments = library.capsule_vote_moments(assignments, activations, poses,
                                         transforms)
  return {
      'moments': moments[0].op,
      'quadratic_form': library.capsule_vote_quadratic_form(
          poses, transforms, means, scales).op,
      'moments_grad': library.capsule_vote_moments_grad(
          assignments, activations, poses, transforms, mass, means, means,
          grad_mass, means, scales)[0].op,
      'quadratic_form_grad': library.capsule_vote_quadratic_form_grad(
          poses, transforms, means, scales, assignments)[0].op,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  sizes = (FLAGS.batch_size, FLAGS.positions, FLAGS.types, FLAGS.slots)
  if min(sizes) < 1 or FLAGS.steps < 1 or FLAGS.threads < 0:
    raise app.UsageError('sizes and --steps must be >= 1, --threads >= 0')
  if fused_votes.library() is None:
    raise SystemExit('the fused vote kernels did not compile or load; see '
                     'the warning above')
  votes = int(np.prod(sizes))
  config = tf.compat.v1.ConfigProto(
      intra_op_parallelism_threads=FLAGS.threads,
      inter_op_parallelism_threads=1)
  with tf.Graph().as_default():
    ops = _ops(*sizes)
    with tf.compat.v1.Session(config=config) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for name, op in ops.items():
        session.run(op)
        times = []
        for _ in range(FLAGS.steps):
          start = time.perf_counter()
          session.run(op)
          times.append(time.perf_counter() - start)
        best = min(times)
        print(json.dumps({
            'op': name, 'N': sizes[0], 'P': sizes[1], 'C': sizes[2],
            'I': sizes[3], 'threads': FLAGS.threads,
            'ms': round(1000 * best, 2),
            'ns_per_vote': round(1e9 * best / votes, 3)}), flush=True)


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
