"""Packages a trained run for shipping, e.g. as pretrained/mnist.

  python src/package.py --train_dir=runs/grid_identity_long --output_dir=pretrained/mnist

Writes to --output_dir the weights of one checkpoint (the latest, or --step)
without the optimizer's slots, under the checkpoint's own step, a
`checkpoint` file with relative paths (so the directory can be moved), the
run's model_config.json, and its records: results.jsonl (the test-set
evaluations by tests.py) and starts.jsonl (the training commands). No event
files. The directory is written next to its destination, checked (the
weights restore into the network the config describes) and then renamed
into place; an existing --output_dir is refused.

tests.py, predict.py, export.py, diagnose.py and pose_stats.py read the
result as they read a run.
"""

import os
import shutil

from absl import app
from absl import flags
import tensorflow as tf

import model
import serving

FLAGS = flags.FLAGS

flags.DEFINE_string('train_dir', None, 'The run to package.')
flags.DEFINE_string('output_dir', None, 'Where to write it; must not exist.')
flags.DEFINE_integer('step', None, 'Checkpoint step; default the latest.')
flags.mark_flags_as_required(['train_dir', 'output_dir'])

RECORDS = ('results.jsonl', 'starts.jsonl')


def _write_weights(config, checkpoint, directory):
  """The network's variables (with the decoder's, if it has one) and the
  global step of `checkpoint`, saved in `directory` under the same step;
  returns that step."""
  with tf.Graph().as_default():
    images = tf.zeros((1,) + serving.image_shape(config))
    poses, _ = config.build(images)
    if config.reconstruction_weight > 0:
      config.reconstruct(poses, tf.zeros([1], tf.int32), images.shape[1:])
    global_step = tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
    with tf.compat.v1.Session() as session:
      saver.restore(session, checkpoint)
      step = int(session.run(global_step))
      saver.save(session, os.path.join(directory, 'model.ckpt'),
                 global_step=step, write_meta_graph=False)
  with open(os.path.join(directory, 'checkpoint'), 'w') as f:
    f.write(f'model_checkpoint_path: "model.ckpt-{step}"\n'
            f'all_model_checkpoint_paths: "model.ckpt-{step}"\n')
  return step


def _copy_records(train_dir, directory):
  """model_config.json and, where they exist, the run's records."""
  shutil.copy(os.path.join(train_dir, model.CONFIG_FILE), directory)
  for name in RECORDS:
    for source in (os.path.join(train_dir, 'eval_test', name),
                   os.path.join(train_dir, name)):
      if os.path.exists(source):
        shutil.copy(source, directory)
        break


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  output_dir = os.path.normpath(FLAGS.output_dir)
  if os.path.exists(output_dir):
    raise app.UsageError(f'--output_dir {output_dir} exists; remove it or '
                         'choose another.')
  parent = os.path.dirname(os.path.abspath(output_dir))
  if not os.path.isdir(parent):
    raise app.UsageError(f'--output_dir: {parent} does not exist')
  config, checkpoint = serving.find_run(FLAGS.train_dir, FLAGS.step)
  temporary = output_dir + '.tmp'
  shutil.rmtree(temporary, ignore_errors=True)
  os.makedirs(temporary)
  try:
    step = _write_weights(config, checkpoint, temporary)
    _copy_records(FLAGS.train_dir, temporary)
    serving.find_run(temporary, step)  # the copy is a readable run
    os.replace(temporary, output_dir)
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
  size = sum(os.path.getsize(os.path.join(output_dir, name))
             for name in os.listdir(output_dir))
  print(f'{output_dir}: step {step} of {FLAGS.train_dir}, {size / 1e6:.2f} MB')


if __name__ == '__main__':
  tf.compat.v1.disable_eager_execution()
  app.run(main)
