"""An affNIST-style test set, made deterministically from MNIST digits.

affNIST (Tijmen Tieleman, https://www.cs.toronto.edu/~tijmen/affNIST/)
places each MNIST digit on a 40x40 canvas under a random affine
transformation. Sabour, Frosst & Hinton (2017, "Dynamic routing between
capsules", section 5.2) train a capsule network and a CNN on MNIST digits
placed at random on a 40x40 black canvas (translations only: mnist40.py) and
test both on affNIST, to measure how far each generalises to affine
transformations it never saw in training. This module makes such a test set
from the MNIST test set and a seed, instead of downloading affNIST: the same
seed gives the same bytes on every machine.

Each digit gets its own transformation, every parameter drawn uniformly and
independently, within the ranges of affNIST's page:

  rotation     within +-20 degrees (MAX_ROTATION_DEGREES);
  shear        within +-0.2 (MAX_SHEAR), horizontal: x' = x + s y;
  scale        0.8 to 1.2 (SCALE_RANGE), along each axis independently;
  translation  anywhere that keeps the transformed digit whole on the
               40x40 canvas.

The order of composition (scale, then shear, then rotation, about the centre
of the 28x28 image), the translation rule and bilinear resampling are this
module's choices. The translation is drawn uniformly among the positions
where every pixel the resampling can make non-zero lies on the canvas; a
digit too large for that has its ink centred on the canvas, and may lose
its edges.

Coordinates: x is the column and y the row of a pixel's centre; the linear
part acts on offsets from the centre of the source image.
"""

import math

import numpy as np

CANVAS_SIZE = 40
MAX_ROTATION_DEGREES = 20.0
MAX_SHEAR = 0.2
SCALE_RANGE = (0.8, 1.2)
# The seed of the test set that mnist40.eval_input(test_set='affnist') and
# tests.py --test_set=affnist use.
SEED = 2017
# Images warped at a time (memory: a few arrays of chunk x 1600 floats).
_CHUNK = 1000


def random_parameters(uniforms):
  """The linear part of each transformation, from uniform draws.

  Args:
    uniforms: [N, 4] in [0, 1).

  Returns:
    dict of float64 arrays [N]: rotation (radians), shear, scale_x, scale_y.
  """
  def within(column, low, high):
    return low + uniforms[:, column] * (high - low)

  limit = math.radians(MAX_ROTATION_DEGREES)
  return {'rotation': within(0, -limit, limit),
          'shear': within(1, -MAX_SHEAR, MAX_SHEAR),
          'scale_x': within(2, *SCALE_RANGE),
          'scale_y': within(3, *SCALE_RANGE)}


def linear_maps(rotation, shear, scale_x, scale_y):
  """Rotation x shear x scale, acting on (x, y) column vectors.

  Args:
    rotation, shear, scale_x, scale_y: arrays [N].

  Returns:
    float64 [N, 2, 2].
  """
  cos, sin = np.cos(rotation), np.sin(rotation)
  zeros, ones = np.zeros_like(shear), np.ones_like(shear)
  rotations = np.stack([np.stack([cos, -sin], -1),
                        np.stack([sin, cos], -1)], -2)
  shears = np.stack([np.stack([ones, shear], -1),
                     np.stack([zeros, ones], -1)], -2)
  scales = np.stack([np.stack([scale_x, zeros], -1),
                     np.stack([zeros, scale_y], -1)], -2)
  return rotations @ shears @ scales


def _ink_corners(images):
  """Corners of the region where each image's resampling is non-zero.

  Bilinear resampling reads a source point from the four pixel centres
  around it, so it is non-zero only within one pixel of an inked pixel.

  Args:
    images: uint8 [N, H, W].

  Returns:
    float64 [N, 4, 2], (x, y) offsets from the image centre; the whole
    image's for a blank image.
  """
  height, width = images.shape[1:]
  rows, columns = images.any(axis=2), images.any(axis=1)
  blank = ~rows.any(axis=1)
  rows[blank], columns[blank] = True, True
  top, bottom = rows.argmax(1), height - 1 - rows[:, ::-1].argmax(1)
  left, right = columns.argmax(1), width - 1 - columns[:, ::-1].argmax(1)
  xs = np.stack([left - 1, right + 1], -1) - (width - 1) / 2
  ys = np.stack([top - 1, bottom + 1], -1) - (height - 1) / 2
  return np.stack([np.stack([xs[:, i], ys[:, j]], -1)
                   for i in (0, 1) for j in (0, 1)], 1)


def random_affines(images, seed=SEED, canvas_size=CANVAS_SIZE):
  """Draws each image's transformation onto the canvas.

  Args:
    images: uint8 [N, H, W].
    seed: of the numpy Generator that draws every parameter; image i's
      transformation depends on the seed, i and images[i] alone, not on
      the images that follow.
    canvas_size: S.

  Returns:
    float64 [N, 2, 3]: [A | t] maps the offset of a source pixel from the
    source centre, (x, y), to its canvas position A (x, y) + t.
  """
  # One row of draws per image: rotation, shear, scales, translations.
  uniforms = np.random.default_rng(seed).uniform(size=(len(images), 6))
  maps = linear_maps(**random_parameters(uniforms[:, :4]))
  corners = np.einsum('nij,nkj->nki', maps, _ink_corners(images))
  lowest = -corners.min(axis=1)  # [N, 2]: t must be at least this ...
  highest = canvas_size - 1 - corners.max(axis=1)  # ... and at most this.
  fits = lowest <= highest
  translations = np.where(
      fits, lowest + uniforms[:, 4:] * (highest - lowest),
      (lowest + highest) / 2)
  return np.concatenate([maps, translations[..., None]], axis=-1)


def warp(images, affines, canvas_size=CANVAS_SIZE):
  """Resamples each image onto its canvas, bilinearly, black outside.

  Args:
    images: uint8 [N, H, W].
    affines: [N, 2, 3], as random_affines gives.
    canvas_size: S.

  Returns:
    uint8 [N, S, S].
  """
  height, width = images.shape[1:]
  centre = np.array([(width - 1) / 2, (height - 1) / 2])
  xs, ys = np.meshgrid(np.arange(canvas_size), np.arange(canvas_size))
  canvas = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
  outputs = []
  for start in range(0, len(images), _CHUNK):
    chunk = slice(start, start + _CHUNK)
    inverses = np.linalg.inv(affines[chunk, :, :2])
    offsets = canvas[None] - affines[chunk, None, :, 2]  # [n, S*S, 2]
    source = np.einsum('nij,npj->npi', inverses, offsets) + centre
    outputs.append(_bilinear(images[chunk], source))
  return np.concatenate(outputs).reshape(-1, canvas_size, canvas_size)


def _bilinear(images, points):
  """Bilinear samples of images [n, H, W] at points [n, P, 2] (x, y), zero
  beyond the image; rounded to uint8 [n, P]."""
  height, width = images.shape[1:]
  padded = np.pad(images.astype(np.float32), ((0, 0), (1, 1), (1, 1)))
  floor = np.floor(points)
  fraction = (points - floor).astype(np.float32)
  x0, y0 = floor[..., 0].astype(np.int64), floor[..., 1].astype(np.int64)
  index = np.arange(len(images))[:, None]
  values = np.zeros(points.shape[:2], np.float32)
  for dx in (0, 1):
    for dy in (0, 1):
      # Padded coordinates; anything beyond the image reads the black
      # border.
      column = np.clip(x0 + dx + 1, 0, width + 1)
      row = np.clip(y0 + dy + 1, 0, height + 1)
      weight = ((fraction[..., 0] if dx else 1 - fraction[..., 0]) *
                (fraction[..., 1] if dy else 1 - fraction[..., 1]))
      values += weight * padded[index, row, column]
  return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def transform(images, seed=SEED, canvas_size=CANVAS_SIZE):
  """The affNIST-style version of `images`: each digit under its own random
  affine transformation on a canvas_size x canvas_size canvas.

  Args:
    images: uint8 [N, H, W], e.g. the MNIST test digits; their labels are
      unchanged.
    seed: the same seed gives the same bytes.
    canvas_size: S.

  Returns:
    uint8 [N, S, S].
  """
  return warp(images, random_affines(images, seed, canvas_size), canvas_size)
