"""Classifies image files of digits with a trained MNIST network.

  python src/predict.py seven.png photo.jpg
  python src/predict.py --train_dir=runs/mnist seven.png

Restores the latest checkpoint (or --step) of --train_dir, by default the
pretrained model in pretrained/mnist, and prints for each file its predicted
class, how the file was converted and the activations of the ten class
capsules. A 28x28 grayscale digit is used as is; any other PNG or JPEG is
converted to grayscale, inverted if it is dark on light (mean intensity
> 0.5; MNIST digits are white on black) and resized to fit 28x28 keeping its
aspect ratio, padded with black (src/image_files.py). A file that cannot be
read or decoded is reported and the others are still classified; the exit
code is then 1.
"""

import collections
import os
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import image_files
import runtime
import serving

FLAGS = flags.FLAGS

DEFAULT_TRAIN_DIR = os.path.join('pretrained', 'mnist')

# The outcome for one file: Converted, class and activations [J], or error.
Result = collections.namedtuple(
    'Result', ['converted', 'predicted', 'activations', 'error'],
    defaults=[None, None, None, None])

flags.DEFINE_string('train_dir', DEFAULT_TRAIN_DIR,
                    'Directory of the run whose network classifies the '
                    'images (model_config.json and checkpoints).')
flags.DEFINE_integer('step', None, 'Checkpoint step; default the latest.')
flags.DEFINE_string('gpu', '0', 'GPUs to use (visible_device_list). Without '
                    'a GPU the CPU is used.')
flags.DEFINE_integer('batch_size', 100, 'Images per forward pass.')
flags.DEFINE_bool('fused_votes', True, 'Route the ConvCaps layers with the '
                  'fused CPU kernels (same results).')


def _check_flags(argv):
  """The session config and (config, checkpoint) of the run.

  Raises:
    app.UsageError: no file is given, a flag is invalid, or the run is
      missing or not an MNIST run.
  """
  if len(argv) < 2:
    raise app.UsageError('give the image files to classify, e.g. '
                         'python src/predict.py seven.png')
  if FLAGS.batch_size < 1:
    raise app.UsageError(f'--batch_size must be >= 1, got {FLAGS.batch_size}')
  try:
    session_config = runtime.session_config(FLAGS.gpu)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  missing_hint = None
  if FLAGS.train_dir == DEFAULT_TRAIN_DIR:
    missing_hint = (
        f'no pretrained model in {DEFAULT_TRAIN_DIR}: train one (python '
        'src/train.py --train_dir=runs/mnist) and pass --train_dir=runs/mnist, '
        'or pass --train_dir=<a directory written by train.py>.')
  config, checkpoint = serving.find_run(FLAGS.train_dir, FLAGS.step,
                                        missing_hint)
  if serving.image_shape(config) != image_files.IMAGE_SHAPE:
    raise app.UsageError(
        f'{FLAGS.train_dir} holds a {config.dataset} network; predict.py '
        'classifies MNIST digits (for other inputs, export the network with '
        'export.py and feed it the dataset\'s images).')
  return session_config, config, checkpoint


def _read(path):
  """The bytes of the file at `path`; OSError with a short reason."""
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise OSError(e.strerror or str(e)) from None


def _convert_all(session, converter, paths):
  """For each path, (image_files.Converted, None) or (None, why it failed)."""
  results = []
  for path in paths:
    try:
      results.append((converter.convert(session, _read(path)), None))
    except OSError as e:
      results.append((None, f'cannot read: {e}'))
    except image_files.NotAnImageError as e:
      results.append((None, f'not a PNG or JPEG image ({e})'))
  return results


def _classify(session, images, outputs, batch):
  """Runs the network on a batch [N, 28, 28, 1] in slices of --batch_size.

  Args:
    session: the session of the restored network.
    images: its input placeholder [None, 28, 28, 1].
    outputs: its outputs (serving.outputs).
    batch: float32 [N, 28, 28, 1].

  Returns:
    classes int64 [N] and activations [N, J].
  """
  fetches = [outputs['classes'], outputs['activations']]
  values = [session.run(fetches, {images: batch[i:i + FLAGS.batch_size]})
            for i in range(0, len(batch), FLAGS.batch_size)]
  return (np.concatenate([v[0] for v in values]),
          np.concatenate([v[1] for v in values]))


def _report(path, result):
  """The printed lines of one classified file."""
  values = ' '.join(f'{k}:{v:.4f}' for k, v in enumerate(result.activations))
  return (f'{path}: class {result.predicted}\n'
          f'  input: {result.converted.note}\n'
          f'  activations: {values}')


def _predict(session_config, config, checkpoint, paths):
  """Converts and classifies the files.

  Returns:
    A Result for each path.
  """
  with tf.Graph().as_default():
    converter = image_files.Converter()
    images = tf.compat.v1.placeholder(
        tf.float32, (None,) + serving.image_shape(config), name='images')
    outputs = serving.outputs(config, images, FLAGS.fused_votes)
    with tf.compat.v1.Session(config=session_config) as session:
      serving.restore(session, checkpoint, FLAGS.train_dir)
      converted = _convert_all(session, converter, paths)
      good = [c for c, _ in converted if c is not None]
      if good:
        classes, activations = _classify(
            session, images, outputs, np.stack([c.image for c in good]))
  results, index = [], 0
  for image, error in converted:
    if image is None:
      results.append(Result(error=error))
    else:
      results.append(Result(image, classes[index], activations[index]))
      index += 1
  return results


def main(argv):
  session_config, config, checkpoint = _check_flags(argv)
  paths = argv[1:]
  results = _predict(session_config, config, checkpoint, paths)
  print(f'model: {checkpoint}')
  failures = 0
  for path, result in zip(paths, results):
    if result.error:
      print(f'{path}: error: {result.error}', file=sys.stderr)
      failures += 1
    else:
      print(_report(path, result))
  if failures:
    print(f'{failures} of {len(paths)} files could not be classified.',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
