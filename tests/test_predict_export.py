"""predict.py and export.py as a user runs them, and the image conversion.

The module saves one checkpoint of a tiny untrained network (A = 4,
B = C = D = 3) as train.py would (model_config.json, a global step, Adam's
slots), so nothing here needs the MNIST files; the scripts run in
subprocesses, and the SavedModel is loaded by a fresh Python that cannot
import this repository.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import image_files
import model
import script_util

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = model.ModelConfig(a=4, b=3, c=3, d=3, conv1_padding='SAME')
STEP = 3

# Run by a fresh `python -I` (no PYTHONPATH, no script directory, no user
# site): loads the SavedModel eagerly and runs its signature on probe.npy.
_LOAD_SAVED_MODEL = """
import sys
import numpy as np
import tensorflow as tf
assert tf.executing_eagerly()
loaded = tf.saved_model.load(sys.argv[1])
signature = loaded.signatures['serving_default']
spec = signature.structured_input_signature[1]['images']
outputs = signature(images=tf.constant(np.load('probe.npy')))
np.savez('outputs.npz',
         input_shape=[-1 if d is None else d for d in spec.shape.as_list()],
         input_dtype=spec.dtype.name,
         **{name: value.numpy() for name, value in outputs.items()})
assert not {'model', 'nets', 'serving', 'runtime'} & set(sys.modules)
"""


def _run(script, *args, cwd=REPO, timeout=120):
  return script_util.run(script, *args, cwd=cwd, timeout=timeout,
                         isolated=True)


_succeeded = script_util.succeeded
_failed = script_util.failed


def _save_run(train_dir):
  """Writes TINY's model_config.json and a checkpoint of step STEP holding,
  besides the network, a global step and Adam's slots, as train.py's do."""
  os.makedirs(train_dir)
  TINY.save(train_dir)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    _, activations = TINY.build(images, fused_votes=False)
    global_step = tf.compat.v1.train.get_or_create_global_step()
    tf.compat.v1.train.AdamOptimizer().minimize(
        tf.reduce_sum(activations), global_step=global_step)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver().save(
          session, os.path.join(train_dir, 'model.ckpt'), global_step=STEP)


def _checkpoint_outputs(train_dir, images):
  """{'activations' [N, 10], 'poses' [N, 10, 4, 4]} of the run's latest
  checkpoint on float32 images [N, 28, 28, 1]."""
  config = model.ModelConfig.load(train_dir)
  with tf.Graph().as_default():
    inputs = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    poses, activations = config.build(inputs, fused_votes=False)
    with tf.compat.v1.Session() as session:
      tf.compat.v1.train.Saver().restore(
          session, tf.train.latest_checkpoint(train_dir))
      return session.run({'activations': activations, 'poses': poses},
                         {inputs: images})


def _encode(image, image_format):
  """PNG or JPEG bytes of a uint8 image [H, W, C]."""
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    if image_format == 'png':
      return session.run(tf.io.encode_png(image))
    return session.run(tf.io.encode_jpeg(image, quality=95))


def _digit():
  """A white '1' on black, uint8 [28, 28, 1]."""
  image = np.zeros([28, 28, 1], np.uint8)
  image[5:23, 13:16] = 255
  image[5:8, 10:13] = 180
  return image


def _dark_on_light(height, width, channels):
  """A dark stroke down the middle of a light background, uint8
  [height, width, channels]."""
  image = np.full([height, width, channels], 225, np.uint8)
  image[height // 6:-height // 6, width // 2 - 2:width // 2 + 2] = 20
  return image


def _blocks(stdout):
  """{file: (class, input note, activations)} of predict.py's output."""
  lines = stdout.splitlines()
  blocks = {}
  for i, line in enumerate(lines):
    if line.startswith('  ') or ': class ' not in line:
      continue
    path, predicted = line.rsplit(': class ', 1)
    note = lines[i + 1].removeprefix('  input: ')
    values = lines[i + 2].removeprefix('  activations: ').split()
    blocks[path] = (int(predicted), note,
                    np.array([float(v.split(':')[1]) for v in values]))
  return blocks


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  train_dir = str(tmp_path_factory.mktemp('run') / 'train')
  _save_run(train_dir)
  return train_dir


def _convert(contents):
  with tf.Graph().as_default():
    converter = image_files.Converter()
    with tf.compat.v1.Session() as session:
      return converter.convert(session, contents)


def test_a_28x28_grayscale_digit_is_used_as_is():
  """Exactly the MNIST pipeline's uint8 / 255."""
  digit = _digit()
  converted = _convert(_encode(digit, 'png'))
  assert converted.note == '28x28 grayscale, used as is'
  np.testing.assert_array_equal(
      converted.image, digit.astype(np.float32) / np.float32(255))


def test_a_dark_on_light_digit_is_inverted():
  digit = _dark_on_light(28, 28, 1)
  converted = _convert(_encode(digit, 'png'))
  assert converted.note == ('28x28 grayscale, inverted (dark on light: mean '
                            f'intensity {digit.mean() / 255:.2f} > 0.5)')
  np.testing.assert_allclose(converted.image, 1 - digit / 255, atol=1e-6)


def test_a_tall_colour_image_is_grayed_inverted_resized_and_padded():
  """56x28 RGB -> 28x14, centred between black columns 0-6 and 21-27; the
  light background (225) becomes dark gray, not black."""
  converted = _convert(_encode(_dark_on_light(56, 28, 3), 'png'))
  assert converted.note.startswith('56x28 RGB, converted to grayscale, '
                                   'inverted (dark on light: mean intensity')
  assert converted.note.endswith(', resized to fit 28x28 keeping the aspect '
                                 'ratio and padded with black')
  image = converted.image[..., 0]
  assert image.shape == (28, 28)
  assert np.all(image[:, :7] == 0) and np.all(image[:, 21:] == 0)
  assert image[14, 14] > 0.7  # the stroke, 20 inverted
  assert image[14, 9] == pytest.approx(1 - 225 / 255, abs=0.01)  # background
  assert image.min() >= 0 and image.max() <= 1


def test_transparency_is_composited_over_white():
  """A black stroke on a transparent background is a dark-on-light image."""
  image = np.zeros([28, 28, 4], np.uint8)
  image[6:22, 12:16, 3] = 255
  converted = _convert(_encode(image, 'png'))
  assert converted.note.startswith('28x28 RGBA, transparency composited over '
                                   'white, converted to grayscale, inverted')
  assert converted.image[10, 13, 0] == pytest.approx(1.0, abs=1e-3)
  assert converted.image[10, 5, 0] == pytest.approx(0.0, abs=1e-3)


def test_a_non_image_is_refused():
  with pytest.raises(image_files.NotAnImageError,
                     match='Unknown image file format'):
    _convert(b'not an image')


def test_predict_classifies_files_and_reports_the_bad_ones(run, tmp_path):
  digit_path = tmp_path / 'one.png'
  digit_path.write_bytes(_encode(_digit(), 'png'))
  photo_path = tmp_path / 'photo.jpg'
  photo_path.write_bytes(_encode(_dark_on_light(40, 60, 3), 'jpeg'))
  text_path = tmp_path / 'notes.txt'
  text_path.write_text('not an image')
  missing_path = tmp_path / 'missing.png'
  result = _failed(_run('predict.py', '--train_dir=' + run, '--gpu=0',
                        str(digit_path), str(text_path), str(photo_path),
                        str(missing_path)))
  assert result.returncode == 1
  assert f'model: {run}/model.ckpt-{STEP}' in result.stdout
  blocks = _blocks(result.stdout)
  assert sorted(blocks) == sorted([str(digit_path), str(photo_path)])

  predicted, note, activations = blocks[str(digit_path)]
  assert note == '28x28 grayscale, used as is'
  expected = _checkpoint_outputs(
      run, _digit()[np.newaxis] / np.float32(255))['activations'][0]
  # Printed to 4 decimals, computed with the fused kernels (predict.py's
  # default), which sum in another order than the stored votes here.
  np.testing.assert_allclose(activations, expected, atol=1.5e-4)
  assert predicted == np.argmax(expected)

  predicted, note, activations = blocks[str(photo_path)]
  assert note.startswith('40x60 RGB, converted to grayscale, inverted (dark '
                         'on light: mean intensity ')
  assert note.endswith('resized to fit 28x28 keeping the aspect ratio and '
                       'padded with black')
  assert activations.shape == (10,) and 0 <= predicted < 10
  assert np.all((activations >= 0) & (activations <= 1))

  assert (f'{text_path}: error: not a PNG or JPEG image (Unknown image file '
          'format') in result.stderr
  assert (f'{missing_path}: error: cannot read: No such file or directory'
          in result.stderr)
  assert '2 of 4 files could not be classified' in result.stderr


def test_predict_without_a_model_says_what_to_do(tmp_path):
  """The default, pretrained/mnist, resolves against the working directory;
  here there is none."""
  digit_path = tmp_path / 'one.png'
  digit_path.write_bytes(_encode(_digit(), 'png'))
  _failed(_run('predict.py', str(digit_path), cwd=tmp_path),
          'no pretrained model in pretrained/mnist', 'train one',
          '--train_dir')
  _failed(_run('predict.py', '--train_dir=' + str(tmp_path / 'nowhere'),
               str(digit_path)), 'nowhere does not exist')


def test_export_loads_in_a_fresh_eager_python_and_matches_the_checkpoint(
    run, tmp_path):
  export_dir = tmp_path / 'exported' / 'mnist'
  result = _succeeded(_run('export.py', '--train_dir=' + run,
                           '--export_dir=' + str(export_dir), '--gpu=0'))
  assert f'exported {run}/model.ckpt-{STEP} to {export_dir}' in result.stdout
  assert os.listdir(export_dir.parent) == ['mnist']  # no temporary left
  assert (export_dir / 'saved_model.pb').is_file()
  with open(export_dir / 'assets.extra' / 'export.json') as f:
    record = json.load(f)
  assert record['checkpoint'].endswith(f'model.ckpt-{STEP}')
  assert record['model_config']['a'] == 4

  probe = np.random.default_rng(1).uniform(size=[5, 28, 28, 1])
  probe = probe.astype(np.float32)
  np.save(tmp_path / 'probe.npy', probe)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('PYTHONPATH', None)
  loaded = subprocess.run(
      [sys.executable, '-I', '-c', _LOAD_SAVED_MODEL, str(export_dir)],
      cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
      check=False)
  assert loaded.returncode == 0, loaded.stderr[-3000:]
  outputs = np.load(tmp_path / 'outputs.npz')
  assert outputs['input_shape'].tolist() == [-1, 28, 28, 1]
  assert str(outputs['input_dtype']) == 'float32'
  assert outputs['classes'].dtype == np.int64
  assert outputs['activations'].shape == (5, 10)
  assert outputs['poses'].shape == (5, 10, 4, 4)

  expected = _checkpoint_outputs(run, probe)
  assert np.std(expected['activations']) > 1e-3  # a meaningful comparison
  np.testing.assert_allclose(outputs['activations'], expected['activations'],
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(outputs['poses'], expected['poses'], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(outputs['classes'],
                                np.argmax(expected['activations'], axis=-1))


def test_export_refuses_an_existing_export_dir_unless_overwrite(run,
                                                                tmp_path):
  export_dir = tmp_path / 'out'
  export_dir.mkdir()
  (export_dir / 'keep').write_text('mine')
  args = ['--train_dir=' + run, '--export_dir=' + str(export_dir)]
  _failed(_run('export.py', *args), f'--export_dir {export_dir} exists',
          '--overwrite')
  assert (export_dir / 'keep').read_text() == 'mine'
  _succeeded(_run('export.py', *args, '--overwrite'))
  assert sorted(os.listdir(export_dir)) == ['assets.extra', 'saved_model.pb',
                                            'variables']
  assert os.listdir(tmp_path) == ['out']


@pytest.mark.parametrize('args,message', [
    (['--train_dir={tmp}/nowhere', '--export_dir={tmp}/out'],
     'nowhere does not exist'),
    (['--train_dir={tmp}/untrained', '--export_dir={tmp}/out'],
     'no checkpoint in'),
    (['--train_dir={run}', '--export_dir={run}/..', '--overwrite'],
     'replacing it would delete the run'),
])
def test_export_rejects(args, message, run, tmp_path):
  os.makedirs(tmp_path / 'untrained')
  TINY.save(str(tmp_path / 'untrained'))
  before = sorted(os.listdir(tmp_path))
  _failed(_run('export.py', *[a.format(tmp=tmp_path, run=run) for a in args]),
          message)
  assert sorted(os.listdir(tmp_path)) == before
  assert os.path.exists(os.path.join(run, f'model.ckpt-{STEP}.index'))
