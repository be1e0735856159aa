"""The paper's recipe: reconstruction decoder, named experiments, and a
smallNORB run (training steps and multi-crop evaluation) on tiny files."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import evaluation
import experiments
import model
import training
from datasets import smallnorb
from nets import decoder
from nets import layers
from nets import losses
from test_smallnorb import _split_arrays
from test_smallnorb import _write_split

REPO = __import__('conftest').REPO


def test_chosen_poses_are_the_row_major_entries_of_each_examples_class():
  poses = np.arange(3 * 5 * 16, dtype=np.float32).reshape(3, 5, 4, 4)
  classes = np.array([0, 4, 2])
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    chosen = session.run(decoder.chosen_poses(tf.constant(poses),
                                              tf.constant(classes)))
  assert chosen.shape == (3, 16)
  for n, j in enumerate(classes):
    np.testing.assert_array_equal(chosen[n], poses[n, j].ravel())


def test_decoder_uses_only_the_chosen_capsule():
  rng = np.random.default_rng(0)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    poses = tf.constant(rng.normal(size=(3, 5, 4, 4)), tf.float32)
    classes = tf.constant([0, 4, 2])
    images = decoder.reconstruct(poses, classes, (6, 7, 2))
    gradient = tf.gradients(tf.reduce_sum(images), poses)[0]
    session.run(tf.compat.v1.global_variables_initializer())
    images, gradient = session.run([images, gradient])
  assert images.shape == (3, 6, 7, 2)
  nonzero = np.abs(gradient).sum(axis=(2, 3)) > 0  # [N, J]
  np.testing.assert_array_equal(nonzero, np.eye(5, dtype=bool)[[0, 4, 2]])


def _statistics():
  """The decoder's running mean and variance variables."""
  variables = {v.op.name.split('/')[-1]: v for v in
               tf.compat.v1.global_variables('decoder/input_statistics')}
  return [variables['mean'], variables['variance']]


def test_training_graph_updates_the_decoders_input_statistics():
  """One training step moves the running moments 1% of the way to the
  chosen capsules' batch moments; an evaluation graph on the same variables
  leaves them, and then decodes as the training step did."""
  rng = np.random.default_rng(1)
  poses = rng.normal(size=(6, 3, 4, 4)).astype(np.float32)
  classes = np.array([0, 2, 1, 1, 0, 2])
  chosen = poses.reshape(6, 3, 16)[np.arange(6), classes]
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    training_images = decoder.reconstruct(
        tf.constant(poses), tf.constant(classes), (2, 2, 1),
        standardize_input=True, update_statistics=True)
    with tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(),
                                     reuse=True):
      evaluation_images = decoder.reconstruct(
          tf.constant(poses), tf.constant(classes), (2, 2, 1),
          standardize_input=True)
    session.run(tf.compat.v1.global_variables_initializer())
    session.run(evaluation_images)
    np.testing.assert_allclose(session.run(_statistics()),
                               [np.zeros(16), np.ones(16)])
    trained = session.run(training_images)
    mean, variance = session.run(_statistics())
    np.testing.assert_allclose(session.run(evaluation_images), trained,
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mean, 0.01 * chosen.mean(axis=0), atol=1e-6)
  np.testing.assert_allclose(variance, 0.99 + 0.01 * chosen.var(axis=0),
                             rtol=1e-5)


def test_standardized_decoder_ignores_the_scale_of_each_entry():
  """With the statistics at the poses' moments, rescaling and shifting one
  pose entry (as the class capsules' rows differ by 100x) decodes to the
  same images; without standardisation it does not."""
  rng = np.random.default_rng(2)
  poses = rng.normal(size=(8, 2, 4, 4))
  classes = np.array([0, 1] * 4)
  scale = np.full(16, 1.0)
  scale[5], offset = 1e-3, np.eye(16)[0] * 0.5
  scaled = poses * scale.reshape(4, 4) + offset.reshape(4, 4)
  images = {}
  for standardize in (True, False):
    for name, values in (('raw', poses), ('scaled', scaled)):
      chosen = values.reshape(8, 2, 16)[np.arange(8), classes]
      with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        tf.compat.v1.set_random_seed(3)
        decoded = decoder.reconstruct(
            tf.constant(values, tf.float32), tf.constant(classes), (3, 3, 1),
            standardize_input=standardize)
        session.run(tf.compat.v1.global_variables_initializer())
        if standardize:
          for variable, value in zip(_statistics(), (chosen.mean(axis=0),
                                                     chosen.var(axis=0))):
            variable.load(value.astype(np.float32), session)
        images[standardize, name] = session.run(decoded)
  np.testing.assert_allclose(images[True, 'scaled'], images[True, 'raw'],
                             rtol=1e-3, atol=1e-4)
  assert np.abs(images[False, 'scaled'] - images[False, 'raw']).max() > 1e-2


def test_decoder_standardization_needs_a_decoder():
  with pytest.raises(ValueError, match='needs a decoder'):
    model.ModelConfig(decoder_standardization=True)


def test_reconstruction_loss_is_batch_mean_of_summed_squares():
  images = np.zeros((2, 2, 2, 1), np.float32)
  reconstructions = np.zeros_like(images)
  reconstructions[0, 0, 0, 0] = 3.0  # example 0: 9
  reconstructions[1] = 1.0  # example 1: 4
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    loss = session.run(losses.reconstruction_loss(
        tf.constant(images), tf.constant(reconstructions)))
  assert loss == pytest.approx((9 + 4) / 2)


def test_experiments_name_only_train_flags():
  helptext = subprocess.run(
      [sys.executable, 'src/train.py', '--helpfull'], cwd=REPO,
      capture_output=True, text=True, timeout=120, check=False).stdout
  for name, values in experiments.EXPERIMENTS.items():
    for flag in values:
      assert f'--{flag}:' in helptext or f'--[no]{flag}:' in helptext, (
          name, flag)
  assert experiments.get('R1I2')['reconstruction_weight'] > 0
  assert experiments.get('R0I3')['iterations'] == 3
  with pytest.raises(ValueError, match='R0I2'):
    experiments.get('R9I9')


@pytest.fixture
def tiny_norb(tmp_path, monkeypatch):
  data_dir = tmp_path / 'smallnorb'
  data_dir.mkdir()
  table = {}
  for split in ('train', 'test'):
    table.update(_write_split(data_dir, split, _split_arrays(split), False))
  monkeypatch.setattr(smallnorb, 'EXPECTED', table)
  return str(data_dir)


def test_smallnorb_trains_with_reconstruction_and_evaluates_crops(
    tiny_norb, tmp_path):
  config = model.ModelConfig(dataset='smallnorb', num_classes=5,
                             iterations=2, a=8, b=4, c=4, d=4,
                             reconstruction_weight=0.0005)
  with tf.Graph().as_default():
    data = smallnorb.train_input(tiny_norb, 4, seed=1)
    images, labels = tf.compat.v1.data.make_one_shot_iterator(
        data).get_next()
    graph = training.build(images, labels, config, training.TrainConfig())
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for _ in range(3):
        values = session.run({'train_op': graph['train_op'],
                              'loss': graph['loss'],
                              'reconstruction': graph['reconstruction_loss']})
        assert np.isfinite(values['loss'])
        assert values['reconstruction'] > 0
      checkpoint = saver.save(session, str(tmp_path / 'model.ckpt'),
                              global_step=graph['global_step'])
  evaluator = evaluation.Evaluator(config, smallnorb, tiny_norb, 6,
                                   {'split': 'full', 'crops': 3})
  step, predictions, labels = evaluator.evaluate(None, checkpoint)
  assert step == 3
  assert len(predictions) == evaluator.num_examples == len(labels)
  assert set(np.unique(predictions)) <= set(range(5))
  np.testing.assert_array_equal(labels, _split_arrays('test')['cat'])


def test_about_half_the_capsules_start_active():
  """The initialisation the paper's recipe asks for: routing starts with
  activations spread around 0.5, neither all off nor all on."""
  config = model.ModelConfig(iterations=2)
  rng = np.random.default_rng(0)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    tf.compat.v1.set_random_seed(0)
    images = tf.constant(rng.uniform(size=(4, 28, 28, 1)), tf.float32)
    config.build(images)
    names = ['capsules_v0/conv_caps1/activations',
             'capsules_v0/conv_caps2/activations',
             'capsules_v0/class_caps/activations']
    graph = tf.compat.v1.get_default_graph()
    tensors = [_summarised(graph, name) for name in names]
    session.run(tf.compat.v1.global_variables_initializer())
    for name, value in zip(names, session.run(tensors)):
      active = np.mean(value > 0.5)
      assert 0.25 < active < 0.75, (name, active)


def _summarised(graph, scope):
  """The tensor a histogram summary named `scope` records."""
  for op in graph.get_operations():
    if op.type == 'HistogramSummary' and op.name.startswith(scope):
      return op.inputs[1]
  raise KeyError(scope)


def test_routing_warmup_raises_beta_to_one_over_its_steps():
  config = training.TrainConfig(routing_warmup_steps=10)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    step = tf.compat.v1.placeholder(tf.int64, [])
    beta = training.e_step_annealing(config, step)
    values = [session.run(beta, {step: s}) for s in (0, 5, 10, 30)]
  np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 1.0])
  assert training.e_step_annealing(training.TrainConfig(), 0) == 1.0


def test_training_graph_reports_beta_while_warming_up():
  """At step 0 of a warm-up, beta = 0: the second M-step of every layer
  sees the uniform start again; at the warm-up's last step, or without a
  warm-up, it does not."""
  config = model.ModelConfig(iterations=2, a=4, b=3, c=3, d=3)
  rng = np.random.default_rng(0)
  for warmup, warming in ((0, False), (100, True)):
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
      tf.compat.v1.set_random_seed(0)
      graph = training.build(
          tf.constant(rng.uniform(size=(2, 28, 28, 1)), tf.float32),
          tf.constant([0, 1]), config,
          training.TrainConfig(routing_warmup_steps=warmup))
      assert ('e_step_annealing' in graph) == warming
      session.run(tf.compat.v1.global_variables_initializer())
      routed = [trace for trace in tf.compat.v1.get_collection(layers.TRACES)
                if trace.iterations]
      for step, uniform in ((0, warming), (100, False)):
        session.run(graph['global_step'].assign(step))
        for trace in routed:
          first, second = session.run([iteration['assignments']
                                       for iteration in trace.iterations])
          assert np.allclose(first, second, rtol=1e-6) == uniform, trace.name
