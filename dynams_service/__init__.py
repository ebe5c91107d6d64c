"""dynams-service: distributed DynaMS data selection for multi-node PyTorch training.

The top level holds what a researcher or trainer touches and imports neither Ray nor
gRPC; the selector service lives in ``dynams_service.service``, the trainer-side client
(``DynaMSSampler``, ``JointPSP``) in ``dynams_service.client``, and every other name in
its submodule of ``dynams_service.core``.

Example:
    >>> import torch, dynams_service as dms
    >>> m = dms.margins(torch.randn(6, 4), torch.randn(3, 4), torch.zeros(3))
    >>> dms.select(m, ratio=0.5).shape
    torch.Size([3])
"""

from .core import (
    JobSpec,
    ProxySpec,
    ScorerResources,
    SelectionPolicy,
    ShardDataset,
    SlimCNN,
    SlimmableModel,
    SlimResNet18,
    build_architecture,
    make_slimmable,
    margins,
    read_manifest,
    register_architecture,
    register_decoder,
    score,
    select,
    write_image_folder,
    write_shards,
)

__version__ = "0.1.0"
__all__ = [
    "margins", "score", "select", "SelectionPolicy",
    "SlimmableModel", "SlimCNN", "SlimResNet18", "build_architecture", "register_architecture",
    "make_slimmable",
    "register_decoder", "ShardDataset", "read_manifest", "write_image_folder", "write_shards",
    "JobSpec", "ProxySpec", "ScorerResources",
    "__version__",
]
