"""Trains a matrix capsule network with EM routing.

  python src/train.py --train_dir=runs/mnist

Resumes from the latest checkpoint in --train_dir. Ctrl-C (SIGINT) or
SIGTERM stops after the current step and saves it. Run src/tests.py in a
second terminal to follow the checkpoints on the test set.
"""

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

import datasets
import deployment as deployment_lib
import experiments
import model
import runtime
import training
from nets import initializers
from nets import routing as em
from nets import schedules

FLAGS = flags.FLAGS

flags.DEFINE_string('config', 'default',
                    'Named experiment (src/experiments.py) whose flag values '
                    'apply unless given on the command line.')
flags.DEFINE_enum('dataset', 'mnist', sorted(datasets.DATASETS), 'Dataset.')
flags.DEFINE_string('data_dir', None, 'Dataset directory; default '
                    'data/<dataset>. Missing files are downloaded.')
flags.DEFINE_string('train_dir', 'runs/default',
                    'Checkpoints, summaries and model_config.json.')
flags.DEFINE_string('gpu', '0', 'GPUs to use (visible_device_list), e.g. 0 '
                    'or 0,1; several train data-parallel, --batch_size being '
                    'the global batch. Without a GPU the CPU is used.')
flags.DEFINE_integer('cpu_replicas', 1, 'Split the CPU into this many '
                     'logical devices and train data-parallel over them (a '
                     'test of the multi-device path, not a speed-up).')
flags.DEFINE_integer('step_timeout_secs', 600, 'Several machines (TF_CONFIG): '
                     'a worker stops with an error when no step finishes in '
                     'this time, e.g. because another worker died.')
flags.DEFINE_integer('startup_timeout_secs', 600, 'Several machines: the '
                     'same for start-up (joining the other workers) and the '
                     'first step; at least --step_timeout_secs.')
flags.DEFINE_integer('batch_size', 24, 'Training batch size.')
flags.DEFINE_integer('max_steps', 50000, 'Stop at this global step.')
flags.DEFINE_integer('seed', None, 'Random seed (graph and input order).')
flags.DEFINE_bool('augment', False, 'Random translations (MNIST, +-2 px).')
flags.DEFINE_enum('smallnorb_split', 'full', ['full', 'azimuth', 'elevation'],
                  'smallNORB viewpoint split.')
# Model.
flags.DEFINE_integer('iterations', 1, 'EM routing iterations.')
flags.DEFINE_integer('class_iterations', 0, 'EM routing iterations of the '
                     'class capsules; 0: --iterations.')
runtime.define_network_flags()
flags.DEFINE_enum('inverse_temperature_schedule', 'constant',
                  list(schedules.INVERSE_TEMPERATURE_SCHEDULES),
                  'Inverse temperature lambda over routing iterations.')
flags.DEFINE_float('final_lambda', None, 'Final inverse temperature; '
                   'default 2 on MNIST, 3 on smallNORB (so that the class '
                   'activations can meet the 0.9 margin), or that of the run '
                   'being resumed.')
flags.DEFINE_float('min_variance', 1e-4, 'M-step variance floor (0 = off).')
flags.DEFINE_bool('cost_standardization', True,
                  'Standardise the M-step cost over parent types.')
flags.DEFINE_bool('log_space', True, 'E-step in log space.')
flags.DEFINE_float('min_mass', None, 'The M-step holds a parent\'s pose '
                   'and variance constant in the gradient where its mass '
                   'sum_i R_ij a_i is at most this (notes/em_routing.md); '
                   'default 0 (off), or that of the run being resumed. It '
                   'changes the gradient only: a run may resume with '
                   'another value.')
flags.DEFINE_enum('initialization', None, sorted(initializers.SCHEMES),
                  'Initial values of the variables (nets/initializers.py); '
                  f'default {initializers.DEFAULT!r}, or that of the run '
                  'being resumed.')
flags.DEFINE_enum('activation_cost', 'paper', list(em.ACTIVATION_COSTS),
                  "Activation logit: the paper's, or the authors' code's.")
flags.DEFINE_enum('cost_scale', 'none', list(em.COST_SCALES),
                  "Cost factor: none, or IBM's 100 C / I.")
flags.DEFINE_float('pose_damping', 0.0, 'Weight of the previous '
                   "iteration's pose in the M-step (the authors' code: 0.1).")
flags.DEFINE_enum('initial_assignments', 'per_child',
                  list(em.INITIAL_ASSIGNMENTS),
                  'R_ij before the first M-step: 1 / (C x parent positions '
                  "of the child), or the authors' 1 / C per slot.")
flags.DEFINE_bool('stop_assignment_gradients', False, 'Hold the E-steps\' '
                  'assignments R_ij constant in the gradient (notes/'
                  'recipes.md).')
flags.DEFINE_enum('e_step_normalization', 'all_parents',
                  list(em.E_STEP_NORMALIZATIONS),
                  "The parents over which a ConvCaps child's assignments sum "
                  'to 1: all (Procedure 1), the types at each position, or '
                  "the positions of each type (the authors' code; "
                  'notes/recipes.md).')
flags.DEFINE_float('class_lambda_scale', 1.0, 'Factor on the class '
                   "capsules' inverse temperature (the authors' code: 1/4).")
flags.DEFINE_float('reconstruction_weight', 0.0,
                   'Weight of the reconstruction loss (0 = no decoder).')
flags.DEFINE_bool('decoder_standardization', False, 'The decoder '
                  'standardises its input pose entries with running '
                  'statistics (nets/decoder.py; needs '
                  '--reconstruction_weight > 0).')
flags.DEFINE_enum('model', 'capsules', list(model.MODELS),
                  'capsules (the paper\'s network, spread loss) or '
                  'cnn_baseline (nets/cnn_baseline.py, cross-entropy).')
flags.DEFINE_integer('cnn_channels', 32, 'cnn_baseline: channels of its '
                     'first convolution (the second has twice as many).')
flags.DEFINE_integer('cnn_hidden', 1024, 'cnn_baseline: units of its fully '
                     'connected hidden layer.')
# Optimisation.
flags.DEFINE_float('learning_rate', 1e-3, 'Adam learning rate.')
flags.DEFINE_float('learning_rate_decay_rate', 1.0,
                   'Exponential decay factor (1 = constant rate).')
flags.DEFINE_integer('learning_rate_decay_steps', 20000,
                     'Steps per decay factor.')
flags.DEFINE_float('weight_decay', 0.0, 'L2 weight decay (0 = off).')
flags.DEFINE_float('clip_gradient_norm', 5.0,
                   'Clip gradients to this global norm (0 = off).')
flags.DEFINE_enum('margin_schedule', 'linear',
                  list(schedules.MARGIN_SCHEDULES), 'Spread-loss margin.')
flags.DEFINE_float('margin_start', 0.2, 'Initial spread-loss margin.')
flags.DEFINE_float('margin_end', 0.9, 'Final spread-loss margin.')
flags.DEFINE_integer('margin_ramp_steps', 5000, 'Steps of the margin ramp.')
flags.DEFINE_integer('routing_warmup_steps', 0, 'Raise the E-steps\' '
                     'annealing beta, R ~ (a p)^beta, from 0 (uniform '
                     'assignments) to 1 (Procedure 1) over this many steps '
                     '(0 = off; notes/recipes.md).')
# Bookkeeping.
flags.DEFINE_integer('log_every_n_steps', 50, 'Log progress every N steps.')
flags.DEFINE_integer('save_summaries_steps', 200, 'Summaries every N steps.')
flags.DEFINE_integer('save_checkpoint_steps', 1000,
                     'Checkpoint every N steps.')
flags.DEFINE_integer('keep_checkpoint_max', 20, 'Checkpoints to keep.')
flags.DEFINE_integer('intra_op_threads', 0, 'Intra-op threads (0 = auto).')
flags.DEFINE_integer('inter_op_threads', 0, 'Inter-op threads (0 = auto).')
flags.DEFINE_bool('xla', False, 'Compile the routing with XLA (same '
                  'results; faster with --nofused_votes, slower and 130 MB '
                  'more with the fused kernels: notes/performance.md).')
flags.DEFINE_enum('conv1_padding', None, list(model.PADDINGS),
                  'ReLU Conv1 padding: SAME on MNIST (28 -> 14 -> 6 -> 4), '
                  'VALID on smallNORB (32 -> 14 -> 6 -> 4) by default, or '
                  'that of the run being resumed.')
flags.DEFINE_bool('fused_votes', True, 'Route the ConvCaps layers with votes '
                  'recomputed in CPU kernels, never stored (faster, far less '
                  'memory; ignored where the kernels cannot be compiled or a '
                  'GPU is present).')


STARTS_FILE = 'starts.jsonl'


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or Inf."""


def _apply_experiment():
  """Sets the flags of --config that the command line did not give."""
  try:
    values = experiments.get(FLAGS.config)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  for name, value in values.items():
    if not FLAGS[name].present:
      FLAGS[name].value = value


def _validate_flags():
  """Checks the flags; returns the session config they describe."""
  for name in ('batch_size', 'iterations', 'max_steps', 'log_every_n_steps',
               'step_timeout_secs', 'startup_timeout_secs',
               'save_summaries_steps', 'save_checkpoint_steps',
               'margin_ramp_steps', 'learning_rate_decay_steps',
               'keep_checkpoint_max'):
    if FLAGS[name].value < 1:
      raise app.UsageError(f'--{name} must be >= 1, got {FLAGS[name].value}')
  for name, zero in (('class_iterations', '--iterations'),
                     ('routing_warmup_steps', 'off')):
    if FLAGS[name].value < 0:
      raise app.UsageError(f'--{name} must be >= 0 (0: {zero}), got '
                           f'{FLAGS[name].value}')
  if FLAGS.routing_warmup_steps and FLAGS.model != 'capsules':
    raise app.UsageError('--routing_warmup_steps anneals EM routing: only '
                         f'--model=capsules has it, not {FLAGS.model}')
  for name in ('learning_rate', 'learning_rate_decay_rate'):
    if FLAGS[name].value <= 0:
      raise app.UsageError(f'--{name} must be > 0, got {FLAGS[name].value}')
  for name in ('weight_decay', 'clip_gradient_norm'):
    if FLAGS[name].value < 0:
      raise app.UsageError(f'--{name} must be >= 0, got {FLAGS[name].value}')
  if not 0 <= FLAGS.margin_start <= FLAGS.margin_end:
    raise app.UsageError('need 0 <= --margin_start <= --margin_end')
  if FLAGS.augment and FLAGS.dataset != 'mnist':
    raise app.UsageError('--augment shifts MNIST digits (--dataset=mnist); '
                         'mnist40 places every digit at random anyway.')
  runtime.check_network_flags(FLAGS)
  session_config = runtime.checked_session_config(FLAGS)
  try:
    deployment = deployment_lib.from_flags(FLAGS.gpu, FLAGS.cpu_replicas)
    deployment_lib.check_batch_size(deployment, FLAGS.batch_size)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  return deployment, deployment_lib.session_config(deployment,
                                                   session_config)


def _previous_config():
  """The model_config.json of the run in --train_dir, or None."""
  try:
    return model.ModelConfig.load(FLAGS.train_dir)
  except FileNotFoundError:
    return None


def _flag_or_resumed(name, previous, default):
  """--name if given, else the value of the run being resumed (of the same
  dataset), else `default`: the fields whose default changed over time, and
  min_mass, which a resumed run may change, so that a resumed run keeps
  what it trained with unless told otherwise."""
  if FLAGS[name].value is not None:
    return FLAGS[name].value
  if previous is not None and previous.dataset == FLAGS.dataset:
    return getattr(previous, name)
  return default


def _model_config(num_classes, previous):
  return model.ModelConfig(
      dataset=FLAGS.dataset, num_classes=num_classes,
      iterations=FLAGS.iterations, a=FLAGS.A,
      b=FLAGS.B, c=FLAGS.C, d=FLAGS.D,
      inverse_temperature_schedule=FLAGS.inverse_temperature_schedule,
      final_lambda=_flag_or_resumed(
          'final_lambda', previous,
          model.default_final_lambda(FLAGS.dataset)),
      min_variance=FLAGS.min_variance,
      cost_standardization=FLAGS.cost_standardization,
      log_space=FLAGS.log_space,
      min_mass=_flag_or_resumed('min_mass', previous, 0.0),
      reconstruction_weight=FLAGS.reconstruction_weight,
      decoder_standardization=FLAGS.decoder_standardization,
      conv1_padding=_flag_or_resumed(
          'conv1_padding', previous,
          model.default_conv1_padding(FLAGS.dataset)),
      initialization=_flag_or_resumed('initialization', previous,
                                      initializers.DEFAULT),
      activation_cost=FLAGS.activation_cost, cost_scale=FLAGS.cost_scale,
      pose_damping=FLAGS.pose_damping,
      initial_assignments=FLAGS.initial_assignments,
      class_lambda_scale=FLAGS.class_lambda_scale,
      stop_assignment_gradients=FLAGS.stop_assignment_gradients,
      class_iterations=FLAGS.class_iterations,
      e_step_normalization=FLAGS.e_step_normalization,
      model=FLAGS.model,
      cnn_channels=FLAGS.cnn_channels, cnn_hidden=FLAGS.cnn_hidden)


def _check_resumable(config, previous):
  """Refuses to resume a run whose network differs from the flags'; a new
  min_mass, which changes the gradient only, is allowed and logged."""
  if previous is None:
    return
  if dataclasses.replace(previous, min_mass=config.min_mass) != config:
    raise app.UsageError(
        f'{FLAGS.train_dir} holds a run of a different model '
        f'({previous}); the flags ask for {config}. Use another --train_dir.')
  if previous.min_mass != config.min_mass:
    logging.warning('Resuming with min_mass %g instead of %g (the gradient '
                    'changes; the network does not).', config.min_mass,
                    previous.min_mass)


def _warn_if_margin_unreachable(config):
  """The spread loss cannot reach zero if its margin exceeds what the class
  activations can show (notes/em_routing.md)."""
  if config.model != 'capsules':
    return
  gap = config.largest_activation_gap()
  if FLAGS.margin_end >= gap:
    logging.warning(
        'The class activations can differ by at most %.3f here (%d classes, '
        'lambda %g, cost standardisation), less than --margin_end=%g: the '
        'loss cannot reach zero. Raise --final_lambda or lower '
        '--margin_end.', gap, config.num_classes,
        config.routing(lambda_scale=config.class_lambda_scale)
        .inverse_temperature(config.class_layer_iterations - 1),
        FLAGS.margin_end)


def _train_config():
  return training.TrainConfig(**{
      field.name: FLAGS[field.name].value
      for field in dataclasses.fields(training.TrainConfig)})


def build_training_graph(dataset, config, deployment, strategy):
  """Input pipeline and training.build on every replica of the deployment.

  Returns:
    a deployment.TrainStep.
  """
  options = {'mnist': {'augment': FLAGS.augment}, 'mnist40': {},
             'smallnorb': {'split': FLAGS.smallnorb_split}}[FLAGS.dataset]
  data = dataset.train_input(runtime.data_dir(FLAGS.data_dir, FLAGS.dataset),
                             FLAGS.batch_size, seed=FLAGS.seed, **options)

  def replica_step(images, labels, num_replicas):
    outputs = training.build(images, labels, config, _train_config(),
                             FLAGS.xla, fused_votes=FLAGS.fused_votes,
                             num_replicas=num_replicas)
    return {name: value for name, value in outputs.items()
            if name not in ('activations', 'global_step')}

  step = deployment_lib.build(deployment, strategy, data, replica_step)
  training.add_summaries(step.summaries)
  return step


class ProgressHook(tf.compat.v1.train.SessionRunHook):
  """Stops on a non-finite loss; logs progress every N steps."""

  def __init__(self, fetches, every_n_steps, batch_size, max_steps,
               train_dir):
    self._fetches = fetches
    self._train_dir = train_dir
    self._every_n_steps = every_n_steps
    self._batch_size = batch_size
    self._max_steps = max_steps
    self._last = None  # (step, time) of the last log line.

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self._fetches)

  def after_run(self, run_context, run_values):
    values = run_values.results
    step = int(values['global_step']) + 1
    if not math.isfinite(values['loss']):
      raise NonFiniteLossError(
          f'loss is {values["loss"]} at step {step}. The last checkpoint in '
          f'{self._train_dir} is intact: resume with a lower '
          '--learning_rate, with --clip_gradient_norm or with '
          f'--min_mass={em.RECOMMENDED_MIN_MASS:g}, or train anew in another '
          '--train_dir with a higher --min_variance (a resumed run keeps '
          'its network).')
    now = time.time()
    if self._last is None:
      self._last = (step, now)
      return
    if step % self._every_n_steps:
      return
    steps, seconds = step - self._last[0], now - self._last[1]
    rate = steps * self._batch_size / seconds
    eta = (self._max_steps - step) * seconds / steps
    reconstruction = (f"  reconstruction {values['reconstruction_loss']:.2f}"
                      if 'reconstruction_loss' in values else '')
    margin = (f"  margin {values['margin']:.3f}" if 'margin' in values
              else '')  # the cnn_baseline has none
    if 'e_step_annealing' in values:
      margin += f"  annealing {values['e_step_annealing']:.3f}"
    logging.info(
        'step %d  loss %.4f%s  lr %.2e  |g| %.3f  train acc %.3f%s'
        '  %.1f images/s  ETA %s', step, values['loss'], margin,
        values['learning_rate'], values['gradient_norm'],
        values['train_accuracy'], reconstruction, rate, _duration(eta))
    self._last = (step, now)


def _duration(seconds):
  return time.strftime('%H:%M:%S', time.gmtime(seconds)) if seconds < 86400 \
      else f'{seconds / 86400:.1f} days'


def _record_start(step, config):
  """Appends this (re)start to <train_dir>/starts.jsonl, the origin of the
  wall-clock times that report.py gives, with its min_mass (the one field of
  the model a resumed run may change)."""
  with open(os.path.join(FLAGS.train_dir, STARTS_FILE), 'a') as f:
    f.write(json.dumps({'step': int(step), 'time': time.time(),
                        'argv': sys.argv, 'min_mass': config.min_mass}) +
            '\n')


def _scaffold(saver, local_init_op):
  if local_init_op is None:
    return tf.compat.v1.train.Scaffold(saver=saver)
  return tf.compat.v1.train.Scaffold(saver=saver, local_init_op=tf.group(
      tf.compat.v1.train.Scaffold.default_local_init_op(), local_init_op))


def _hooks(step, deployment, saver):
  """Every worker stops at --max_steps and logs; the chief checkpoints."""
  fetches = dict(step.outputs, global_step=step.global_step)
  del fetches['train_op']
  hooks = [
      tf.compat.v1.train.StopAtStepHook(last_step=FLAGS.max_steps),
      ProgressHook(fetches, FLAGS.log_every_n_steps, FLAGS.batch_size,
                   FLAGS.max_steps, FLAGS.train_dir),
  ]
  if deployment.is_chief:
    hooks.append(AlignedCheckpointSaverHook(
        FLAGS.train_dir, save_steps=FLAGS.save_checkpoint_steps,
        saver=saver, save_graph_def=False))
  return hooks


class MultipleOfStepsTimer(tf.compat.v1.train.SecondOrStepTimer):
  """Triggers at the first step and at every multiple of `every_steps`.

  TensorFlow's timer counts `every_steps` from the last trigger, which a
  resumed run sets to the step it restored: a run stopped at step 1,556
  would then save at 2,556, 3,556, ... instead of 2,000, 3,000, ...
  """

  def __init__(self, every_steps):
    super().__init__(every_steps=every_steps)
    self._period = every_steps

  def should_trigger_for_step(self, step):
    last = self.last_triggered_step()
    return last is None or step // self._period > last // self._period


class AlignedCheckpointSaverHook(tf.compat.v1.train.CheckpointSaverHook):
  """CheckpointSaverHook that saves on the multiples of `save_steps`
  whatever step the run resumed from (MultipleOfStepsTimer), and at the
  start and the end as before."""

  def __init__(self, checkpoint_dir, save_steps, **kwargs):
    super().__init__(checkpoint_dir, save_steps=save_steps, **kwargs)
    self._timer = MultipleOfStepsTimer(save_steps)


@contextlib.contextmanager
def _stop_requests():
  """Within it, SIGINT (Ctrl-C) or SIGTERM asks the training loop to stop
  after the current step; yields the list that receives the signal's
  number. A second signal acts at once, as without this handler."""
  received = []
  defaults = {signum: signal.getsignal(signum)
              for signum in (signal.SIGINT, signal.SIGTERM)}

  def request(signum, frame):
    del frame
    received.append(signum)
    for other, handler in defaults.items():
      signal.signal(other, handler)
    logging.warning('%s: stopping after this step and saving a checkpoint '
                    '(send it again to stop at once, losing the steps since '
                    'the last checkpoint).', signal.Signals(signum).name)

  for signum in defaults:
    signal.signal(signum, request)
  try:
    yield received
  finally:
    for signum, handler in defaults.items():
      signal.signal(signum, handler)


def _train_steps(session, step, start, deployment, config):
  """Runs training steps from `start` until the hooks stop the session or
  a signal asks to stop; returns that signal's number, or None."""
  logging.info('Training from step %d to %d in %s on %s.', start,
               FLAGS.max_steps, FLAGS.train_dir, deployment.describe())
  if deployment.is_chief:
    _record_start(start, config)
  with _stop_requests() as received:
    while not session.should_stop() and not received:
      session.run(step.outputs['train_op'])
  return received[0] if received else None


def _global_step(session, step):
  """The global step, read without running the hooks."""
  return session.run_step_fn(
      lambda step_context: step_context.session.run(step.global_step))


def train(config, dataset, deployment, session_config):
  """Runs the training loop until --max_steps or a stopping signal.

  Returns:
    (the signal's number or None, the global step it ended at; the chief
    saved a checkpoint there).
  """
  strategy = deployment_lib.make_strategy(deployment)
  master, session_config = deployment_lib.start_server(
      deployment, strategy, session_config)
  watchdog = None
  if deployment.multi_worker:
    watchdog = deployment_lib.Watchdog(
        FLAGS.step_timeout_secs,
        'another worker has probably stopped or not started. The last '
        f'checkpoint in {FLAGS.train_dir} is intact; start every worker '
        'again to resume.',
        startup_secs=FLAGS.startup_timeout_secs)
  with tf.Graph().as_default():
    if FLAGS.seed is not None:
      tf.compat.v1.set_random_seed(FLAGS.seed)
    step = build_training_graph(dataset, config, deployment, strategy)
    saver = tf.compat.v1.train.Saver(max_to_keep=FLAGS.keep_checkpoint_max)
    hooks = _hooks(step, deployment, saver) + ([watchdog] if watchdog else [])
    if watchdog:
      watchdog.start()
    # Every worker initialises or restores from the shared --train_dir
    # (is_chief=True); only the chief saves.
    with tf.compat.v1.train.MonitoredTrainingSession(
        master=master, is_chief=True, checkpoint_dir=FLAGS.train_dir,
        hooks=hooks, scaffold=_scaffold(saver, step.local_init_op),
        save_checkpoint_secs=None, save_checkpoint_steps=None,
        save_summaries_steps=(FLAGS.save_summaries_steps
                              if deployment.is_chief else None),
        save_summaries_secs=None, log_step_count_steps=0,
        stop_grace_period_secs=5, config=session_config) as session:
      start = _global_step(session, step)
      stopped_by = None
      if start >= FLAGS.max_steps:
        logging.info('%s is at step %d already, --max_steps=%d: nothing to '
                     'train.', FLAGS.train_dir, start, FLAGS.max_steps)
      else:
        stopped_by = _train_steps(session, step, start, deployment, config)
      last = _global_step(session, step)
    # Leaving the session ran the hooks' end: the chief saved step `last`.
  if watchdog:
    watchdog.stop()
  return stopped_by, last


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _apply_experiment()
  deployment, session_config = _validate_flags()
  dataset = datasets.get_dataset(FLAGS.dataset)
  previous = _previous_config()
  try:
    config = _model_config(dataset.NUM_CLASSES, previous)
  except ValueError as e:  # a flag the model config refuses
    raise app.UsageError(str(e)) from e
  os.makedirs(FLAGS.train_dir, exist_ok=True)
  _check_resumable(config, previous)
  _warn_if_margin_unreachable(config)
  if deployment.is_chief:
    config.save(FLAGS.train_dir)
  logging.info('Model: %s', config)
  try:
    stopped_by, last = train(config, dataset, deployment, session_config)
  except NonFiniteLossError as e:
    logging.error('Stopped: %s', e)
    raise SystemExit(1) from e
  except datasets.download.DataError as e:
    logging.error('%s', e)
    raise SystemExit(2) from e
  if stopped_by is not None:
    logging.warning('Stopped by %s at step %d; %s. The same command '
                    'resumes from there.', signal.Signals(stopped_by).name,
                    last, f'its checkpoint is in {FLAGS.train_dir}'
                    if deployment.is_chief else 'the chief keeps the '
                    'checkpoints')
    raise SystemExit(128 + stopped_by)
  logging.info('Reached step %d; checkpoints in %s.', FLAGS.max_steps,
               FLAGS.train_dir)


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  logging.set_verbosity(logging.INFO)
  app.run(main)
