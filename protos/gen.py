"""Regenerates the Python code for protos/ (run `make protos`); `--check` fails when it is stale.

The generated modules sit beside their .proto sources (protos/tensorgate/v1/*_pb2*.py) and
install as the `tensorgate` package, so clients import `tensorgate.v1.inference_pb2_grpc`.
TorchServe's wire API (protos/tensorgate/torchserve/, its own proto packages
`org.pytorch.serve.grpc.*`) is generated the same way: `tensorgate.torchserve.inference_pb2`.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
SOURCES = sorted(p.relative_to(PROTOS) for p in (PROTOS / "tensorgate").rglob("*.proto"))
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _include_dirs() -> list[str]:
    """The import roots: our protos, protobuf's well-known types and googleapis' annotations."""
    import google.api.annotations_pb2 as annotations
    import grpc_tools

    googleapis = Path(annotations.__file__).resolve().parent.parent.parent
    return [str(PROTOS), str(Path(grpc_tools.__file__).parent / "_proto"), str(googleapis)]


def generate(out: Path) -> None:
    """Runs protoc (from grpcio-tools) over every .proto under protos/tensorgate into `out`."""
    from grpc_tools import protoc

    args = ["protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    args += [str(s) for s in SOURCES]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


def generated_files(root: Path) -> list[Path]:
    """The generated files under root, relative to it."""
    return sorted(
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)
    )


def stale_files() -> list[str]:
    """Generated files that differ from a fresh generation (missing, changed or extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = generated_files(fresh), generated_files(PROTOS)
        stale = [str(p) for p in sorted(set(want) ^ set(have))]
        stale += [
            str(p)
            for p in want
            if p in have and not filecmp.cmp(fresh / p, PROTOS / p, shallow=False)
        ]
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if generated code is stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("generated code is stale; run `make protos`:\n  " + "\n  ".join(stale))
            return 1
        print(f"generated code is up to date ({len(SOURCES)} protos)")
        return 0
    generate(PROTOS)
    for package in {PROTOS / "tensorgate", *(PROTOS / s.parent for s in SOURCES)}:
        (package / "__init__.py").touch()
    print(f"generated {len(generated_files(PROTOS))} files from {len(SOURCES)} protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
