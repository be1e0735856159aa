"""The baseline convolutional network of the robustness comparisons.

Two 5x5 convolutions of stride 1 with ReLU, each followed by 2x2 max
pooling, then one fully connected hidden layer with ReLU and dropout, then
the class logits:

  conv1   5x5, stride 1, SAME, `channels` (32)       -> pool 2x2
  conv2   5x5, stride 1, SAME, 2 x `channels` (64)   -> pool 2x2
  fc1     `hidden` (1024) units, ReLU, dropout 0.5 while training
  logits  num_classes

How it compares with the paper's baseline. Hinton et al. (2018), section 5,
compare with a CNN of two convolutional hidden layers of 32 and 64 channels,
5x5 kernels of stride 1, 2x2 max pooling, a fully connected layer of 1024
units with dropout and a softmax output, ReLU throughout: 4.2M parameters
on smallNORB. This network follows that description with one fully
connected hidden layer, because one is what gives the paper's count: on
32x32x2 smallNORB crops it has 4,253,349 parameters, where a second hidden
layer of 1024 would give 5.30M. (The paper's text was not at hand when this
was written; the arithmetic is what decided.) Departures: the pooling and
convolutions pad SAME (not stated in the paper); the dropout rate, 0.5, is
not given there either; and the network is sized by its input, so on MNIST
(28x28) it has 3,274,634 parameters and on the 40x40 canvas of mnist40
6,616,970 (`python src/count_params.py --model=cnn_baseline`), against
318,964 for the capsule network of Figure 1 (A = B = C = D = 32) on either.
The paper matches the two networks by test accuracy, not by size.
"""

import tensorflow as tf

from nets import initializers
from nets import layers
from nets import shapes

DROPOUT_RATE = 0.5
KERNEL_SIZE = 5


def cnn_baseline(images, num_classes, channels=32, hidden=1024,
                 training=False, name='cnn_baseline'):
  """Builds the network.

  Args:
    images: [N, H, W, C].
    num_classes: J.
    channels: of the first convolution; the second has twice as many.
    hidden: units of the fully connected hidden layer.
    training: apply dropout (the training graph); False for evaluation and
      attacks.
    name: variable scope.

  Returns:
    class logits [N, J] (the softmax gives the class probabilities).
  """
  in_channels = shapes.static_size(images, -1, 'cnn_baseline')
  with tf.compat.v1.variable_scope(name):
    net = images
    for index, (fan_in, fan_out) in enumerate(
        [(in_channels, channels), (channels, 2 * channels)]):
      net = layers.conv2d(net, [KERNEL_SIZE, KERNEL_SIZE, fan_in, fan_out],
                          [1, 1, 1, 1], padding='SAME',
                          name=f'conv{index + 1}')
      net = tf.nn.max_pool2d(net, 2, 2, 'SAME')
    height, width, depth = shapes.static_sizes(net, [1, 2, 3],
                                               'cnn_baseline')
    net = tf.reshape(net, [-1, height * width * depth])
    net = fully_connected(net, hidden, tf.nn.relu, name='fc1')
    if training:
      net = tf.nn.dropout(net, rate=DROPOUT_RATE)
    return fully_connected(net, num_classes, None, name='logits')


def fully_connected(inputs, units, activation_fn=tf.nn.relu, name='fc'):
  """A dense layer: He-initialised weights, zero biases.

  Args:
    inputs: [N, K].
    units: M.
    activation_fn: applied to the output, or None.
    name: variable scope.

  Returns:
    [N, M].
  """
  fan_in = shapes.static_size(inputs, -1, 'fully_connected')
  with tf.compat.v1.variable_scope(name):
    weights = tf.compat.v1.get_variable(
        'weights', [fan_in, units], tf.float32,
        initializers.Init('he').initializer(fan_in, units))
    biases = tf.compat.v1.get_variable(
        'biases', [units], tf.float32, tf.compat.v1.zeros_initializer())
    outputs = tf.nn.bias_add(tf.linalg.matmul(inputs, weights), biases)
    return outputs if activation_fn is None else activation_fn(outputs)
