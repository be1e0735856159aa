"""affnist_figure.py as a user runs it: the example figure of the
affNIST-style test set, and clear usage errors for a bad --output."""

import os

from matplotlib import image as image_lib
import pytest

from datasets import mnist
import script_util

DPI = 120  # of figures.save_atomically


def test_draws_a_png_of_both_test_sets(tmp_path):
  output = tmp_path / 'examples.png'
  script_util.succeeded(script_util.run(
      'affnist_figure.py', f'--output={output}', '--num_images=4',
      f'--data_dir={script_util.mnist_dir()}'))
  image = image_lib.imread(output)  # [H, W, 4] floats in [0, 1]
  height, width = image.shape[:2]
  # figures.image_grid: (0.9 x 4 + 1.2) x (0.9 x 2 + 0.6) inches.
  assert 0.8 * 4.8 * DPI <= width <= 1.5 * 4.8 * DPI, image.shape
  assert 0.8 * 2.4 * DPI <= height <= 1.5 * 2.4 * DPI, image.shape
  gray = image[..., :3].mean(axis=-1)
  assert gray.min() < 0.1 and gray.max() > 0.9  # black canvases, white ink
  assert os.listdir(tmp_path) == ['examples.png']  # no .tmp left behind


@pytest.mark.parametrize('name, message', [
    ('examples.jpg', 'name a .png, .pdf or .svg file'),
    (os.path.join('missing', 'examples.png'), 'does not exist'),
])
def test_a_bad_output_is_a_usage_error(tmp_path, name, message):
  output = tmp_path / name
  script_util.failed(
      script_util.run('affnist_figure.py', f'--output={output}',
                      '--num_images=4'),
      '--output', message)
  assert not output.exists()


def test_output_is_required():
  script_util.failed(script_util.run('affnist_figure.py', '--num_images=4'),
                     '--output')


def test_corrupt_mnist_files_are_a_clear_error(tmp_path):
  """The DataError of datasets.mnist, logged, without a traceback (no
  download: the files are present, only wrong)."""
  for name in mnist.FILE_MD5:
    (tmp_path / name).write_bytes(b'not MNIST')
  output = tmp_path / 'examples.png'
  script_util.failed(
      script_util.run('affnist_figure.py', f'--output={output}',
                      f'--data_dir={tmp_path}'),
      'MD5', 'delete it to download again')
  assert not output.exists()
