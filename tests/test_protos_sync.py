"""The committed protos/*_pb2*.py must be exactly what protos/generate.py produces.

Why: a .proto edited without regenerating would let the wire format and the code
drift apart silently (or differ between parties running different checkouts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protos import generate as gen

pytest.importorskip("grpc_tools", reason="grpcio-tools (test extra) regenerates protos/")


def test_every_proto_has_committed_generated_code(tmp_path: Path) -> None:
    protos = gen.proto_files()
    assert protos, f"no .proto files found in {gen.PROTOS_DIR}"
    written = gen.generate(out_root=tmp_path)
    assert {p.name for p in written} == {n for p in protos for n in gen.generated_names(p)}
    stale = []
    for fresh in written:
        committed = gen.PROTOS_DIR / fresh.name
        if not committed.exists():
            stale.append(f"{committed} is missing")
        elif committed.read_bytes() != fresh.read_bytes():
            stale.append(f"{committed} differs from protoc output")
    assert not stale, "; ".join(stale) + " -- run `python protos/generate.py` and commit the result"


def test_generated_code_imports_as_package() -> None:
    """-I <repo root> means generated modules import each other as `from protos import x_pb2`."""
    for proto in gen.proto_files():
        grpc_file = gen.PROTOS_DIR / f"{proto.stem}_pb2_grpc.py"
        text = grpc_file.read_text()
        if "service " in proto.read_text():
            assert f"from protos import {proto.stem}_pb2" in text, grpc_file
