"""The DynaMS core: margins, selection, policy and plan, slimmable models, PSP, shards.

Pure PyTorch/numpy/pyarrow; imports neither Ray nor gRPC, so researchers can call it
directly and both the selector and the trainer build on it.
"""

from .dataset import ShardDataset
from .decoders import Decoder, decoders, register_decoder
from .idx import IDXError, load_idx_split, read_idx
from .margin import MARGIN_MODES, MarginMode, margins
from .models import (
    SlimCNN,
    SlimmableModel,
    SlimResNet18,
    architectures,
    build_architecture,
    count_macs,
    count_parameters,
    load_model_modules,
    register_architecture,
)
from .policy import EpochKind, EpochPlan, Plan, SelectionPolicy
from .psp import PSPError, TensorRecord, build_proxy, export_psp, proxy_spec
from .scoring import score
from .selection import budget, class_quotas, select
from .shards import (
    DatasetFingerprint,
    DatasetManifest,
    ShardError,
    decode_samples,
    fingerprint,
    read_manifest,
    read_shards,
    shard_groups,
    verify_dataset,
    write_encoded_shards,
    write_image_folder,
    write_shards,
    write_shards_from_dataset,
)
from .slimmable import SlimmableConv2d, SlimmableLinear, SwitchableBatchNorm2d

__all__ = [
    "ShardDataset", "Decoder", "decoders", "register_decoder",
    "write_encoded_shards", "write_image_folder",
    "IDXError", "load_idx_split", "read_idx",
    "MARGIN_MODES", "MarginMode", "margins",
    "SlimCNN", "SlimmableModel", "SlimResNet18", "architectures", "build_architecture",
    "count_macs", "count_parameters", "load_model_modules", "register_architecture",
    "EpochKind", "EpochPlan", "Plan", "SelectionPolicy",
    "PSPError", "TensorRecord", "build_proxy", "export_psp", "proxy_spec",
    "score",
    "budget", "class_quotas", "select",
    "DatasetFingerprint", "DatasetManifest", "ShardError", "decode_samples", "fingerprint",
    "read_manifest", "read_shards", "shard_groups", "verify_dataset", "write_shards",
    "write_shards_from_dataset",
    "SlimmableConv2d", "SlimmableLinear", "SwitchableBatchNorm2d",
]

from .partition import epoch_order, rank_count, rank_part, uniform_subset  # noqa: E402

__all__ += ["epoch_order", "rank_count", "rank_part", "uniform_subset"]

from .job import JobSpec, ProxySpec, ScorerResources  # noqa: E402

__all__ += ["JobSpec", "ProxySpec", "ScorerResources"]

from .distributed_selection import (  # noqa: E402
    DistributedSelection,
    SelectionPart,
    distributed_select,
    max_passes,
)

__all__ += ["DistributedSelection", "SelectionPart", "distributed_select", "max_passes"]
