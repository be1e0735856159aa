"""Example images of the affNIST-style test set, beside the mnist40 test set.

  python src/affnist_figure.py --output=affnist_examples.png

For the first --num_images MNIST test digits draws one column per digit and
two rows: the digit as the mnist40 test set places it on the 40x40 canvas
(`mnist40.test_images(test_set='test')`), and the same digit as the
affNIST-style test set transforms it (`test_set='affnist'`), i.e. exactly the
images that tests.py --test_set=test and --test_set=affnist evaluate on.
Each column is headed by the digit's label and its transformation: rotation
in degrees (positive turns clockwise on the figure, whose y axis points
down), horizontal shear and the scales along x and y. The figure is a PNG,
PDF or SVG file, after the extension of --output.
"""

import os
import textwrap

from absl import app
from absl import flags
from absl import logging
import numpy as np

import datasets
from datasets import affnist
from datasets import mnist
from datasets import mnist40
import figures
import runtime

FLAGS = flags.FLAGS

flags.DEFINE_string('output', None, 'Image file to write (.png, .pdf or '
                    '.svg).')
flags.DEFINE_string('data_dir', None, 'Directory of the MNIST files; default '
                    'data/mnist.')
flags.DEFINE_integer('num_images', 10, 'Digits to draw: the first ones of '
                     'the MNIST test set.')
flags.mark_flag_as_required('output')

ROW_LABELS = ('mnist40\ntest', 'affNIST\nstyle')


def transformation_parameters(affines):
  """The rotation, shear and scales that compose each affine map.

  Inverts affnist.linear_maps, A = rotation x shear x scale: A's first
  column is the rotated x scale, and rotating A back leaves the upper
  triangular [[scale_x, shear scale_y], [0, scale_y]].

  Args:
    affines: [N, 2, 3], as affnist.random_affines gives.

  Returns:
    dict of float64 arrays [N]: rotation (degrees), shear, scale_x,
    scale_y.
  """
  maps = affines[:, :, :2]
  rotation = np.arctan2(maps[:, 1, 0], maps[:, 0, 0])
  cos, sin = np.cos(rotation), np.sin(rotation)
  # R^T A, row by row: [scale_x, shear scale_y] and [0, scale_y].
  upper_right = cos * maps[:, 0, 1] + sin * maps[:, 1, 1]
  scale_y = -sin * maps[:, 0, 1] + cos * maps[:, 1, 1]
  return {'rotation': np.degrees(rotation),
          'shear': upper_right / scale_y,
          'scale_x': np.hypot(maps[:, 0, 0], maps[:, 1, 0]),
          'scale_y': scale_y}


def column_labels(labels, parameters):
  """One heading per column: the label, rotation, shear and scales.

  Args:
    labels: int [N].
    parameters: as transformation_parameters returns.

  Returns:
    list of N str.
  """
  return [f'{label}\n{rotation:+.0f}\N{DEGREE SIGN} sh {shear:+.2f}\n'
          f'{scale_x:.2f} x {scale_y:.2f}'
          for label, rotation, shear, scale_x, scale_y in zip(
              labels, parameters['rotation'], parameters['shear'],
              parameters['scale_x'], parameters['scale_y'])]


def _examples(data_dir, num_images):
  """The first `num_images` digits of both test sets and their headings.

  Returns:
    images: float [2, N, 40, 40] in [0, 1]; row 0 the mnist40 test set,
      row 1 the affNIST-style test set.
    labels: list of N str.

  Raises:
    DataError: missing or corrupt MNIST files.
  """
  placed, labels = mnist40.test_images(data_dir, 'test')
  transformed, _ = mnist40.test_images(data_dir, 'affnist')
  # Image i's transformation depends on the seed, i and image i alone, so
  # the first digits' maps are those of the whole test set.
  digits, _ = mnist.load(data_dir, 'test')
  affines = affnist.random_affines(digits[:num_images], affnist.SEED,
                                   mnist40.CANVAS_SIZE)
  images = np.stack([placed[:num_images], transformed[:num_images]])
  return (images / 255.0,
          column_labels(labels[:num_images],
                        transformation_parameters(affines)))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  image_format = figures.file_format(FLAGS.output, '--output')
  if not 1 <= FLAGS.num_images <= mnist.NUM_TEST_EXAMPLES:
    raise app.UsageError(f'--num_images must be in [1, '
                         f'{mnist.NUM_TEST_EXAMPLES}], got {FLAGS.num_images}')
  if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
    raise app.UsageError(f'--data_dir {FLAGS.data_dir} is not a directory')
  try:
    images, labels = _examples(runtime.data_dir(FLAGS.data_dir, 'mnist40'),
                               FLAGS.num_images)
  except datasets.download.DataError as e:
    logging.error('%s', e)
    return 2
  digits = ('MNIST test digit' if FLAGS.num_images == 1 else
            f'{FLAGS.num_images} MNIST test digits')
  title = f'The first {digits} on the 40x40 canvas'
  try:
    figure = figures.image_grid(
        images, ROW_LABELS, labels,
        # About 10 characters of the title fit above each column.
        textwrap.fill(title, 10 * FLAGS.num_images + 10))
  except ImportError as e:
    raise app.UsageError('drawing needs matplotlib: pip install -r '
                         f'requirements.txt ({e})') from e
  figures.save_atomically(figure, FLAGS.output, image_format)
  logging.info('Wrote %s.', FLAGS.output)
  return 0


if __name__ == '__main__':
  app.run(main)
