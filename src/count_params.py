"""Prints the trainable parameters of capsules_v0 or the cnn_baseline, layer
by layer.

  python src/count_params.py                            # the paper's network
  python src/count_params.py --A=64 --B=8 --C=16 --D=16 # its small network
  python src/count_params.py --model=cnn_baseline --dataset=mnist40
"""

import collections

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import datasets
import model
import runtime

FLAGS = flags.FLAGS

flags.DEFINE_enum('dataset', 'mnist', sorted(datasets.DATASETS), 'Dataset.')
runtime.define_network_flags()
flags.DEFINE_float('reconstruction_weight', 0.0, '> 0 counts the decoder.')
flags.DEFINE_enum('conv1_padding', None, list(model.PADDINGS),
                  'ReLU Conv1 padding; default that of the dataset.')
flags.DEFINE_enum('model', 'capsules', list(model.MODELS), 'Network.')
flags.DEFINE_integer('cnn_channels', 32, 'cnn_baseline: first convolution\'s '
                     'channels.')
flags.DEFINE_integer('cnn_hidden', 1024, 'cnn_baseline: hidden units.')


def count(config, image_shape):
  """{layer scope: parameter count} of the network (and decoder)."""
  with tf.Graph().as_default():
    images = tf.compat.v1.placeholder(tf.float32, (None,) + image_shape)
    poses, _ = config.build(images)
    if config.reconstruction_weight > 0:
      config.reconstruct(poses, tf.zeros([1], tf.int32), image_shape)
    counts = collections.OrderedDict()
    for variable in tf.compat.v1.trainable_variables():
      scope = variable.op.name.rsplit('/', 1)[0]
      counts[scope] = counts.get(scope, 0) + int(np.prod(variable.shape))
  return counts


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  runtime.check_network_flags(FLAGS)
  dataset = datasets.get_dataset(FLAGS.dataset)
  try:
    config = model.ModelConfig(
        dataset=FLAGS.dataset, num_classes=dataset.NUM_CLASSES, a=FLAGS.A,
        b=FLAGS.B, c=FLAGS.C, d=FLAGS.D,
        reconstruction_weight=FLAGS.reconstruction_weight,
        conv1_padding=(FLAGS.conv1_padding or
                       model.default_conv1_padding(FLAGS.dataset)),
        model=FLAGS.model, cnn_channels=FLAGS.cnn_channels,
        cnn_hidden=FLAGS.cnn_hidden)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if config.model == 'capsules':
    grids = config.geometry(*dataset.IMAGE_SHAPE[:2])
    print(f'geometry ({config.conv1_padding} ReLU Conv1): ' + ' -> '.join(
        f'{name} {h}x{w}' for name, h, w in grids) +
          f' -> class_caps ({grids[-1][1] * grids[-1][2] * config.d} '
          'children)')
  counts = count(config, tuple(dataset.IMAGE_SHAPE))
  for scope, n in counts.items():
    print(f'{scope:45s} {n:>9,d}')
  print(f'{"total":45s} {sum(counts.values()):>9,d}')


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
