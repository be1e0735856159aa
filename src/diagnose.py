"""What the routing does in a trained network, layer by layer.

  python src/diagnose.py --train_dir=runs/mnist_R0I3 --gpu=0

Restores a checkpoint of a run (the latest, or --step), passes the first
--num_images test images through the network and prints, for every capsule
layer (PrimaryCaps, the ConvCaps layers, the class capsules):

  mean |mu|     mean magnitude of the pose entries, and (a second table)
                of each row of the 4 x 4 poses
  class sd      standard deviation of each pose entry over the images of one
                class, averaged over entries and classes
  a > 0.5       fraction of capsules with activation above 0.5
  sigma^2       mean variance of the last M-step, without the floor, and the
                fraction of variances below the floor
  H / log K     per routing iteration, the entropy of each child's assignments
                over all its parents divided by the log of their number: 1 is
                the uniform start; falling values mean EM concentrates them
                (with --e_step_normalization, within the E-step's units: the
                C types of a slot, or a child's positions for each type)

and writes the same as JSON (--output, default
<train_dir>/diagnostics/step-<step>.json; src/diagnostics.py has the
definitions).
"""

import os

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import datasets
import diagnostics
import model
import runtime

FLAGS = flags.FLAGS

runtime.define_checkpoint_flags()
flags.DEFINE_string('output', None, 'JSON file; default '
                    '<train_dir>/diagnostics/step-<step>.json.')


def _measure(config, session_config, checkpoint):
  """Runs the first --num_images test images; returns (step, images used,
  {layer: {statistic: value}}) in the order of the layers."""
  dataset = datasets.get_dataset(config.dataset)
  with tf.Graph().as_default():
    data, _ = dataset.eval_input(
        runtime.data_dir(FLAGS.data_dir, config.dataset), FLAGS.batch_size)
    images, labels = tf.compat.v1.data.make_one_shot_iterator(data).get_next()
    config.build(images)
    fetches = diagnostics.graph_fetches()
    global_step = tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver()
    sums = {name: {} for name in fetches}
    poses = {name: diagnostics.PoseMoments() for name in fetches}
    seen = 0
    with tf.compat.v1.Session(config=session_config) as session:
      saver.restore(session, checkpoint)
      step = int(session.run(global_step))
      while seen < FLAGS.num_images:
        try:
          batch, batch_labels = session.run([fetches, labels])
        except tf.errors.OutOfRangeError:
          break
        keep = min(len(batch_labels), FLAGS.num_images - seen)
        seen += keep
        for name, values in batch.items():
          poses[name].add(values.pop('poses')[:keep], batch_labels[:keep])
          for key, value in values.items():
            sums[name][key] = sums[name].get(key, 0.0) + np.sum(
                value[..., :keep], axis=-1)
  layers = {}
  for name in fetches:
    stats = {key: (value / seen).tolist() for key, value in sums[name].items()}
    stats['mean_abs_pose'] = poses[name].mean_magnitude()
    stats['mean_abs_pose_rows'] = poses[name].row_magnitudes().tolist()
    stats['within_class_sd'] = poses[name].within_class_spread()
    layers[name] = stats
  return step, seen, layers


def _table(layers, min_variance):
  """The printed table, a line per layer."""
  lines = [f'{"layer":<26} {"mean |mu|":>9} {"class sd":>9} {"a > 0.5":>7} '
           f'{"sigma^2":>9} {"< floor":>7}  H / log K per iteration',
           f'{"":<26} {"":>9} {"":>9} {"":>7} (floor {min_variance:g})']
  for name, stats in layers.items():
    variance = (f'{stats["variance"]:9.2e}' if 'variance' in stats
                else f'{"-":>9}')
    below = (f'{stats["below_floor"]:7.3f}' if 'below_floor' in stats
             else f'{"-":>7}')
    entropy = ' '.join(f'{v:.3f}' for v in stats.get('entropy', [])) or '-'
    lines.append(f'{name:<26} {stats["mean_abs_pose"]:9.2e} '
                 f'{stats["within_class_sd"]:9.2e} {stats["active"]:7.3f} '
                 f'{variance} {below}  {entropy}')
  lines.append(f'\n{"layer":<26} mean |mu| of pose rows 0 / 1 / 2 / 3')
  for name, stats in layers.items():
    lines.append(f'{name:<26} ' + ' '.join(
        f'{value:9.2e}' for value in stats['mean_abs_pose_rows']))
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  session_config, config, checkpoint = runtime.checked_checkpoint_flags(
      FLAGS, model.ModelConfig.load)
  step, seen, layers = _measure(config, session_config, checkpoint)
  routed = (f'{config.iterations} routing iterations' +
            (f', {config.class_layer_iterations} in the class capsules'
             if config.class_layer_iterations != config.iterations else '') +
            (f', ConvCaps E-step over {config.e_step_normalization}'
             if config.e_step_normalization != 'all_parents' else ''))
  print(f'{checkpoint}: {seen} test images, {routed}')
  print(_table(layers, config.min_variance))
  output = FLAGS.output or os.path.join(FLAGS.train_dir, 'diagnostics',
                                        f'step-{step}.json')
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  runtime.write_json(output, {'checkpoint': checkpoint, 'step': step,
                              'num_images': seen,
                              'iterations': config.iterations,
                              'class_iterations':
                                  config.class_layer_iterations,
                              'min_variance': config.min_variance,
                              'e_step_normalization':
                                  config.e_step_normalization,
                              'layers': layers}, indent=2)
  print(f'written to {output}')


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
