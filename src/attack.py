"""White-box FGSM and BIM attacks on trained networks, side by side.

  python src/attack.py --train_dir=runs/caps40 --train_dir=runs/cnn40 \\
      --output_dir=attacks/mnist40

For each run (its latest checkpoint, or DIR@STEP for another) it attacks the
first --num_images test images of the run's dataset with FGSM and BIM
(src/adversarial.py), untargeted and targeted, at each of --epsilons, and
prints the accuracy left by the untargeted attacks and the success rate of
the targeted ones. It writes <output_dir>/attack.json, rewritten after each
run, and one figure per attack, <output_dir>/<attack>_untargeted.png and
<attack>_targeted.png, with one curve per run against epsilon, as Figure 3
of Hinton et al. (2018) compares the capsule network with a CNN.

The runs must share a dataset whose pixels lie in [0, 1]: mnist or mnist40
(smallNORB's crops are standardised per image and have no such range).
The target of an image is (label + 1) mod 10, or with --target=random a
class drawn uniformly among the nine others with --seed; the same for
every run. Success rates and accuracies are over all attacked images.
"""

import os

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import adversarial
import datasets
import figures
import runtime
import serving

FLAGS = flags.FLAGS

flags.DEFINE_multi_string('train_dir', None, 'A run to attack: its '
                          'directory, or DIR@STEP for the checkpoint of that '
                          'step. Repeat to compare runs.')
flags.DEFINE_string('output_dir', None, 'Where attack.json and the figures '
                    'go (created if need be).')
flags.DEFINE_list('epsilons', ['0', '0.05', '0.1', '0.2', '0.3'],
                  'L-infinity sizes of the perturbation, pixels in [0, 1].')
flags.DEFINE_list('attacks', list(adversarial.ATTACKS), 'Attacks to run.')
flags.DEFINE_integer('num_images', 1000, 'First test images to attack.')
flags.DEFINE_integer('batch_size', 100, 'Images per pass.')
flags.DEFINE_integer('bim_iterations', 10, 'BIM steps.')
flags.DEFINE_float('bim_step_size', 0.0, 'BIM step (L-infinity); 0 spreads '
                   '1.25 epsilon over the steps (Kurakin et al.\'s total).')
flags.DEFINE_enum('target', 'next', list(adversarial.TARGET_RULES),
                  'Targets: next, (label + 1) mod J; random, another class '
                  'drawn with --seed.')
flags.DEFINE_integer('seed', 0, 'Seed of --target=random.')
flags.DEFINE_enum('capsule_loss', 'cross_entropy',
                  list(adversarial.CAPSULE_LOSSES),
                  'Loss attacked in the capsule network (src/adversarial.py); '
                  'the baseline is always attacked through its '
                  'cross-entropy.')
flags.DEFINE_float('spread_margin', 0.9, 'Margin of --capsule_loss=spread.')
flags.DEFINE_string('data_dir', None, 'Dataset directory; default '
                    'data/<dataset>.')
flags.DEFINE_string('gpu', '0', 'GPUs to use (visible_device_list).')
flags.DEFINE_bool('fused_votes', True, 'Build the capsule layers with the '
                  'fused vote kernels (same gradients, faster).')
flags.DEFINE_integer('intra_op_threads', 0, 'Intra-op threads (0 = auto).')
flags.DEFINE_integer('inter_op_threads', 0, 'Inter-op threads (0 = auto).')
flags.mark_flags_as_required(['train_dir', 'output_dir'])

RESULTS_FILE = 'attack.json'
DATASETS = ('mnist', 'mnist40')  # pixels in [0, 1]


def _epsilons():
  """--epsilons as sorted floats; app.UsageError unless all are >= 0."""
  try:
    values = sorted(float(value) for value in FLAGS.epsilons)
  except ValueError as e:
    raise app.UsageError(f'--epsilons must be numbers: {e}') from e
  if not values or values[0] < 0:
    raise app.UsageError('--epsilons must be numbers >= 0, got '
                         f'{",".join(FLAGS.epsilons)}')
  return values


def _check_flags():
  """Checks the flags; returns the session config and the epsilons."""
  for name in ('num_images', 'batch_size', 'bim_iterations'):
    if FLAGS[name].value < 1:
      raise app.UsageError(f'--{name} must be >= 1, got {FLAGS[name].value}')
  unknown = set(FLAGS.attacks) - set(adversarial.ATTACKS)
  if unknown or not FLAGS.attacks:
    raise app.UsageError(f'--attacks must name some of '
                         f'{",".join(adversarial.ATTACKS)}; got '
                         f'{",".join(FLAGS.attacks)}')
  if FLAGS.bim_step_size < 0:
    raise app.UsageError('--bim_step_size must be >= 0')
  if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
    raise app.UsageError(f'--data_dir {FLAGS.data_dir} is not a directory')
  try:
    session_config = runtime.session_config(
        FLAGS.gpu, FLAGS.intra_op_threads, FLAGS.inter_op_threads)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  return session_config, _epsilons()


def _runs():
  """[(train_dir as given, model config, checkpoint)] of --train_dir.

  Raises:
    app.UsageError: a run or checkpoint is missing, or the runs do not share
      one dataset of DATASETS.
  """
  runs = []
  for value in FLAGS.train_dir:
    train_dir, step = value, None
    head, _, tail = value.rpartition('@')
    if head and tail.isdigit():
      train_dir, step = head, int(tail)
    config, checkpoint = serving.find_run(train_dir, step)
    runs.append((value, config, checkpoint))
  names = sorted({config.dataset for _, config, _ in runs})
  if len(names) > 1 or names[0] not in DATASETS:
    raise app.UsageError(
        f'the runs train on {", ".join(names)}: attack.py compares runs of '
        f'one dataset, with pixels in [0, 1] ({", ".join(DATASETS)}).')
  return runs


def _test_images(dataset_name):
  """The first --num_images test images [N, H, W, C] and labels [N]."""
  dataset = datasets.get_dataset(dataset_name)
  with tf.Graph().as_default():
    data, _ = dataset.eval_input(
        runtime.data_dir(FLAGS.data_dir, dataset_name), FLAGS.batch_size)
    batch = tf.compat.v1.data.make_one_shot_iterator(data).get_next()
    images, labels = [], []
    with tf.compat.v1.Session() as session:
      while sum(len(b) for b in labels) < FLAGS.num_images:
        try:
          values = session.run(batch)
        except tf.errors.OutOfRangeError:
          break
        images.append(values[0])
        labels.append(values[1])
  return (np.concatenate(images)[:FLAGS.num_images],
          np.concatenate(labels)[:FLAGS.num_images])


def _attack(config, checkpoint, images, labels, target_labels, epsilons,
            session_config):
  """adversarial.evaluate on one run's checkpoint."""
  step_size = FLAGS.bim_step_size or None
  with adversarial.Network(config, images.shape[1:], FLAGS.capsule_loss,
                           FLAGS.spread_margin, FLAGS.fused_votes,
                           session_config) as network:
    try:
      network.restore(checkpoint)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
      raise app.UsageError(
          f'{checkpoint} does not hold the network of its run\'s '
          f'model_config.json: {str(e).strip().splitlines()[0]}') from e
    return adversarial.evaluate(
        network, images, labels, target_labels, epsilons, FLAGS.attacks,
        FLAGS.bim_iterations, step_size, FLAGS.batch_size)


def _metric(name):
  """(key of the record, its label) of the attack `name`."""
  if name.endswith('_targeted'):
    return 'success_rate', 'success rate'
  return 'accuracy', 'accuracy'


def _attack_names():
  return [f'{attack}_{kind}' for attack in FLAGS.attacks
          for kind in ('untargeted', 'targeted')]


def _table(run):
  """The printed lines of one run's results."""
  lines = [f'{run["train_dir"]} ({run["model"]}, {run["checkpoint"]}): '
           f'clean accuracy {run["clean_accuracy"]:.4f} on '
           f'{run["num_images"]} test images',
           f'  {"epsilon":<30}' + ''.join(
               f'{r["epsilon"]:>8g}' for r in run[_attack_names()[0]])]
  for name in _attack_names():
    key, label = _metric(name)
    lines.append(f'  {name.replace("_", " ") + " " + label:<30}' + ''.join(
        f'{r[key]:8.4f}' for r in run[name]))
  return '\n'.join(lines)


def _draw(runs):
  """One figure per attack: its metric against epsilon, a curve per run."""
  paths = []
  for name in _attack_names():
    key, label = _metric(name)
    figure = figures.new_figure((5.5, 3.8))
    axes = figure.subplots()
    for run in runs:
      axes.plot([r['epsilon'] for r in run[name]],
                [r[key] for r in run[name]], marker='o',
                label=f'{run["train_dir"]} ({run["model"]}, clean '
                f'{run["clean_accuracy"]:.1%})')
    axes.set_xlabel('epsilon (L-infinity; pixels in [0, 1])')
    axes.set_ylabel(label if key == 'accuracy' else
                    f'{label} (classified as the target)')
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    attack, kind = name.split('_')
    axes.set_title(f'{attack.upper()}, {kind}, on {runs[0]["num_images"]} '
                   'test images', fontsize=10)
    path = os.path.join(FLAGS.output_dir, f'{name}.png')
    figures.save_atomically(figure, path, 'png')
    paths.append(path)
  return paths


def _settings(dataset_name, epsilons):
  """What attack.json records besides the runs' results."""
  step_size = FLAGS.bim_step_size or (
      f'{adversarial.BIM_TOTAL_STEP} epsilon / bim_iterations')
  return {'dataset': dataset_name, 'epsilons': epsilons,
          'attacks': FLAGS.attacks, 'bim_iterations': FLAGS.bim_iterations,
          'bim_step_size': step_size,
          'target': FLAGS.target, 'seed': FLAGS.seed,
          'capsule_loss': FLAGS.capsule_loss,
          'spread_margin': FLAGS.spread_margin}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  session_config, epsilons = _check_flags()
  runs = _runs()
  dataset_name = runs[0][1].dataset
  try:
    images, labels = _test_images(dataset_name)
  except datasets.download.DataError as e:
    logging.error('%s', e)
    return 2
  target_labels = adversarial.targets(labels, runs[0][1].num_classes,
                                      FLAGS.target, FLAGS.seed)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  record = dict(_settings(dataset_name, epsilons), num_images=len(labels),
                runs=[])
  for train_dir, config, checkpoint in runs:
    logging.info('Attacking %s (%s) on %d images.', checkpoint, config.model,
                 len(labels))
    results = _attack(config, checkpoint, images, labels, target_labels,
                      epsilons, session_config)
    record['runs'].append(dict(
        train_dir=train_dir, model=config.model,
        checkpoint=os.path.basename(checkpoint), num_images=len(labels),
        **results))
    runtime.write_json(os.path.join(FLAGS.output_dir, RESULTS_FILE), record,
                       indent=2)
    print(_table(record['runs'][-1]))
  for path in _draw(record['runs']):
    print(f'figure: {path}')
  print(f'results: {os.path.join(FLAGS.output_dir, RESULTS_FILE)}')
  return 0


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  logging.set_verbosity(logging.INFO)
  app.run(main)
