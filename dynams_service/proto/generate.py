"""Regenerate the protobuf/gRPC modules from protos/ (``python -m dynams_service.proto.generate``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = Path(__file__).resolve().parent


def generate(out: Path = OUT) -> None:
    """Run grpcio-tools' protoc over protos/dynams/v1/*.proto into ``out``."""
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.glob("dynams/v1/*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes absolute imports (``from dynams.v1 import …``); make them package-relative.
    for grpc_module in out.glob("dynams/v1/*_pb2_grpc.py"):
        text = grpc_module.read_text()
        grpc_module.write_text(text.replace("from dynams.v1 import", "from . import"))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
