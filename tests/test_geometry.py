"""ReLU Conv1's padding: the grids it gives, its default per dataset, and
run directories written before it was recorded."""

import json

import numpy as np
import pytest
import tensorflow as tf

import model
from nets import layers


@pytest.mark.parametrize('dataset,padding,size,grids', [
    ('mnist', 'SAME', 28, [28, 14, 14, 6, 4]),
    ('mnist', 'VALID', 28, [28, 12, 12, 5, 3]),
    ('smallnorb', 'VALID', 32, [32, 14, 14, 6, 4]),
])
def test_geometry_is_the_built_network(dataset, padding, size, grids):
  """geometry() names the grids the network builds: PrimaryCaps poses on
  its grid, each ConvCaps layer's positions on its own."""
  config = model.ModelConfig(dataset=dataset, a=4, b=3, c=3, d=3,
                             conv1_padding=padding)
  geometry = config.geometry(size, size)
  assert [name for name, _, _ in geometry] == [
      'input', 'relu_conv1', 'primary_caps', 'conv_caps1', 'conv_caps2']
  assert [h for _, h, _ in geometry] == grids
  assert all(h == w for _, h, w in geometry)
  channels = 1 if dataset == 'mnist' else 2
  with tf.Graph().as_default():
    config.build(tf.zeros([2, size, size, channels]))
    traces = {t.name.split('/')[-1]: t
              for t in tf.compat.v1.get_collection(layers.TRACES)}
  assert traces['primary_caps'].poses.shape[1:3] == (grids[2], grids[2])
  assert traces['conv_caps1'].poses.shape[1] == grids[3] ** 2
  assert traces['conv_caps2'].poses.shape[1] == grids[4] ** 2
  class_slots = traces['class_caps'].iterations[0]['assignments'].shape[-1]
  assert class_slots == grids[4] ** 2 * 3


def test_defaults_per_dataset():
  assert model.default_conv1_padding('mnist') == 'SAME'
  assert model.default_conv1_padding('smallnorb') == 'VALID'


def test_a_config_written_before_the_field_loads_as_valid(tmp_path):
  """Runs trained before conv1_padding was recorded used VALID."""
  config = model.ModelConfig(conv1_padding='SAME')
  config.save(str(tmp_path))
  path = tmp_path / model.CONFIG_FILE
  record = json.loads(path.read_text())
  assert record['conv1_padding'] == 'SAME'
  del record['conv1_padding']
  path.write_text(json.dumps(record))
  assert model.ModelConfig.load(str(tmp_path)).conv1_padding == 'VALID'


def test_rejects_an_unknown_padding():
  with pytest.raises(ValueError, match='conv1_padding'):
    model.ModelConfig(conv1_padding='same')


def test_same_padding_keeps_the_parameter_count():
  """Only the grids change: the same variables for both paddings."""
  counts = []
  for padding in model.PADDINGS:
    with tf.Graph().as_default():
      model.ModelConfig(conv1_padding=padding).build(
          tf.zeros([1, 28, 28, 1]))
      counts.append(sum(int(np.prod(v.shape))
                        for v in tf.compat.v1.trainable_variables()))
  assert counts[0] == counts[1] == 318964
