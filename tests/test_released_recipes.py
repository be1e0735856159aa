"""The released codes' departures from Procedure 1 (nets/routing.py), their
initialisation schemes (nets/initializers.py) and the recipes that combine
them (src/experiments.py)."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

import experiments
import model
import procedure1
from nets import initializers
from nets import layers
from nets import receptive_fields
from nets import routing as em

TINY = dict(a=4, b=3, c=3, d=3)

# name: (em_routing keyword arguments, procedure1 keyword arguments, lambda).
DEPARTURES = {
    'pose_damping': ({'pose_damping': 0.3}, {'pose_damping': 0.3}, 0.02),
    'authors_cost': ({'activation_cost': 'authors'},
                     {'activation_cost': 'authors'}, 0.1),
    'ibm_cost_scale': ({'cost_scale': 'ibm'}, {'cost_scale': 'ibm'}, 0.002),
    'per_slot': ({'initial_assignments': 'per_slot'},
                 {'slot_assignments': 'per_slot'}, 0.02),
}


def _problem(rng, num_positions, num_types, num_slots, child_ids):
  votes = rng.normal(size=(2, num_positions, num_types, num_slots, 16))
  if child_ids is None:
    activations = rng.uniform(0.05, 1.0, size=(2, num_positions, num_slots))
  else:
    activations = rng.uniform(0.05, 1.0, size=(2, child_ids.max() + 1))
    activations = activations[:, child_ids]
  beta_v = rng.normal(0, 0.1, size=num_types)
  beta_a = rng.normal(0, 0.1, size=num_types)
  return [x.astype(np.float32) for x in (votes, activations, beta_v, beta_a)]


def _oracle_kwargs(kwargs, votes, num_types):
  """procedure1's arguments: the factor and R_0 the TF code derives."""
  kwargs = dict(kwargs)
  if kwargs.get('cost_scale') == 'ibm':
    kwargs['cost_scale'] = 100.0 * num_types / votes.shape[3]
  if kwargs.get('slot_assignments') == 'per_slot':
    kwargs['slot_assignments'] = 1.0 / num_types
  return kwargs


@pytest.mark.parametrize('layer', ['fully_connected', 'convolutional'])
@pytest.mark.parametrize('departure', sorted(DEPARTURES))
def test_departure_matches_numpy(departure, layer):
  """Each departure, alone, at 3 iterations, against procedure1.py's loops;
  per-slot R_0 only differs from the paper's where children are shared."""
  tf_kwargs, np_kwargs, inverse_temperature = DEPARTURES[departure]
  rng = np.random.default_rng(sorted(DEPARTURES).index(departure))
  child_ids, num_positions, num_slots = None, 1, 12
  if layer == 'convolutional':
    indices = receptive_fields.patch_indices(5, 5, 3, 1)
    child_ids = receptive_fields.child_ids(indices, 2)  # [9, 18]
    num_positions, num_slots = 9, 18
  votes, activations, beta_v, beta_a = _problem(rng, num_positions, 3,
                                                num_slots, child_ids)
  if departure == 'authors_cost':
    beta_a *= 0.002  # 5000 beta_a of order 1
  lambdas = [inverse_temperature] * 3
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    outputs = session.run(em.em_routing(
        tf.constant(votes), tf.constant(activations), tf.constant(beta_v),
        tf.constant(beta_a), 3, inverse_temperature=inverse_temperature,
        child_ids=child_ids, **tf_kwargs))
    paper = session.run(em.em_routing(
        tf.constant(votes), tf.constant(activations), tf.constant(beta_v),
        tf.constant(beta_a), 3, inverse_temperature=inverse_temperature,
        child_ids=child_ids))
  for n in range(2):
    a, graph_votes, connected = procedure1.from_layout(
        votes[n], activations[n], child_ids)
    mu, a_ref, _ = procedure1.em_routing(
        a, graph_votes, connected, np.tile(beta_v, num_positions),
        np.tile(beta_a, num_positions), lambdas,
        **_oracle_kwargs(np_kwargs, votes, 3))
    np.testing.assert_allclose(outputs[0][n].reshape(-1, 16), mu, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(outputs[1][n].reshape(-1), a_ref, rtol=1e-4,
                               atol=1e-6)
  assert 0.02 < np.median(outputs[1]) < 0.98  # not saturated
  if departure != 'per_slot' or layer == 'convolutional':
    assert not np.allclose(outputs[1], paper[1], atol=1e-4), 'no effect'


def test_ibm_cost_scale_is_100_over_children_per_parent_type():
  assert em.cost_scale_factor('ibm', [2, 36, 32, 288, 16]) == pytest.approx(
      100 * 32 / 288)
  assert em.cost_scale_factor('none', [2, 36, 32, 288, 16]) == 1.0
  with pytest.raises(ValueError, match='cost_scale'):
    em.cost_scale_factor('huge', [2, 36, 32, 288, 16])


def test_authors_logit_is_the_paper_logit_reparameterised():
  """lambda (m (-sum ln s2 - 16 (1 + ln 2 pi) bv) - 5000 ba) equals the
  paper's logit with lambda doubled, beta_v x 1.419 and beta_a x -2500."""
  rng = np.random.default_rng(7)
  votes, activations, beta_v, beta_a = _problem(rng, 1, 4, 10, None)
  beta_a *= 0.002
  scale_v = (1 + math.log(2 * math.pi)) / 2
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    authors = em.em_routing(
        tf.constant(votes), tf.constant(activations), tf.constant(beta_v),
        tf.constant(beta_a), 2, inverse_temperature=0.05,
        activation_cost='authors')
    paper = em.em_routing(
        tf.constant(votes), tf.constant(activations),
        tf.constant(scale_v * beta_v), tf.constant(-2500 * beta_a), 2,
        inverse_temperature=0.1)
    authors, paper = session.run([authors, paper])
  for a, p in zip(authors, paper):
    np.testing.assert_allclose(a, p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name', ['activation_cost', 'initial_assignments'])
def test_unknown_departure_is_a_clear_error(name):
  with pytest.raises(ValueError, match=name):
    with tf.Graph().as_default():
      em.em_routing(tf.zeros([1, 1, 2, 3, 16]), tf.ones([1, 1, 3]),
                    tf.zeros([2]), tf.zeros([2]), 1, **{name: 'other'})


def _variables(initialization):
  """{name: value} of a tiny network's variables under a scheme."""
  config = model.ModelConfig(initialization=initialization,
                             conv1_padding='SAME', **TINY)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    tf.compat.v1.set_random_seed(0)
    config.build(tf.zeros([1, 28, 28, 1]))
    session.run(tf.compat.v1.global_variables_initializer())
    variables = tf.compat.v1.global_variables()
    return dict(zip([v.op.name for v in variables],
                    session.run(variables)))


def test_every_scheme_builds_the_same_variables():
  shapes = {name: {k: v.shape for k, v in _variables(name).items()}
            for name in initializers.SCHEMES}
  for name, found in shapes.items():
    assert found == shapes['normal'], name


def _value(values, suffix):
  (name,) = [k for k in values if k.endswith(suffix)]
  return values[name]


def test_authors_scheme_values():
  values = _variables('authors')
  assert _value(values, 'conv_caps1/transforms').std() == pytest.approx(
      0.3 * 0.88, rel=0.1)  # a normal truncated at 2 sd has sd 0.88 sd
  assert np.abs(_value(values, 'class_caps/transforms')).max() <= 0.02
  np.testing.assert_array_equal(_value(values, 'conv_caps2/beta_a'), 0.5)
  np.testing.assert_array_equal(_value(values, 'class_caps/beta_v'), 2.0)
  np.testing.assert_array_equal(_value(values, 'class_caps/beta_a'), 1.0)
  np.testing.assert_array_equal(
      _value(values, 'primary_caps/activations/biases'), -1.0)
  np.testing.assert_array_equal(_value(values, 'relu_conv1/biases'),
                                np.float32(0.1))


def test_ibm_scheme_values():
  values = _variables('ibm')
  beta_a = np.concatenate([_value(values, f'{layer}/beta_a') for layer in
                           ('conv_caps1', 'conv_caps2', 'class_caps')])
  assert np.all((beta_a >= -2000) & (beta_a <= 0))
  assert -1400 < beta_a.mean() < -600
  beta_v = _value(values, 'class_caps/beta_v')  # Xavier: +-sqrt(6 / 11)
  assert np.abs(beta_v).max() <= math.sqrt(6 / 11) and beta_v.std() > 0


def test_identity_scheme_starts_transforms_near_the_identity():
  transforms = _value(_variables('identity'), 'conv_caps1/transforms')
  np.testing.assert_allclose(transforms.mean(axis=(0, 1)), np.eye(4),
                             atol=0.05)
  assert 0.05 < (transforms - np.eye(4)).std() < 0.1


def test_normal_scheme_is_unchanged():
  values = _variables('normal')
  assert _value(values, 'conv_caps1/transforms').std() == pytest.approx(
      0.5 * 0.88, rel=0.1)
  np.testing.assert_array_equal(_value(values, 'class_caps/beta_a'), 0.0)


def test_class_lambda_scale_applies_to_the_class_layer_only():
  config = model.ModelConfig(inverse_temperature_schedule='authors',
                             final_lambda=0.01, class_lambda_scale=0.25)
  conv = config.routing().inverse_temperature
  fc = config.routing(lambda_scale=config.class_lambda_scale)
  assert conv(2) == pytest.approx(0.01 * (1 - 0.95 ** 3))
  assert fc.inverse_temperature(2) == pytest.approx(conv(2) / 4)


@pytest.mark.parametrize('field,value', [
    ('initialization', 'xavier'), ('activation_cost', 'ibm'),
    ('cost_scale', 'big'), ('initial_assignments', 'random'),
    ('pose_damping', 1.0), ('pose_damping', -0.1),
    ('class_lambda_scale', 0.0), ('min_mass', -1e-20)])
def test_model_config_refuses_bad_recipe_fields(field, value):
  with pytest.raises(ValueError, match=field):
    model.ModelConfig(**{field: value})


def test_legacy_model_config_loads_with_the_paper_routing(tmp_path):
  """A model_config.json written before these fields existed."""
  legacy = {f.name: getattr(model.ModelConfig(), f.name)
            for f in dataclasses.fields(model.ModelConfig)
            if f.name not in ('initialization', 'activation_cost',
                              'cost_scale', 'pose_damping',
                              'initial_assignments', 'class_lambda_scale',
                              'conv1_padding', 'stop_assignment_gradients',
                              'min_mass')}
  (tmp_path / model.CONFIG_FILE).write_text(__import__('json').dumps(legacy))
  loaded = model.ModelConfig.load(str(tmp_path))
  assert loaded.routing().activation_cost == 'paper'
  assert loaded.routing().pose_damping == 0.0
  assert not loaded.routing().stop_assignment_gradients
  assert loaded.routing().min_mass == 0.0
  assert model.ModelConfig(min_mass=1e-20).routing().min_mass == 1e-20
  assert loaded.initialization == 'normal'


def test_model_config_loads_a_scheme_under_its_earlier_name(tmp_path):
  model.ModelConfig(initialization='normal').save(str(tmp_path))
  path = tmp_path / model.CONFIG_FILE
  path.write_text(path.read_text().replace('"normal"', '"default"'))
  assert model.ModelConfig.load(str(tmp_path)).initialization == 'normal'
  with pytest.raises(ValueError, match='initialization'):
    model.ModelConfig(initialization='default')


@pytest.mark.parametrize('recipe', ['authors', 'ibm', 'identity', 'normal'])
def test_recipe_builds_and_trains_finitely(recipe):
  """Every model field of the recipe reaches the network, and a few steps of
  its optimisation stay finite at 3 iterations."""
  import training  # pylint: disable=import-outside-toplevel
  values = experiments.get(recipe)
  model_fields = {f.name for f in dataclasses.fields(model.ModelConfig)}
  train_fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
  fields = dict({'iterations': 3}, **{k: v for k, v in values.items()
                                       if k in model_fields})
  config = model.ModelConfig(conv1_padding='SAME', **TINY, **fields)
  train_config = training.TrainConfig(**{k: v for k, v in values.items()
                                         if k in train_fields})
  rng = np.random.default_rng(0)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    tf.compat.v1.set_random_seed(0)
    images = tf.constant(rng.uniform(size=(4, 28, 28, 1)), tf.float32)
    labels = tf.constant([0, 1, 2, 3])
    graph = training.build(images, labels, config, train_config)
    session.run(tf.compat.v1.global_variables_initializer())
    losses = [session.run([graph['train_op'], graph['loss']])[1]
              for _ in range(3)]
  assert config.iterations == 3
  assert np.all(np.isfinite(losses)), losses


@pytest.mark.parametrize('class_iterations,expected', [(0, 1), (3, 3)])
def test_class_iterations_route_the_class_capsules_only(class_iterations,
                                                        expected):
  """--class_iterations changes the class capsules' iterations, not the
  ConvCaps layers'; 0 keeps --iterations."""
  config = model.ModelConfig(iterations=1, class_iterations=class_iterations,
                             a=4, b=3, c=3, d=3)
  with tf.Graph().as_default():
    config.build(tf.zeros([2, 28, 28, 1]))
    traces = {trace.name.split('/')[-1]: len(trace.iterations)
              for trace in tf.compat.v1.get_collection(layers.TRACES)}
  del traces['primary_caps']  # no routing
  assert traces == {'conv_caps1': 1, 'conv_caps2': 1, 'class_caps': expected}
  assert config.class_layer_iterations == expected
  with pytest.raises(ValueError, match='class_iterations'):
    model.ModelConfig(class_iterations=-1)


def test_e_step_normalization_reaches_every_layer_and_is_checked():
  config = model.ModelConfig(e_step_normalization='parent_types')
  assert config.routing().e_step_normalization == 'parent_types'
  assert config.routing(lambda_scale=0.5).e_step_normalization == (
      'parent_types')
  assert model.ModelConfig().e_step_normalization == 'all_parents'
  with tf.Graph().as_default():
    dataclasses.replace(config, a=4, b=3, c=3, d=3).build(
        tf.zeros([2, 28, 28, 1]))
    traced = {trace.name.split('/')[-1]: trace.e_step_normalization
              for trace in tf.compat.v1.get_collection(layers.TRACES)
              if trace.iterations}
  assert traced == dict.fromkeys(['conv_caps1', 'conv_caps2', 'class_caps'],
                                 'parent_types')  # the diagnostics know it
  with pytest.raises(ValueError, match='e_step_normalization'):
    model.ModelConfig(e_step_normalization='per_child')
