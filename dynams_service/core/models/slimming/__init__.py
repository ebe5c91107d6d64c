"""Your own network, slimmable in one call: ``make_slimmable(model, widths=(1.0, 0.25))``.

``channels`` analyses a traced network's channels (what must shrink together, what
cannot be sliced), ``layers`` holds the width-aware layers that replace its
convolutions, linear layers and norms, and ``network`` puts them together.
"""

from .channels import SlimmingError
from .network import SlimmedNetwork, make_slimmable

__all__ = ["make_slimmable", "SlimmedNetwork", "SlimmingError"]
