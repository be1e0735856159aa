"""Matrix capsules with EM routing: layers, routing, losses and networks."""

from nets.capsules import capsules_v0
from nets.routing import em_routing
from nets.layers import capsules_conv
from nets.layers import capsules_fc
from nets.layers import capsules_init
from nets.layers import conv2d
from nets.layers import Routing
from nets.losses import spread_loss
