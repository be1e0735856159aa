"""Votes that are never stored: CPU kernels for the routing of ConvCaps layers.

Every M-step needs sum_i R_ij a_i V_ij^h and sum_i R_ij a_i (V_ij^h)^2, and
every E-step sum_h (V_ij^h - mu_j^h)^2 / (2 (sigma_j^h)^2). Computed from a
stored vote tensor [N, P, C, I, 16] (354 MB for ConvCaps1 at batch 24) the
routing is bound by memory traffic, forwards and backwards. The C++ ops in
`kernels/fused_votes.cc` recompute each vote V_ij = M_i W_ij from the poses
and transforms where it is consumed, in the forward pass and in the gradient:

  capsule_vote_moments(R, a, M, W)  -> sum_i R_ij a_i, sum_i R_ij a_i V_ij,
                                       sum_i R_ij a_i (V_ij - mu_j)^2
  capsule_vote_quadratic_form(M, W, mu, s)  -> sum_h s_j^h (V_ij^h - mu_j^h)^2

The library is compiled on first use with the C++ compiler and TensorFlow's
own flags (`tf.sysconfig`), for this CPU (`-march=native`; where that fails,
as TensorFlow 2.21's Eigen headers do under GCC 12 on CPUs with AVX512-FP16,
without AVX512-FP16, then for the generic target), and cached under
$CAPSULES_EM_KERNEL_CACHE or ~/.cache/capsulesEM, keyed by the source, the
TensorFlow version, the compiler and the CPU. Without a compiler, or on a
machine with a GPU (the kernels are CPU-only), `available()` is False and the
layers store the votes: the same maths in pure TensorFlow.
"""

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

from absl import logging
import tensorflow as tf

from nets import shapes
from nets import votes as votes_lib

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'kernels',
                      'fused_votes.cc')
CACHE_ENV = 'CAPSULES_EM_KERNEL_CACHE'
_OPTIMISATION = ['-O3', '-ffp-contract=fast', '-fno-math-errno']
# Tried in order until one compiles. The kernels use float32 only, so AVX-512
# half precision, whose Eigen header GCC 12 rejects, costs them nothing.
TARGETS = (('-march=native',), ('-march=native', '-mno-avx512fp16'), ())


def _compiler():
  return os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')


def _cpu_signature():
  """What -march=native depends on: the CPU's model and feature flags."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = [l for l in f if l.startswith(('model name', 'flags'))]
    return ''.join(sorted(set(lines)))
  except OSError:
    return platform.processor() or platform.machine()


def _command(compiler, output, target):
  return ([compiler] + _OPTIMISATION + list(target) +
          ['-shared', '-fPIC', '-w'] + tf.sysconfig.get_compile_flags() +
          [SOURCE, '-o', output] + tf.sysconfig.get_link_flags())


def _target_name(target):
  return ' '.join(target) or 'the generic target'


def _library_path(compiler):
  """The cached library's path: a hash of everything its binary depends on."""
  with open(SOURCE, 'rb') as f:
    key = hashlib.sha256(f.read())
  version = subprocess.run([compiler, '--version'], capture_output=True,
                           text=True, check=False).stdout
  commands = [' '.join(_command(compiler, '', t)) for t in TARGETS]
  for part in [tf.__version__, version, _cpu_signature()] + commands:
    key.update(part.encode())
  cache = os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'capsulesEM')
  return os.path.join(cache, f'fused_votes-{key.hexdigest()[:16]}.so')


def _compile(compiler, path):
  """Compiles SOURCE to `path` for the first of TARGETS that compiles.

  The library is written to a temporary file, then renamed.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  descriptor, temporary = tempfile.mkstemp(
      suffix='.so', dir=os.path.dirname(path))
  os.close(descriptor)
  errors = []
  try:
    for target in TARGETS:
      result = subprocess.run(_command(compiler, temporary, target),
                              capture_output=True, text=True, check=False)
      if result.returncode == 0 and os.path.getsize(temporary):
        if errors:
          logging.warning('Compiled the fused vote kernels with %s, after:'
                          '\n%s', _target_name(target), '\n'.join(errors))
        os.replace(temporary, path)
        return
      errors.append('%s: %s' % (_target_name(target),
                                result.stderr.strip()[-1000:]))
    raise RuntimeError('\n'.join(errors))
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


@functools.lru_cache(maxsize=None)
def library():
  """The op library, compiled and cached on first use; None if impossible.

  A cached file that does not load (truncated, or from another build) is
  removed and compiled again, once.
  """
  compiler = _compiler()
  if compiler is None:
    logging.warning('No C++ compiler: EM routing uses stored votes.')
    return None
  try:
    path = _library_path(compiler)
    if os.path.exists(path):
      try:
        return tf.load_op_library(path)
      except tf.errors.NotFoundError as e:
        logging.warning('Removing %s, which does not load: %s', path, e)
        os.remove(path)
    logging.info('Compiling %s to %s', SOURCE, path)
    _compile(compiler, path)
    return tf.load_op_library(path)
  except (OSError, RuntimeError, tf.errors.NotFoundError) as e:
    logging.warning('Fused vote kernels unavailable (%s); EM routing uses '
                    'stored votes.', e)
    return None


@functools.lru_cache(maxsize=None)
def available():
  """True when the kernels load and no GPU would run the rest of the graph."""
  if tf.config.list_physical_devices('GPU'):
    return False
  return library() is not None


def _zeros_if_none(grad, like):
  return tf.zeros_like(like) if grad is None else grad


@tf.RegisterGradient('CapsuleVoteMoments')
def _vote_moments_grad(op, grad_mass, grad_first, grad_second,
                       unused_grad_residual):
  """Gradients for R, a, M and W, the votes recomputed once more."""
  mass, first, second, residual = op.outputs
  return library().capsule_vote_moments_grad(
      *op.inputs, mass, first, residual, _zeros_if_none(grad_mass, mass),
      _zeros_if_none(grad_first, first), _zeros_if_none(grad_second, second))


@tf.RegisterGradient('CapsuleVoteQuadraticForm')
def _vote_quadratic_form_grad(op, grad):
  """Gradients for M, W, mu and s, the votes recomputed once more."""
  return library().capsule_vote_quadratic_form_grad(*op.inputs, grad)


class FusedVotes:
  """The votes V_ij = M_i W_ij of a ConvCaps layer, as the routing uses them.

  Attributes:
    shape: the static shape of the vote tensor, [N, P, C, I, 16].
  """

  def __init__(self, poses, transforms):
    """Args: poses M_i [N, P, I, 4, 4]; transforms W_ij [I, C, 4, 4]."""
    self._poses = poses
    self._transforms = transforms
    num_slots, num_out = shapes.static_sizes(transforms, [0, 1],
                                             'FusedVotes')
    self.shape = poses.shape[:2].concatenate(
        [num_out, num_slots, votes_lib.POSE_SIZE ** 2])

  def moments(self, assignments, activations):
    """sum_i R_ij a_i, sum_i R_ij a_i V_ij^h and sum_i R_ij a_i (V_ij^h -
    mu_j^h)^2, mu_j the weighted mean (0 where the first sum is 0).

    The kernel forms R_ij a_i itself, so that the gradient keeps R
    [N, P, C, I] (which the E-step keeps anyway) and a [N, P, I], and makes
    two passes over the votes, so the variance is the paper's two-pass one,
    not E[V^2] - mu^2.

    Args:
      assignments: R_ij [N, P, C, I].
      activations: a_i [N, P, I].

    Returns:
      mass [N, P, C], first [N, P, C, 16] and second [N, P, C, 16].
    """
    mass, first, second, _ = library().capsule_vote_moments(
        assignments, activations, self._poses, self._transforms)
    return mass, first, second

  def quadratic_form(self, means, scales):
    """sum_h s_j^h (V_ij^h - mu_j^h)^2 for mu, s [N, P, C, 16].

    Returns:
      [N, P, C, I].
    """
    return library().capsule_vote_quadratic_form(
        self._poses, self._transforms, means, scales)
