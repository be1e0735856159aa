"""Writes a trained network as a SavedModel that needs none of this code.

  python src/export.py --train_dir=runs/mnist --export_dir=exported/mnist

Restores the latest checkpoint (or --step) of --train_dir into the network
of its model_config.json and writes a SavedModel with one signature,
`serving_default`:

  images       float32 [N, H, W, C], as the dataset's pipeline feeds the
               network: MNIST [N, 28, 28, 1] in [0, 1], white digits on
               black; smallNORB [N, 32, 32, 2], stereo crops each
               standardised by tf.image.per_image_standardization
  classes      int64 [N], the most active class capsule
  activations  float32 [N, J], the J class capsules' activations
  poses        float32 [N, J, 4, 4], their poses (not for a cnn_baseline
               run, whose activations are its softmax probabilities)

It loads in any TensorFlow 2 program, eager, with no code from here:

  model = tf.saved_model.load('exported/mnist')
  outputs = model.signatures['serving_default'](images=images)

The network is built with the votes stored (as --nofused_votes): the fused
kernels are custom ops of this repository, which a SavedModel cannot carry.
The maths, and so the outputs, are the same. The export is written to a
temporary directory beside --export_dir, loaded back and checked against the
checkpoint's own outputs on a few probe images, then renamed into place; an
existing --export_dir is refused unless --overwrite.
<export_dir>/assets.extra/export.json records the checkpoint and the model
config.
"""

import dataclasses
import os
import shutil
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from nets import layers
import runtime
import serving

FLAGS = flags.FLAGS

flags.DEFINE_string('train_dir', None, 'Directory of the run to export.')
flags.DEFINE_string('export_dir', None, 'Directory of the SavedModel; must '
                    'not exist unless --overwrite.')
flags.DEFINE_integer('step', None, 'Checkpoint step; default the latest.')
flags.DEFINE_bool('overwrite', False, 'Replace an existing --export_dir.')
flags.DEFINE_string('gpu', '0', 'GPUs to use (visible_device_list). Without '
                    'a GPU the CPU is used.')
flags.mark_flags_as_required(['train_dir', 'export_dir'])

SIGNATURE = 'serving_default'
INPUT = 'images'
EXTRA_FILE = os.path.join('assets.extra', 'export.json')
# Probe images on which the written SavedModel must reproduce the checkpoint.
NUM_PROBES = 4
TOLERANCE = 1e-5


class ExportError(Exception):
  """The written SavedModel does not reproduce the checkpoint."""


def _check_export_dir(export_dir, train_dir, overwrite):
  """Raises app.UsageError unless `export_dir` may be written."""
  if not os.path.lexists(export_dir):
    return
  if not overwrite:
    raise app.UsageError(f'--export_dir {export_dir} exists; pass '
                         '--overwrite to replace it, or choose another.')
  if os.path.islink(export_dir) or not os.path.isdir(export_dir):
    raise app.UsageError(f'--export_dir {export_dir} is not a directory; '
                         '--overwrite replaces only a directory.')
  target = os.path.realpath(export_dir)
  if os.path.commonpath([target, os.path.realpath(train_dir)]) == target:
    raise app.UsageError(f'--export_dir {export_dir} holds --train_dir '
                         f'{train_dir}; replacing it would delete the run.')


def _probe_images(shape):
  """NUM_PROBES fixed pseudo-random images [NUM_PROBES, H, W, C] in [0, 1]."""
  rng = np.random.default_rng(0)
  return rng.uniform(size=(NUM_PROBES,) + shape).astype(np.float32)


def _write(config, checkpoint, session_config, path, probe):
  """Restores the checkpoint and writes the SavedModel into `path`.

  Args:
    config: the run's model.ModelConfig.
    checkpoint: the checkpoint's path.
    session_config: tf.compat.v1.ConfigProto.
    path: an empty directory.
    probe: float32 [M, H, W, C].

  Returns:
    {output name: value on `probe`} computed by the restored network.
  """
  with tf.Graph().as_default():
    images = tf.compat.v1.placeholder(tf.float32, (None,) + probe.shape[1:],
                                      name=INPUT)
    outputs = serving.outputs(config, images, fused_votes=False)
    # The layers' traces for diagnose.py are Python objects, which a
    # MetaGraph cannot hold.
    tf.compat.v1.get_default_graph().clear_collection(layers.TRACES)
    with tf.compat.v1.Session(config=session_config) as session:
      serving.restore(session, checkpoint, FLAGS.train_dir)
      expected = session.run(outputs, {images: probe})
      builder = tf.compat.v1.saved_model.Builder(path)
      builder.add_meta_graph_and_variables(
          session, [tf.saved_model.SERVING],
          signature_def_map={
              SIGNATURE: tf.compat.v1.saved_model.predict_signature_def(
                  {INPUT: images}, outputs)},
          clear_devices=True, strip_default_attrs=True)
      builder.save()
  return expected


def _write_record(path, config, checkpoint, image_shape):
  """Writes `path`/assets.extra/export.json: where the SavedModel comes
  from and what it expects."""
  os.makedirs(os.path.join(path, os.path.dirname(EXTRA_FILE)))
  outputs = {'classes': ['N'], 'activations': ['N', config.num_classes]}
  if config.model == 'capsules':
    outputs['poses'] = ['N', config.num_classes, 4, 4]
  runtime.write_json(os.path.join(path, EXTRA_FILE), {
      'checkpoint': os.path.abspath(checkpoint),
      'model_config': dataclasses.asdict(config),
      'signature': SIGNATURE,
      'inputs': {INPUT: ['N'] + list(image_shape)},
      'outputs': outputs,
  }, indent=2, sort_keys=True)


def _foreign_ops(meta_graph):
  """Op types of the graph and its functions that TensorFlow itself does not
  define (custom ops would need their library to load)."""
  graph = meta_graph.graph_def
  nodes = list(graph.node)
  for function in graph.library.function:
    nodes.extend(function.node_def)
  return sorted({node.op for node in nodes
                 if not hasattr(tf.raw_ops, node.op)})


def _verify(path, probe, expected):
  """Loads the SavedModel at `path` in a fresh graph and runs its signature
  on `probe`.

  Raises:
    ExportError: it uses ops foreign to TensorFlow, or its outputs differ
      from `expected` (classes at all, the rest by more than TOLERANCE).
  """
  with tf.Graph().as_default():
    with tf.compat.v1.Session() as session:
      try:
        meta_graph = tf.compat.v1.saved_model.load(
            session, [tf.saved_model.SERVING], path)
      except (KeyError, ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ExportError(f'the SavedModel does not load: {e}') from e
      foreign = _foreign_ops(meta_graph)
      if foreign:
        raise ExportError(f'the SavedModel uses ops that TensorFlow does not '
                          f'define: {", ".join(foreign)}')
      signature = meta_graph.signature_def[SIGNATURE]
      values = session.run(
          {name: signature.outputs[name].name for name in expected},
          {signature.inputs[INPUT].name: probe})
  for name, value in values.items():
    error = np.max(np.abs(value.astype(np.float64) - expected[name]))
    limit = 0 if name == 'classes' else TOLERANCE
    if not error <= limit:
      raise ExportError(f'the SavedModel\'s {name} differ from the '
                        f'checkpoint\'s by {error:g} (allowed {limit:g})')


def _temporary_beside(export_dir):
  """A new empty directory in the parent of `export_dir` (created if need
  be), with the permissions os.makedirs would give it."""
  parent, name = os.path.split(export_dir)
  os.makedirs(parent, exist_ok=True)
  temporary = tempfile.mkdtemp(prefix=f'.{name}.tmp-', dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(temporary, 0o777 & ~umask)
  return temporary


def _move_into_place(temporary, export_dir):
  """Renames `temporary` to `export_dir`, replacing an existing directory
  (checked by _check_export_dir) only once the new one is complete."""
  if not os.path.lexists(export_dir):
    os.rename(temporary, export_dir)
    return
  parent, name = os.path.split(export_dir)
  old = tempfile.mkdtemp(prefix=f'.{name}.old-', dir=parent)
  os.rename(export_dir, os.path.join(old, name))
  try:
    os.rename(temporary, export_dir)
  except OSError:
    os.rename(os.path.join(old, name), export_dir)
    raise
  shutil.rmtree(old)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    session_config = runtime.session_config(FLAGS.gpu)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  config, checkpoint = serving.find_run(FLAGS.train_dir, FLAGS.step)
  _check_export_dir(FLAGS.export_dir, FLAGS.train_dir, FLAGS.overwrite)
  export_dir = os.path.abspath(FLAGS.export_dir)
  try:
    temporary = _temporary_beside(export_dir)
  except OSError as e:
    raise app.UsageError(f'cannot write beside --export_dir '
                         f'{FLAGS.export_dir}: {e}') from e
  try:
    probe = _probe_images(serving.image_shape(config))
    expected = _write(config, checkpoint, session_config, temporary, probe)
    _write_record(temporary, config, checkpoint, probe.shape[1:])
    _verify(temporary, probe, expected)
    _move_into_place(temporary, export_dir)
  except ExportError as e:
    logging.error('Not exported: %s', e)
    return 1
  finally:
    if os.path.exists(temporary):
      shutil.rmtree(temporary)
  height, width, channels = probe.shape[1:]
  poses = (f', poses float32 [N, {config.num_classes}, 4, 4]'
           if config.model == 'capsules' else '')
  print(f'exported {checkpoint} to {FLAGS.export_dir}\n'
        f'  signature {SIGNATURE}: images float32 [N, {height}, {width}, '
        f'{channels}] -> classes int64 [N], activations float32 '
        f'[N, {config.num_classes}]{poses}')
  return 0


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
