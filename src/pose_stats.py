"""How much the class capsules' poses vary, and what the decoder makes of it.

  python src/pose_stats.py --train_dir=runs/mnist_R1I2 --gpu=0

Restores a checkpoint of a run (the latest, or --step) and passes the first
--num_images test images through the network. For the capsule of each
image's true class it prints, per pose entry mu^h, the mean magnitude and
the standard deviation across the images of that class (averaged over
classes): a pose that hardly varies within a class carries no
instantiation parameters for a decoder to use. Whatever their scale, how
much of the image the entries determine is measured by a linear read-out
(evaluation.linear_readout_error): per class, the best affine map from the
entries (all 16, the first row, the other three rows, none: the class mean)
to the pixels, fitted on a random half of the images and measured on the
other half (17 parameters per class: use thousands of images). When the
run trains the reconstruction decoder, it prints the decoder's summed
squared pixel error beside the error of the best input-blind guess, each
class's mean image, and with --figures_dir draws

  reconstructions.png  the first test image of each class and its
                       reconstruction;
  perturbations.png    the reconstruction of the first test image as each
                       of the 16 pose entries is moved by -2 ... +2 times
                       its standard deviation over the images, the others
                       fixed (after Sabour et al. 2017, Figure 4, which
                       moves capsule entries by -0.25 ... 0.25; the scale
                       of our poses is learned, hence the standard
                       deviations).
"""

import os


from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import datasets
import evaluation
import figures
import model
import runtime
from nets import decoder

FLAGS = flags.FLAGS

runtime.define_checkpoint_flags()
flags.DEFINE_string('figures_dir', None, 'Draw reconstructions.png and '
                    'perturbations.png here (runs with a decoder).')

PERTURBATIONS = np.linspace(-2.0, 2.0, 9)  # in standard deviations
READOUTS = (('class mean', ()), ('row 0', range(4)), ('rows 1-3', range(4, 16)),
            ('all 16', range(16)))


def _run_network(config, session_config, checkpoint):
  """Images [N, H, W, C], labels [N], true-class poses [N, 16] and
  reconstructions [N, H, W, C] (None without a decoder) of the first
  N = --num_images test images, in batches of --batch_size."""
  dataset = datasets.get_dataset(config.dataset)
  with tf.Graph().as_default():
    data, _ = dataset.eval_input(
        runtime.data_dir(FLAGS.data_dir, config.dataset), FLAGS.batch_size)
    images, labels = tf.compat.v1.data.make_one_shot_iterator(data).get_next()
    poses, _ = config.build(images)
    fetches = {'images': images, 'labels': labels,
               'poses': decoder.chosen_poses(poses, labels)}
    if config.reconstruction_weight > 0:
      fetches['reconstructions'] = config.reconstruct(poses, labels,
                                                      images.shape[1:])
    tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver()
    batches, seen = [], 0
    with tf.compat.v1.Session(config=session_config) as session:
      saver.restore(session, checkpoint)
      while seen < FLAGS.num_images:
        try:
          batches.append(session.run(fetches))
        except tf.errors.OutOfRangeError:
          break
        seen += len(batches[-1]['labels'])
  values = {k: np.concatenate([b[k] for b in batches])[:FLAGS.num_images]
            for k in fetches}
  return (values['images'], values['labels'], values['poses'],
          values.get('reconstructions'))


def _draw_figures(config, session_config, checkpoint, images, labels, poses):
  """reconstructions.png and perturbations.png in --figures_dir."""
  os.makedirs(FLAGS.figures_dir, exist_ok=True)
  firsts = [int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)]
  reconstructions = evaluation.decode_poses(
      config, session_config, checkpoint, poses[firsts], labels[firsts],
      images.shape[1:])
  grid = np.stack([images[firsts], reconstructions])
  figures.save_atomically(figures.image_grid(
      grid, ['image', 'decoded'], [str(labels[i]) for i in firsts],
      'first test image of each class and its reconstruction'),
      os.path.join(FLAGS.figures_dir, 'reconstructions.png'))
  spread = poses.std(axis=0)  # [16]
  steps = PERTURBATIONS[None, :, None] * np.diag(spread)[:, None, :]
  perturbed = (poses[0][None, None, :] + steps).reshape(-1, 16).astype(
      np.float32)
  decoded = evaluation.decode_poses(
      config, session_config, checkpoint, perturbed,
      np.full(len(perturbed), labels[0]), images.shape[1:])
  figures.save_atomically(figures.image_grid(
      decoded.reshape((16, len(PERTURBATIONS)) + images.shape[1:]),
      [f'entry {h}' for h in range(16)],
      [f'{d:+g} sd' for d in PERTURBATIONS],
      f'test image 0 (a {labels[0]}): one pose entry moved at a time'),
      os.path.join(FLAGS.figures_dir, 'perturbations.png'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  session_config, config, checkpoint = runtime.checked_checkpoint_flags(
      FLAGS, model.ModelConfig.load)
  images, labels, poses, reconstructions = _run_network(
      config, session_config, checkpoint)
  magnitude, spread = evaluation.pose_spread(poses, labels)
  print(f'{checkpoint}: true-class poses of {len(labels)} test images')
  print('entry h        ' + ''.join(f'{h:>9d}' for h in range(16)))
  print('mean |mu^h|    ' + ''.join(f'{v:9.2e}' for v in magnitude))
  print('within-class sd' + ''.join(f'{v:9.2e}' for v in spread))
  readout = {name: evaluation.linear_readout_error(poses, images, labels,
                                                   entries)
             for name, entries in READOUTS}
  ratio = np.divide(readout['all 16'], readout['class mean'])
  print('linear read-out, per class, held-out half (summed squares per '
        'image): ' + ', '.join(f'{name} {error:.2f}'
                               for name, error in readout.items()) +
        f'; all 16 / class mean {ratio:.3f}')
  if reconstructions is not None:
    decoder_error = evaluation.squared_error(images, reconstructions)
    class_mean = evaluation.squared_error(
        images, evaluation.class_means(images, labels))
    print('reconstruction error (summed squares per image): decoder '
          f'{decoder_error:.2f}, class-mean image {class_mean:.2f}')
    if FLAGS.figures_dir:
      _draw_figures(config, session_config, checkpoint, images, labels,
                    poses)
      print(f'figures: {FLAGS.figures_dir}')
  elif FLAGS.figures_dir:
    raise app.UsageError(f'{FLAGS.train_dir} has no decoder '
                         '(--reconstruction_weight=0): nothing to draw.')


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
