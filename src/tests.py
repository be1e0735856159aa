"""Evaluates the checkpoints of a training run on the full test set.

  python src/tests.py --train_dir=runs/mnist          # follow the run
  python src/tests.py --train_dir=runs/mnist --once   # latest checkpoint
  python src/tests.py --train_dir=runs/mnist40 --once --test_set=affnist

Started before train.py, it waits up to --timeout_secs for train.py to
create --train_dir, its model_config.json and its first checkpoint. Then it
evaluates the checkpoints already kept in --train_dir that it has not
evaluated before, and waits for each new one; evaluates each on every test
example, logs accuracy and per-class accuracy, writes them to TensorBoard
(<eval_dir>) and appends one JSON line per checkpoint to
<eval_dir>/results.jsonl. Stops after --timeout_secs without a new checkpoint.
The network is rebuilt from <train_dir>/model_config.json. With --once it
does not wait: the run must already have a checkpoint. --test_set=affnist
evaluates a run on the 40x40 canvas (--dataset=mnist40) on the affNIST-style
test set of datasets/affnist.py instead, into <train_dir>/eval_affnist;
--test_set=train a MNIST run on its 60,000 training images (unaugmented,
in file order) into <train_dir>/eval_train: the training accuracy, to set
beside the test accuracy.

--iterations=N is a probe of the routing: it evaluates the run's weights
with N EM routing iterations in every capsule layer instead of the count
they were trained at, by default into
<train_dir>/eval_<test_set>_iterations<N> (eval_test_iterations3); every
record names the iterations it routed.
"""

import dataclasses
import itertools
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import datasets
import evaluation
import model
import runtime

FLAGS = flags.FLAGS

flags.DEFINE_string('train_dir', 'runs/default', 'Directory of the run.')
flags.DEFINE_string('eval_dir', None, 'Where results go; default '
                    '<train_dir>/eval_<test_set>, e.g. eval_test (see '
                    '--iterations).')
flags.DEFINE_enum('dataset', None, sorted(datasets.DATASETS),
                  'Dataset; default: the one the run trains on.')
flags.DEFINE_string('data_dir', None, 'Dataset directory; default '
                    'data/<dataset>.')
flags.DEFINE_enum('smallnorb_split', 'full', ['full', 'azimuth', 'elevation'],
                  'smallNORB viewpoint split.')
flags.DEFINE_enum('test_set', 'test', ['test', 'train', 'affnist'],
                  "test: the dataset's test set; train: MNIST's training "
                  'set (runs on mnist only); affnist: the affNIST-style '
                  'test set (runs on the 40x40 canvas, mnist40, only).')
flags.DEFINE_integer('smallnorb_crops', 1,
                     'smallNORB: average class activations over this many '
                     'crops (1 = the central crop).')
flags.DEFINE_string('gpu', '1', 'GPUs to use (visible_device_list). Without '
                    'a GPU the CPU is used.')
flags.DEFINE_integer('batch_size', 100, 'Evaluation batch size.')
flags.DEFINE_bool('once', False, 'Evaluate the latest checkpoint and exit; '
                  'fail at once if there is none.')
flags.DEFINE_integer('timeout_secs', 1800,
                     'Stop after this long without a new checkpoint; at the '
                     'start, give up after this long without a run of '
                     'train.py in --train_dir.')
flags.DEFINE_integer('min_interval_secs', 10,
                     'Poll the train_dir at most this often.')
flags.DEFINE_integer('intra_op_threads', 0, 'Intra-op threads (0 = auto).')
flags.DEFINE_integer('inter_op_threads', 0, 'Inter-op threads (0 = auto).')
flags.DEFINE_bool('xla', False, 'Compile the routing with XLA.')
flags.DEFINE_integer('iterations', None, 'Route this many EM iterations in '
                     'every capsule layer instead of the run\'s own (the '
                     'weights stay those trained at its count); default '
                     '--eval_dir <train_dir>/eval_<test_set>_iterations<N>.')

RESULTS_FILE = 'results.jsonl'


def _split():
  """'train' when --test_set=train measures the training accuracy, else
  'test': the prefix of the summaries and the word in the messages."""
  return 'train' if FLAGS.test_set == 'train' else 'test'


def report(step, predictions, labels, config, seconds, eval_dir,
           checkpoint, writer):
  """Logs, summarises and appends the result of one checkpoint of a network
  built from `config` (a model.ModelConfig)."""
  num_classes = config.num_classes
  accuracy = float(np.mean(predictions == labels))
  per_class = evaluation.per_class_accuracy(predictions, labels,
                                            num_classes)
  logging.info('step %d: %s accuracy %.4f (error %.2f%%) on %d images in '
               '%.0f s', step, _split(), accuracy, 100 * (1 - accuracy),
               len(labels), seconds)
  logging.info('per class: %s', ' '.join(
      f'{k}:{v:.4f}' for k, v in enumerate(per_class)))
  summary = tf.compat.v1.Summary()
  summary.value.add(tag=f'{_split()}/accuracy', simple_value=accuracy)
  for k, value in enumerate(per_class):
    summary.value.add(tag=f'{_split()}/accuracy_class_{k}',
                      simple_value=value)
  writer.add_summary(summary, step)
  writer.flush()
  record = {'step': step, 'accuracy': accuracy,
            'images_evaluated': int(len(labels)),
            'per_class_accuracy': [float(v) for v in per_class],
            'eval_seconds': round(seconds, 2), 'time': time.time(),
            'checkpoint': os.path.basename(checkpoint),
            'checkpoint_time': _checkpoint_time(checkpoint),
            **_routing(config)}
  with open(os.path.join(eval_dir, RESULTS_FILE), 'a') as f:
    f.write(json.dumps(record) + '\n')
  return record


def _routing(config):
  """The EM routing iterations a record's network ran: {} for a network
  that does not route."""
  if config.model != 'capsules':
    return {}
  return {'iterations': config.iterations,
          'class_iterations': config.class_layer_iterations}


def _checkpoint_time(checkpoint):
  """When the checkpoint was written (its index file's mtime), or None."""
  try:
    return os.path.getmtime(checkpoint + '.index')
  except OSError:
    return None


def _evaluated_steps(eval_dir, trained, routed):
  """Steps already in results.jsonl with the routing of `routed` (a record
  without iterations routed as `trained`, the run's config), so a restarted
  loop does not redo them."""
  path = os.path.join(eval_dir, RESULTS_FILE)
  if not os.path.exists(path):
    return set()
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  before, wanted = _routing(trained), _routing(routed)
  return {record['step'] for record in records
          if all(record.get(key, before.get(key)) == value
                 for key, value in wanted.items())}


def _step_of(checkpoint):
  """The global step in a checkpoint path such as .../model.ckpt-1000."""
  suffix = checkpoint.rsplit('-', 1)[-1]
  return int(suffix) if suffix.isdigit() else None


def _checkpoints():
  """The checkpoints to evaluate: with --once the latest; else every one
  kept in train_dir, oldest first, then each new one as it appears."""
  if FLAGS.once:
    latest = tf.train.latest_checkpoint(FLAGS.train_dir)
    if latest is None:
      raise app.UsageError(f'no checkpoint in {FLAGS.train_dir}; run '
                           'train.py first, or point --train_dir at a run.')
    return [latest]
  state = tf.train.get_checkpoint_state(FLAGS.train_dir)
  kept = list(state.all_model_checkpoint_paths) if state else []
  return itertools.chain(kept, tf.compat.v1.train.checkpoints_iterator(
      FLAGS.train_dir, FLAGS.min_interval_secs, timeout=FLAGS.timeout_secs))


def _missing(train_dir):
  """What train.py has yet to write in train_dir before a checkpoint can be
  evaluated, in words, or None when the run is there."""
  if not os.path.isdir(train_dir):
    return 'does not exist'
  if not os.path.exists(os.path.join(train_dir, model.CONFIG_FILE)):
    return f'has no {model.CONFIG_FILE}'
  if tf.train.latest_checkpoint(train_dir) is None:
    return 'has no checkpoint'
  return None


def wait_for_run(train_dir, timeout_secs, interval_secs):
  """Waits for train.py to create train_dir, its model_config.json and its
  first checkpoint, so that tests.py may be started first.

  Logs once that it waits, not at every poll.

  Args:
    train_dir: the run's directory.
    timeout_secs: how long to wait.
    interval_secs: how often to look.

  Returns:
    None once the run is there, or what it still lacks after timeout_secs
    (see _missing).
  """
  deadline = time.monotonic() + timeout_secs
  missing = _missing(train_dir)
  if missing is None:
    return None
  logging.info('%s %s yet; waiting up to %d s for train.py to write its '
               'model_config.json and first checkpoint.', train_dir, missing,
               timeout_secs)
  while missing is not None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      return missing
    time.sleep(min(interval_secs, remaining))
    missing = _missing(train_dir)
  logging.info('Found the first checkpoint in %s.', train_dir)
  return None


def _await_run():
  """Returns once --train_dir holds a run with a checkpoint.

  Raises:
    app.UsageError: with --once, --train_dir does not exist.
    SystemExit: without --once, no run appeared within --timeout_secs.
  """
  if FLAGS.once:
    if not os.path.isdir(FLAGS.train_dir):
      raise app.UsageError(
          f'--train_dir {FLAGS.train_dir} does not exist; start train.py '
          'with the same --train_dir first (without --once, tests.py waits '
          'for it).')
    return
  missing = wait_for_run(FLAGS.train_dir, FLAGS.timeout_secs,
                         FLAGS.min_interval_secs)
  if missing is not None:
    logging.error('Gave up after %d s (--timeout_secs): --train_dir %s still '
                  '%s. Start train.py with the same --train_dir, or raise '
                  '--timeout_secs.', FLAGS.timeout_secs, FLAGS.train_dir,
                  missing)
    raise SystemExit(1)


def _validate_flags():
  for name in ('batch_size', 'smallnorb_crops', 'min_interval_secs'):
    if FLAGS[name].value < 1:
      raise app.UsageError(f'--{name} must be >= 1, got {FLAGS[name].value}')
  if FLAGS.timeout_secs < 0:
    raise app.UsageError('--timeout_secs must be >= 0')
  if FLAGS.iterations is not None and FLAGS.iterations < 1:
    raise app.UsageError(f'--iterations must be >= 1, got {FLAGS.iterations}')
  return runtime.checked_session_config(FLAGS)


def _routed(config):
  """`config`, routing --iterations times in every capsule layer if given.

  Raises:
    app.UsageError: --iterations for a network without routing.
  """
  if FLAGS.iterations is None:
    return config
  if config.model != 'capsules':
    raise app.UsageError(f'--iterations: {FLAGS.train_dir} holds a '
                         f'{config.model} network, which does not route.')
  logging.info('Routing %d iterations in every capsule layer; the run '
               'trained at %d (class capsules %d).', FLAGS.iterations,
               config.iterations, config.class_layer_iterations)
  return dataclasses.replace(config, iterations=FLAGS.iterations,
                             class_iterations=0)


def _eval_options(dataset_name):
  """The keyword options of the dataset's eval_input that the flags give.

  Raises:
    app.UsageError: --test_set=affnist for a dataset other than mnist40,
      --test_set=train for one other than mnist.
  """
  if FLAGS.test_set == 'affnist' and dataset_name != 'mnist40':
    raise app.UsageError(
        '--test_set=affnist is a 40x40 test set: for runs on '
        f'--dataset=mnist40, not {dataset_name}.')
  if FLAGS.test_set == 'train':
    if dataset_name != 'mnist':
      raise app.UsageError(
          f'--test_set=train evaluates MNIST runs (--dataset=mnist), not '
          f'{dataset_name}.')
    return {'split': 'train'}
  if dataset_name == 'mnist40':
    return {'test_set': FLAGS.test_set}
  if dataset_name == 'smallnorb':
    return {'split': FLAGS.smallnorb_split, 'crops': FLAGS.smallnorb_crops}
  return {}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  session_config = _validate_flags()
  _await_run()
  try:
    trained = model.ModelConfig.load(FLAGS.train_dir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from e
  config = _routed(trained)
  dataset_name = FLAGS.dataset or config.dataset
  dataset = datasets.get_dataset(dataset_name)
  if dataset.NUM_CLASSES != config.num_classes:
    raise app.UsageError(
        f'{FLAGS.train_dir} has {config.num_classes} classes but '
        f'--dataset={dataset_name} has {dataset.NUM_CLASSES}.')
  options = _eval_options(dataset_name)
  probe = '' if FLAGS.iterations is None else f'_iterations{FLAGS.iterations}'
  eval_dir = FLAGS.eval_dir or os.path.join(
      FLAGS.train_dir, f'eval_{FLAGS.test_set}{probe}')
  os.makedirs(eval_dir, exist_ok=True)
  try:
    evaluator = evaluation.Evaluator(config, dataset,
                                     runtime.data_dir(FLAGS.data_dir,
                                                      dataset_name),
                                     FLAGS.batch_size, options, FLAGS.xla)
  except datasets.download.DataError as e:
    logging.error('%s', e)
    raise SystemExit(2) from e
  done = set() if FLAGS.once else _evaluated_steps(eval_dir, trained, config)
  writer = tf.compat.v1.summary.FileWriter(eval_dir)
  for checkpoint in _checkpoints():
    if _step_of(checkpoint) in done:
      logging.info('%s already evaluated; skipping.', checkpoint)
      continue
    start = time.time()
    try:
      step, predictions, labels = evaluator.evaluate(session_config,
                                                     checkpoint)
    except (tf.errors.NotFoundError, ValueError) as e:
      logging.warning('skipping %s, deleted while waiting: %s', checkpoint,
                      str(e).splitlines()[0])
      continue
    if len(labels) != evaluator.num_examples:
      raise RuntimeError(f'evaluated {len(labels)} examples, expected '
                         f'{evaluator.num_examples}')
    record = report(step, predictions, labels, config,
                    time.time() - start, eval_dir, checkpoint, writer)
    done.add(step)
    if FLAGS.once:
      images = 'training' if _split() == 'train' else 'test'
      print(f'step {step}: accuracy {record["accuracy"]:.4f} on '
            f'{record["images_evaluated"]} {images} images')
  writer.close()
  if not FLAGS.once:
    logging.info('No new checkpoint for %d s; stopping.', FLAGS.timeout_secs)


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  logging.set_verbosity(logging.INFO)
  app.run(main)
