"""An operator's ``--models`` module for a torchvision network: one line registers it."""

from torchvision.models import densenet121, resnet18

from dynams_service.core.models.models import register_architecture
from dynams_service.core.models.slimming import make_slimmable

register_architecture("tv-resnet18", lambda: make_slimmable(
    resnet18(num_classes=10), widths=(1.0, 0.25), input_shape=(3, 32, 32)))
# Registered without complaint, refused when a job asks for it: DenseNet concatenates
# channels, which no width slice keeps consistent.
register_architecture("tv-densenet121", lambda: make_slimmable(
    densenet121(num_classes=10), widths=(1.0, 0.25), input_shape=(3, 32, 32)))
