"""The core and the package's top level import neither Ray nor gRPC."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_neither_ray_nor_grpc():
    code = (
        "import sys, dynams_service, dynams_service.core, dynams_service.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'grpc'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_surface_is_explicit():
    import dynams_service

    for name in ("margins", "select", "SelectionPolicy", "export_psp", "build_proxy"):
        assert name in dynams_service.__all__
        assert callable(getattr(dynams_service, name))
