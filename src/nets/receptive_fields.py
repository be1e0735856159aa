"""Geometry of convolutional capsule layers: which child sits in which patch.

A capsule layer with a K x K kernel and stride S maps an H x W grid of children
to an OH x OW grid of parents (VALID padding, as in the paper). Every parent
position p sees K * K child positions; a child position may be seen by several
parent positions. The E-step of EM routing normalises a child's assignments
over *all* the parents that receive its vote, so the layer needs the map from
(parent position, kernel offset) to child position, built here once in numpy.
"""

import numpy as np


def output_size(size, kernel_size, stride):
  """Side of a VALID convolution's output; raises if the kernel does not fit."""
  if size < kernel_size:
    raise ValueError(
        f'kernel {kernel_size} does not fit an input of side {size}')
  return (size - kernel_size) // stride + 1


def patch_indices(height, width, kernel_size, stride):
  """Flat child positions seen by each parent position.

  Args:
    height, width: the child grid.
    kernel_size: K.
    stride: S.

  Returns:
    int32 array [OH * OW, K * K]: entry [p, k] is the flat position
    (row * width + column) of the child at kernel offset k (row-major) of
    parent position p (row-major).
  """
  out_height = output_size(height, kernel_size, stride)
  out_width = output_size(width, kernel_size, stride)
  rows = (np.arange(out_height)[:, None] * stride +
          np.arange(kernel_size)[None, :])  # [OH, K]
  cols = (np.arange(out_width)[:, None] * stride +
          np.arange(kernel_size)[None, :])  # [OW, K]
  flat = rows[:, None, :, None] * width + cols[None, :, None, :]
  return flat.reshape(out_height * out_width,
                      kernel_size * kernel_size).astype(np.int32)


def child_ids(indices, num_types):
  """Identity of the child in each (parent position, input slot).

  Args:
    indices: int array [P, K * K] from `patch_indices`.
    num_types: B, the number of child capsule types per position.

  Returns:
    int32 array [P, K * K * B]: slot i = k * B + b of parent position p holds
    child (indices[p, k] * B + b).
  """
  ids = indices[:, :, None] * num_types + np.arange(num_types)[None, None, :]
  return ids.reshape(indices.shape[0], -1).astype(np.int32)


def grid_centres(height, width):
  """Scaled (row, column) of the centre of each cell of an H x W grid.

  Returns:
    float32 array [H * W, 2] with entries in (0, 1): ((r + 0.5) / H,
    (c + 0.5) / W) for the cell at row r, column c, row-major.
  """
  rows = (np.arange(height) + 0.5) / height
  cols = (np.arange(width) + 0.5) / width
  grid = np.stack(np.meshgrid(rows, cols, indexing='ij'), axis=-1)
  return grid.reshape(height * width, 2).astype(np.float32)
