"""A trained network for inference: what predict.py and export.py share.

Finds the run in a train_dir (its model_config.json and a checkpoint), builds
the network's inference outputs on given images and restores the checkpoint's
weights into a session, each with a clear message when the run is missing or
does not fit.
"""

import os

from absl import app
import tensorflow as tf

import datasets
import model
import runtime


def find_run(train_dir, step=None, missing_hint=None):
  """The model config and a checkpoint of the run in `train_dir`.

  Args:
    train_dir: directory written by train.py.
    step: the checkpoint's global step; None for the latest.
    missing_hint: what to tell the user when `train_dir` does not exist;
      None for a generic message.

  Returns:
    (model.ModelConfig, checkpoint path).

  Raises:
    app.UsageError: `train_dir` is missing, holds no run, or lacks the
      checkpoint.
  """
  if not os.path.isdir(train_dir):
    raise app.UsageError(missing_hint or (
        f'--train_dir {train_dir} does not exist; point it at a directory '
        'written by train.py.'))
  try:
    config = model.ModelConfig.load(train_dir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from e
  except (TypeError, ValueError) as e:
    raise app.UsageError(f'{os.path.join(train_dir, model.CONFIG_FILE)} is '
                         f'not a valid model config: {e}') from e
  return config, runtime.checkpoint_path(train_dir, step)


def image_shape(config):
  """The shape [H, W, C] of one image of the run's dataset, as its input
  pipeline feeds it (MNIST (28, 28, 1); smallNORB crops (32, 32, 2))."""
  return tuple(datasets.get_dataset(config.dataset).IMAGE_SHAPE)


def outputs(config, images, fused_votes):
  """The network's inference outputs on `images`, built in the current graph.

  Args:
    config: the run's model.ModelConfig.
    images: float32 [N, H, W, C], as the dataset's pipeline feeds them.
    fused_votes: route the ConvCaps layers with the fused CPU kernels (custom
      ops of nets/kernels: fine here, but a graph holding them does not load
      without this repository's library).

  Returns:
    {'classes': int64 [N], the most active class capsule;
     'activations': float32 [N, J], the class capsules' activations;
     'poses': float32 [N, J, 4, 4], their poses}, each named as its key;
    for a cnn_baseline run no poses, and its softmax probabilities as the
    activations.
  """
  poses, activations = config.build(images, xla=False, vote_moments=True,
                                    fused_votes=fused_votes)
  classes = tf.argmax(activations, axis=-1, output_type=tf.int64)
  named = {'classes': tf.identity(classes, name='classes'),
           'activations': tf.identity(activations, name='activations')}
  if poses is not None:
    named['poses'] = tf.identity(poses, name='poses')
  return named


def restore(session, checkpoint, train_dir):
  """Restores the variables of the session's graph from `checkpoint`.

  Extra variables in the checkpoint (the global step, the optimiser's slots)
  are ignored.

  Raises:
    app.UsageError: the checkpoint lacks a variable of the graph or holds it
      with another shape, i.e. it is not of the network in
      `train_dir`/model_config.json.
  """
  saver = tf.compat.v1.train.Saver()
  try:
    saver.restore(session, checkpoint)
  except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
    raise app.UsageError(
        f'{checkpoint} does not hold the network that '
        f'{os.path.join(train_dir, model.CONFIG_FILE)} describes: '
        f'{str(e).strip().splitlines()[0]}') from e
