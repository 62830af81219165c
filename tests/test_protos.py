"""protos/gen.py: the committed generated code is current, and the staleness check can fail."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

GEN_PATH = Path(__file__).resolve().parent.parent / "protos" / "gen.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tensorgate_protos_gen", GEN_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture
def protos_copy(gen: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of protos/ (sources and generated code) that gen.py then treats as its own."""
    root = tmp_path / "protos"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(gen.PROTOS / "tensorgate", root / "tensorgate", ignore=ignore)
    monkeypatch.setattr(gen, "PROTOS", root)
    monkeypatch.chdir(tmp_path)  # protoc resolves the relative SOURCES through -I, not the cwd
    return root


def test_sources(gen: ModuleType) -> None:
    assert [str(s) for s in gen.SOURCES] == [
        "tensorgate/torchserve/inference.proto",
        "tensorgate/torchserve/management.proto",
        "tensorgate/v1/inference.proto",
        "tensorgate/v1/registry.proto",
        "tensorgate/v1/tensor.proto",
    ]


def test_generated_files_lists_every_output(gen: ModuleType) -> None:
    files = {str(p) for p in gen.generated_files(gen.PROTOS)}
    want = {
        f"tensorgate/{folder}/{stem}{suffix}"
        for folder, stems in (("v1", ("inference", "registry", "tensor")),
                              ("torchserve", ("inference", "management")))
        for stem in stems
        for suffix in gen.SUFFIXES
    }
    assert files == want


def test_generated_code_is_current(gen: ModuleType) -> None:
    assert gen.stale_files() == []


def test_fresh_generation_matches_committed(gen: ModuleType, tmp_path: Path) -> None:
    gen.generate(tmp_path)
    assert gen.generated_files(tmp_path) == gen.generated_files(gen.PROTOS)
    for rel in gen.generated_files(tmp_path):
        assert (tmp_path / rel).read_bytes() == (gen.PROTOS / rel).read_bytes(), rel


def test_copy_is_current(protos_copy: Path, gen: ModuleType) -> None:
    assert gen.stale_files() == []


def test_changed_byte_is_stale(protos_copy: Path, gen: ModuleType) -> None:
    target = protos_copy / "tensorgate" / "v1" / "registry_pb2.py"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    assert gen.stale_files() == ["tensorgate/v1/registry_pb2.py"]


def test_missing_and_extra_files_are_stale(protos_copy: Path, gen: ModuleType) -> None:
    (protos_copy / "tensorgate" / "v1" / "tensor_pb2.pyi").unlink()
    (protos_copy / "tensorgate" / "v1" / "old_pb2_grpc.py").write_text("# left over\n")
    assert gen.stale_files() == ["tensorgate/v1/old_pb2_grpc.py", "tensorgate/v1/tensor_pb2.pyi"]


def test_changed_proto_makes_generated_code_stale(protos_copy: Path, gen: ModuleType) -> None:
    proto = protos_copy / "tensorgate" / "v1" / "tensor.proto"
    proto.write_text(proto.read_text() + "\nmessage Extra {\n  string note = 1;\n}\n")
    stale = gen.stale_files()
    assert "tensorgate/v1/tensor_pb2.py" in stale
    assert "tensorgate/v1/tensor_pb2.pyi" in stale


def test_check_exit_codes(
    protos_copy: Path, gen: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["gen.py", "--check"])
    assert gen.main() == 0
    assert "up to date (5 protos)" in capsys.readouterr().out
    (protos_copy / "tensorgate" / "v1" / "inference_pb2_grpc.py").write_text("# edited by hand\n")
    assert gen.main() == 1
    out = capsys.readouterr().out
    assert "stale" in out and "tensorgate/v1/inference_pb2_grpc.py" in out
