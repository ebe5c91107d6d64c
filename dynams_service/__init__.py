"""dynams-service: distributed DynaMS data selection for multi-node PyTorch training.

The top level re-exports the core (no Ray, no gRPC imported here); the selector service
lives in ``dynams_service.service`` and the trainer-side client in ``dynams_service.client``.

Example:
    >>> import torch, dynams_service as dms
    >>> m = dms.margins(torch.randn(6, 4), torch.randn(3, 4), torch.zeros(3))
    >>> dms.select(m, torch.tensor([0, 0, 1, 1, 2, 2]), ratio=0.5).tolist()  # doctest: +SKIP
    [0, 3, 5]
"""

from .core import *  # noqa: F403
from .core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = [*_core_all, "__version__"]
