"""Reading a tf.data pipeline the way train.py and tests.py do."""

import tensorflow as tf


def read_dataset(build, num_batches=None):
  """Reads a dataset built in a fresh graph through a one-shot iterator.

  Args:
    build: a function returning the tf.data.Dataset.
    num_batches: stop after this many batches (None: until the end).

  Returns:
    (list of numpy batches, static shapes of the batch components).
  """
  with tf.Graph().as_default():
    iterator = tf.compat.v1.data.make_one_shot_iterator(build())
    next_batch = iterator.get_next()
    shapes = [t.shape.as_list() for t in tf.nest.flatten(next_batch)]
    batches = []
    with tf.compat.v1.Session() as session:
      while num_batches is None or len(batches) < num_batches:
        try:
          batches.append(session.run(next_batch))
        except tf.errors.OutOfRangeError:
          break
  return batches, shapes
