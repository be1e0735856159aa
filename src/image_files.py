"""Image files as MNIST inputs: what predict.py feeds the network.

An MNIST image is a 28x28 grayscale digit, white on black, scaled to float32
in [0, 1] as `datasets.mnist` does (uint8 / 255). A file is converted to
that with TensorFlow's decoders (tf.io.decode_image: PNG, JPEG, and also
GIF (first frame), BMP and WebP):

  1. decoded to uint8 and scaled to [0, 1];
  2. transparency (grayscale + alpha, RGBA) composited over white, as an
     image viewer shows it;
  3. colour to grayscale with tf.image.rgb_to_grayscale (ITU-R 601 luma);
  4. inverted (1 - x) if it looks dark on light: mean intensity > 0.5;
  5. unless already 28x28, resized to fit 28x28 keeping its aspect ratio
     (bilinear, antialiased) and padded with black, i.e. background, on the
     short side (tf.image.resize_with_pad).

A 28x28 grayscale file that is light on dark therefore reaches the network
exactly as the MNIST test images do. Each conversion comes with a note that
says which steps applied.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from datasets import mnist

IMAGE_SHAPE = tuple(mnist.IMAGE_SHAPE)
HEIGHT, WIDTH, CHANNELS = IMAGE_SHAPE
# Mean intensity in [0, 1] above which an image is taken as dark on light.
INVERT_ABOVE = 0.5
_COLOUR_NAMES = {1: 'grayscale', 2: 'grayscale with alpha', 3: 'RGB',
                 4: 'RGBA'}


class NotAnImageError(ValueError):
  """The bytes are not an image TensorFlow can decode."""


@dataclasses.dataclass(frozen=True)
class Converted:
  """One converted file.

  Attributes:
    image: float32 [28, 28, 1] in [0, 1], white on black.
    height, width, channels: of the decoded file.
    mean: mean intensity of its grayscale version, in [0, 1], before any
      inversion.
  """
  image: np.ndarray
  height: int
  width: int
  channels: int
  mean: float

  @property
  def inverted(self):
    return self.mean > INVERT_ABOVE

  @property
  def note(self):
    """How the file was converted, e.g. '28x28 grayscale, used as is'."""
    steps = []
    if self.channels in (2, 4):
      steps.append('transparency composited over white')
    if self.channels >= 3:
      steps.append('converted to grayscale')
    if self.inverted:
      steps.append(f'inverted (dark on light: mean intensity '
                   f'{self.mean:.2f} > {INVERT_ABOVE})')
    if (self.height, self.width) != (HEIGHT, WIDTH):
      steps.append(f'resized to fit {HEIGHT}x{WIDTH} keeping the aspect ratio '
                   'and padded with black')
    return (f'{self.height}x{self.width} {_COLOUR_NAMES[self.channels]}, ' +
            (', '.join(steps) or 'used as is'))


class Converter:
  """The conversion graph, built once in the current graph and run per file."""

  def __init__(self):
    self._contents = tf.compat.v1.placeholder(tf.string, [], name='file')
    decoded = tf.io.decode_image(self._contents, dtype=tf.uint8,
                                 expand_animations=False)
    gray = _grayscale(tf.cast(decoded, tf.float32) / 255.0)
    mean = tf.reduce_mean(gray)
    gray = tf.where(mean > INVERT_ABOVE, 1.0 - gray, gray)
    self._fetches = {'image': _fit(gray), 'shape': tf.shape(decoded),
                     'mean': mean}

  def convert(self, session, contents):
    """Converts the bytes of one file.

    Args:
      session: a tf.compat.v1.Session of the graph the converter is in.
      contents: bytes of the file.

    Returns:
      Converted.

    Raises:
      NotAnImageError: the bytes are not an image tf.io.decode_image
        reads, or are corrupt.
    """
    try:
      values = session.run(self._fetches, {self._contents: contents})
    except tf.errors.InvalidArgumentError as e:
      raise NotAnImageError(_reason(e.message)) from None
    height, width, channels = (int(v) for v in values['shape'])
    return Converted(values['image'], height, width, channels,
                     float(values['mean']))


def _grayscale(image):
  """float32 [H, W, C] in [0, 1], C in 1..4 (gray, gray + alpha, RGB, RGBA)
  -> [H, W, 1]: transparency over white, then luma."""
  def over_white(colour, alpha):
    return colour * alpha + (1.0 - alpha)
  return tf.switch_case(tf.shape(image)[-1] - 1, [
      lambda: image[..., :1],
      lambda: over_white(image[..., :1], image[..., 1:2]),
      lambda: tf.image.rgb_to_grayscale(image[..., :3]),
      lambda: tf.image.rgb_to_grayscale(
          over_white(image[..., :3], image[..., 3:4])),
  ])


def _fit(gray):
  """[H, W, 1] -> [28, 28, 1]: as is when 28x28, else resized with its
  aspect ratio kept and padded with zeros."""
  size = tf.shape(gray)[:2]
  same = tf.reduce_all(tf.equal(size, [HEIGHT, WIDTH]))
  image = tf.cond(
      same, lambda: tf.identity(gray),
      lambda: tf.image.resize_with_pad(gray, HEIGHT, WIDTH, antialias=True))
  return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0),
                         [HEIGHT, WIDTH, CHANNELS])


def _reason(message):
  """The decoder's own words in a TensorFlow error message (e.g. 'Unknown
  image file format. ...'), without the graph's node and call stack."""
  lines = [line.strip() for line in message.splitlines()]
  reasons = [line for line in lines if line and not line.startswith(
      ('Graph execution error', 'Detected at node', 'File ', 'Node:', '[['))]
  return reasons[-1] if reasons else message.strip()
