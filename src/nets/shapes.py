"""Static sizes as Python ints, under TF2 behaviour or after
`tf.compat.v1.disable_v2_behavior()`.

With TF2 behaviour the entries of a `tf.TensorShape` are ints (or None); after
`disable_v2_behavior()` they are `tf.compat.v1.Dimension`s, which refuse
arithmetic with floats (2.0 / fan_in) and numpy (np.arange(height)). The
layers read every static size through these functions, so they build the
same graph in both modes.
"""

import tensorflow as tf


def static_sizes(value, axes, name):
  """The static sizes of `value` along `axes`, as ints.

  Args:
    value: a tensor, or anything with a `shape` (e.g. fused_votes.FusedVotes).
    axes: the axes to read; negative axes count from the end.
    name: what needs them, for the error message.

  Returns:
    a list of ints, one per axis.

  Raises:
    ValueError: a size is not known when the graph is built.
  """
  shape = tf.TensorShape(value.shape)
  sizes = [tf.compat.dimension_value(shape[axis]) for axis in axes]
  if any(size is None for size in sizes):
    raise ValueError(f'{name} needs the static sizes of axes {list(axes)} of '
                     f'its input; got shape {shape}')
  return sizes


def static_size(value, axis, name):
  """The static size of `value` along `axis`, as an int (see static_sizes)."""
  return static_sizes(value, [axis], name)[0]


def as_ints(values, name):
  """A list of ints from a layer argument such as [KH, KW, in, out].

  Args:
    values: ints, or Dimensions read from a shape (x.shape[-1] after
      `disable_v2_behavior()`).
    name: the argument, for the error message.

  Raises:
    ValueError: an entry is unknown (None).
  """
  sizes = [tf.compat.dimension_value(v) for v in values]
  if any(size is None for size in sizes):
    raise ValueError(f'{name} must be known sizes, got {list(values)}')
  return [int(size) for size in sizes]
