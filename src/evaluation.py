"""Evaluation of a checkpoint on every test example: the library behind
tests.py."""

import numpy as np
import tensorflow as tf


class Evaluator:
  """The evaluation graph of one run, restored from one checkpoint at a time.

  Attributes:
    num_examples: test examples in one pass.
    num_classes: classes.
  """

  def __init__(self, config, dataset, data_dir, batch_size, options,
               xla=False):
    """Builds the graph.

    Args:
      config: the run's model.ModelConfig.
      dataset: a module of `datasets`.
      data_dir: its directory.
      batch_size: evaluation batch size.
      options: keyword options of dataset.eval_input (smallNORB: split,
        crops).
      xla: compile the routing with XLA.
    """
    self.num_classes = config.num_classes
    self._graph = tf.Graph()
    with self._graph.as_default():
      data, self.num_examples = dataset.eval_input(data_dir, batch_size,
                                                   **options)
      self._iterator = tf.compat.v1.data.make_initializable_iterator(data)
      images, self._labels = self._iterator.get_next()
      self._activations = _class_activations(config, images, xla)
      self._global_step = tf.compat.v1.train.get_or_create_global_step()
      self._saver = tf.compat.v1.train.Saver()
    self._graph.finalize()

  def evaluate(self, session_config, checkpoint):
    """One pass over the test set.

    Returns:
      (global step, predictions int [num_examples], labels int
      [num_examples]).
    """
    with tf.compat.v1.Session(graph=self._graph,
                              config=session_config) as session:
      self._saver.restore(session, checkpoint)
      session.run(self._iterator.initializer)
      predictions, labels = [], []
      while True:
        try:
          activations, batch_labels = session.run(
              [self._activations, self._labels])
        except tf.errors.OutOfRangeError:
          break
        predictions.append(np.argmax(activations, axis=-1))
        labels.append(batch_labels)
      step = session.run(self._global_step)
    return int(step), np.concatenate(predictions), np.concatenate(labels)


def _class_activations(config, images, xla):
  """Class activations [N, classes], averaged over crops when images are
  [N, crops, H, W, channels]."""
  if images.shape.rank == 5:
    crops = images.shape[1]
    flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], 0))
    _, activations = config.build(flat, xla)
    return tf.reduce_mean(
        tf.reshape(activations, [-1, crops, config.num_classes]), axis=1)
  return config.build(images, xla)[1]


def per_class_accuracy(predictions, labels, num_classes):
  """Accuracy on the examples of each class [num_classes] (NaN if absent)."""
  correct = np.bincount(labels[predictions == labels], minlength=num_classes)
  total = np.bincount(labels, minlength=num_classes)
  with np.errstate(invalid='ignore', divide='ignore'):
    return correct / total


def pose_spread(poses, labels):
  """How the pose of a capsule varies over the examples of its class.

  Args:
    poses: [N, 16], the pose of each example's own class capsule.
    labels: int [N].

  Returns:
    mean |mu^h| [16] over all examples, and the standard deviation of mu^h
    over the examples of each class, averaged over the classes present [16].
  """
  classes = np.unique(labels)
  spread = np.mean([poses[labels == k].std(axis=0) for k in classes], axis=0)
  return np.abs(poses).mean(axis=0), spread


def class_means(images, labels):
  """Each example's class mean image [N, ...]: the best guess of the pixels
  from the label alone, in summed squared error."""
  means = {k: images[labels == k].mean(axis=0) for k in np.unique(labels)}
  return np.stack([means[k] for k in labels])


def squared_error(images, reconstructions):
  """Summed squared pixel error per image, averaged over the images."""
  return float(np.mean(np.sum(np.square(images - reconstructions),
                              axis=tuple(range(1, images.ndim)))))


def linear_readout_error(poses, images, labels, entries, seed=0):
  """How much of each image the pose entries `entries` determine linearly,
  whatever a decoder makes of them.

  For each class, the affine map from those entries to the pixels that fits
  a random half of the class's examples best (least squares) is measured on
  the other half. With no entries the map is the fitted half's mean image,
  the label-only baseline on the same split.

  Args:
    poses: [N, 16], the pose of each example's own class capsule.
    images: [N, ...].
    labels: int [N].
    entries: indices of the pose entries to read.
    seed: of the split.

  Returns:
    summed squared pixel error per held-out image, averaged over them; NaN
    if no class has examples in both halves.
  """
  pixels = images.reshape(len(images), -1).astype(np.float64)
  features = poses[:, list(entries)].astype(np.float64)
  held_out = np.random.default_rng(seed).random(len(labels)) < 0.5
  errors = []
  for k in np.unique(labels):
    x, y, test = features[labels == k], pixels[labels == k], held_out[
        labels == k]
    if test.all() or not test.any():
      continue
    mean, scale = x[~test].mean(axis=0), x[~test].std(axis=0)
    scale[scale == 0] = 1.0
    design = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    weights = np.linalg.lstsq(design[~test], y[~test], rcond=None)[0]
    errors.append(np.sum(np.square(y[test] - design[test] @ weights),
                         axis=1))
  return float(np.mean(np.concatenate(errors))) if errors else float('nan')


def decode_poses(config, session_config, checkpoint, poses, classes,
                 image_shape):
  """Reconstructions [M, H, W, C] by the run's decoder from class poses
  [M, 16] of `classes` [M], with the variables of `checkpoint`: for drawing
  what the decoder makes of given, e.g. perturbed, poses."""
  num_classes = config.num_classes
  with tf.Graph().as_default():
    poses_t = tf.constant(np.eye(num_classes, dtype=np.float32)[
        classes][:, :, None] * poses[:, None, :])  # [M, J, 16]
    images = config.reconstruct(tf.reshape(poses_t, [-1, num_classes, 4, 4]),
                                tf.constant(classes), image_shape)
    saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
    with tf.compat.v1.Session(config=session_config) as session:
      saver.restore(session, checkpoint)
      return session.run(images)
