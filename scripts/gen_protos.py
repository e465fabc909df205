#!/usr/bin/env python3
"""Generate the Python gRPC code for proto/billing/v1/billing.proto into cluster/pb/.

Runs grpc_tools.protoc in-process (plus mypy-protobuf for .pyi stubs when installed). protoc
names the modules after the proto package (``billing.v1``), which would clash with our own
``billing`` Python package, so the generated files are flattened into cluster/pb/ and their
``from billing.v1 import ...`` imports rewritten to relative ones. The result is committed;
tests/unit/test_proto_generated.py regenerates into a temporary directory and fails on drift.

Usage: python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILE = "billing/v1/billing.proto"
DEFAULT_OUT = ROOT / "cluster" / "pb"

_INIT = '"""Generated gRPC/protobuf code for proto/billing/v1 (scripts/gen_protos.py)."""\n'


def _rewrite(text: str) -> str:
    """Make imports of sibling generated modules relative (cluster.pb is not ``billing.v1``)."""
    text = re.sub(r"^from billing\.v1 import ", "from . import ", text, flags=re.M)
    text = re.sub(r"^import billing\.v1\.(\w+)$", r"from . import \1", text, flags=re.M)
    return re.sub(r"\bbilling\.v1\.(billing_pb2)\.", r"\1.", text)


def generate(out_dir: Path) -> list[Path]:
    """Generate into ``out_dir`` (created if needed); return the files written."""
    from grpc_tools import protoc  # a dev dependency: imported only when generating

    plugins: list[str] = []
    if (
        shutil.which("protoc-gen-mypy")
        or (Path(sys.executable).parent / "protoc-gen-mypy").exists()
    ):
        bindir = Path(sys.executable).parent
        plugins = [
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        ]
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
        ]
        if plugins:
            args += [*plugins, f"--mypy_out={tmp}", f"--mypy_grpc_out={tmp}"]
        args.append(str(PROTO_ROOT / PROTO_FILE))
        code = protoc.main(args)
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        generated = sorted((Path(tmp) / "billing" / "v1").iterdir())
        for path in generated:
            target = out_dir / path.name
            target.write_text(_rewrite(path.read_text()))
            written.append(target)
        init = out_dir / "__init__.py"
        init.write_text(_INIT)
        written.append(init)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
