"""Figures of the scripts (report.py, pose_stats.py), drawn with matplotlib's
Agg canvas: no display needed, and pyplot's global state left alone.

matplotlib is imported inside the functions, so the scripts' text output
needs no matplotlib.
"""

import os

from absl import app

FORMATS = ('png', 'pdf', 'svg')


def file_format(path, flag='--plot'):
  """The image format named by the extension of `path`.

  Raises:
    app.UsageError: the extension is not one of FORMATS, or the directory
      does not exist.
  """
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise app.UsageError(f'{flag} {path}: directory {directory} does not '
                         'exist')
  extension = os.path.splitext(path)[1].lstrip('.').lower()
  if extension not in FORMATS:
    raise app.UsageError(f'{flag} {path}: name a .png, .pdf or .svg file')
  return extension


def new_figure(figsize):
  """An empty matplotlib Figure on an Agg canvas."""
  # pylint: disable=import-outside-toplevel
  from matplotlib import figure as figure_lib
  from matplotlib.backends import backend_agg
  # pylint: enable=import-outside-toplevel
  figure = figure_lib.Figure(figsize=figsize, layout='constrained')
  backend_agg.FigureCanvasAgg(figure)
  return figure


def save_atomically(figure, path, image_format=None):
  """Writes the figure to `path`.tmp, then renames it into place, so that a
  reader never sees half an image."""
  image_format = image_format or file_format(path)
  temporary = path + '.tmp'
  try:
    with open(temporary, 'wb') as f:
      figure.savefig(f, format=image_format, dpi=120)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def image_grid(images, row_labels=(), column_labels=(), title=None):
  """A figure of grayscale images in a grid.

  Args:
    images: [rows, columns, H, W] or [rows, columns, H, W, 1], values in
      about [0, 1] (clipped).
    row_labels, column_labels: text beside the rows and above the columns.
    title: of the figure.

  Returns:
    a matplotlib Figure.
  """
  rows, columns = images.shape[:2]
  figure = new_figure((0.9 * columns + 1.2, 0.9 * rows + 0.6))
  axes = figure.subplots(rows, columns, squeeze=False)
  for r in range(rows):
    for c in range(columns):
      image = images[r, c].reshape(images.shape[2], images.shape[3])
      axes[r, c].imshow(image.clip(0, 1), cmap='gray', vmin=0, vmax=1)
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
  for r, label in enumerate(row_labels):
    axes[r, 0].set_ylabel(label, rotation=0, ha='right', va='center')
  for c, label in enumerate(column_labels):
    axes[0, c].set_title(label, fontsize=8)
  if title:
    figure.suptitle(title)
  return figure
