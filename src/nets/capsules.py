"""The network of the paper's Figure 1.

ReLU Conv1 (5x5, stride 2, A channels) -> PrimaryCaps (1x1, B types)
-> ConvCaps1 (3x3, stride 2, C types) -> ConvCaps2 (3x3, stride 1, D types)
-> Class capsules (one per class, coordinate addition).

The paper's network has A = B = C = D = 32; its small network A = 64, B = 8,
C = D = 16.
"""

import tensorflow as tf

from nets import layers
from nets import shapes


def capsules_v0(inputs, num_classes, iterations, routing=layers.Routing(),
                a=32, b=32, c=32, d=32, coordinate_addition=True,
                conv1_padding='VALID', class_routing=None,
                init=layers.Initialization(), class_iterations=None,
                name='capsules_v0'):
  """Builds the network.

  Args:
    inputs: images [N, H, W, channels], e.g. [N, 28, 28, 1] for MNIST or
      [N, 32, 32, 2] for smallNORB.
    num_classes: number of class capsules.
    iterations: EM routing iterations in every capsule layer.
    routing: a `layers.Routing` for every capsule layer.
    a, b, c, d: the channel and capsule-type counts A, B, C, D.
    coordinate_addition: in the class capsules.
    conv1_padding: of ReLU Conv1: 'VALID' (28 -> 12 -> 5 -> 3 on MNIST; the
      paper's 32 -> 14 -> 6 -> 4 on smallNORB crops) or 'SAME' (28 -> 14 ->
      6 -> 4, the TF 1.4 reference's MNIST network).
    class_routing: a `layers.Routing` for the class capsules, or None for
      `routing` (the authors scale the class layer's inverse temperature).
    init: an `initializers.Initialization` for every variable.
    class_iterations: EM routing iterations of the class capsules, or None
      for `iterations` (a diagnostic: where do the iterations help?).
    name: variable scope.

  Returns:
    poses [N, num_classes, 4, 4] and activations [N, num_classes].
  """
  channels = shapes.static_size(inputs, -1, 'capsules_v0')
  with tf.compat.v1.variable_scope(name):
    net = layers.conv2d(inputs, [5, 5, channels, a], [1, 2, 2, 1],
                        padding=conv1_padding,
                        weights_init=init.conv1_weights,
                        biases_init=init.conv1_biases, name='relu_conv1')
    net = layers.capsules_init(net, [1, 1, a, b], [1, 1, 1, 1], init=init,
                               name='primary_caps')
    net = layers.capsules_conv(net, [3, 3, b, c], [1, 2, 2, 1], iterations,
                               routing, init, name='conv_caps1')
    net = layers.capsules_conv(net, [3, 3, c, d], [1, 1, 1, 1], iterations,
                               routing, init, name='conv_caps2')
    return layers.capsules_fc(net, num_classes,
                              class_iterations or iterations,
                              coordinate_addition, class_routing or routing,
                              init, name='class_caps')
