"""How much the class capsules' poses vary, and what the decoder makes of it.

  python src/pose_stats.py --train_dir=runs/mnist_R1I2 --gpu=0

Restores a checkpoint of a run (the latest, or --step) and passes the first
--num_images test images through the network. For the capsule of each
image's true class it prints, per pose entry mu^h, the mean magnitude and
the standard deviation across the images of that class (averaged over
classes): a pose that hardly varies within a class carries no
instantiation parameters for a decoder to use. When the run trains the
reconstruction decoder, it prints the decoder's summed squared pixel error
beside the error of the best input-blind guess, each class's mean image.
"""

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import datasets
import evaluation
import model
import runtime

FLAGS = flags.FLAGS

runtime.define_checkpoint_flags()


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
               'poses': tf.reshape(tf.gather(poses, labels, batch_dims=1),
                                   [-1, 16])}
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  session_config, config, checkpoint = runtime.checked_checkpoint_flags(
      FLAGS, model.ModelConfig.load)
  images, labels, poses, reconstructions = _run_network(
      config, session_config, checkpoint)
  magnitude, spread = evaluation.pose_spread(poses, labels)
  print(f'{checkpoint}: true-class poses of {len(labels)} test images')
  print('entry h        ' + ' '.join(f'{h:>6d}' for h in range(16)))
  print('mean |mu^h|    ' + ' '.join(f'{v:6.3f}' for v in magnitude))
  print('within-class sd' + ' '.join(f'{v:6.3f}' for v in spread))
  if reconstructions is not None:
    decoder = evaluation.squared_error(images, reconstructions)
    class_mean = evaluation.squared_error(
        images, evaluation.class_means(images, labels))
    print('reconstruction error (summed squares per image): decoder '
          f'{decoder:.2f}, class-mean image {class_mean:.2f}')


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
