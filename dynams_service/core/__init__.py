"""The DynaMS core: margins, selection, policy, slimmable models, proxy export, shards.

Pure PyTorch/numpy/pyarrow; imports neither Ray nor gRPC, so researchers can call it
directly and both the selector and the trainer build on it. This package re-exports what
a researcher or trainer touches; everything else is imported from its submodule
(``dynams_service.core.models.proxy``, ``.partition``, ``.idx``, ``.shards``, ...).
"""

from .data.dataset import ShardDataset
from .data.decoders import register_decoder
from .data.shards import read_manifest, write_image_folder, write_shards
from .job import JobSpec, ProxySpec, ScorerResources
from .models.models import (
    SlimCNN,
    SlimmableModel,
    SlimResNet18,
    build_architecture,
    register_architecture,
)
from .models.slimming import make_slimmable
from .selection.margin import margins
from .selection.policy import SelectionPolicy
from .selection.scoring import score
from .selection.selection import select

__all__ = [
    "margins", "score", "select", "SelectionPolicy",
    "SlimmableModel", "SlimCNN", "SlimResNet18", "build_architecture", "register_architecture",
    "make_slimmable",
    "register_decoder", "ShardDataset", "read_manifest", "write_image_folder", "write_shards",
    "JobSpec", "ProxySpec", "ScorerResources",
]
