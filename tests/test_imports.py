"""The package's public surface: a pinned top level that imports neither Ray nor gRPC."""

from __future__ import annotations

import subprocess
import sys

# What a researcher or trainer touches; everything else is imported from its submodule.
TOP_LEVEL = {
    "margins", "score", "select", "SelectionPolicy",
    "SlimmableModel", "SlimCNN", "SlimResNet18", "build_architecture", "register_architecture",
    "make_slimmable",
    "register_decoder", "ShardDataset", "read_manifest", "write_image_folder", "write_shards",
    "JobSpec", "ProxySpec", "ScorerResources",
    "__version__",
}


def test_top_level_surface_is_pinned():
    import dynams_service

    assert sorted(dynams_service.__all__) == sorted(TOP_LEVEL)
    assert len(dynams_service.__all__) == len(TOP_LEVEL)  # no name listed twice
    for name in dynams_service.__all__:
        assert hasattr(dynams_service, name), name


def test_core_surface_is_the_top_level_without_the_version():
    import dynams_service.core

    assert sorted(dynams_service.core.__all__) == sorted(TOP_LEVEL - {"__version__"})


def test_top_level_and_core_import_neither_ray_nor_grpc():
    code = (
        "import sys, dynams_service, dynams_service.core, dynams_service.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'grpc'})\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
