"""Regenerate the Python code for every ``protos/*.proto``.

Why ``-I <repo root>``: the generated modules then import each other as
``from protos import x_pb2``, which works for the installed package and for a
source checkout alike.  ``tests/test_protos_sync.py`` runs :func:`generate` into a
temporary directory and compares it with the committed files, so editing a
.proto without regenerating fails the test suite.

Usage: ``python protos/generate.py`` (needs grpcio-tools, a test dependency).
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOS_DIR.parent


def proto_files(protos_dir: Path = PROTOS_DIR) -> list[Path]:
    """Every .proto in ``protos_dir``, sorted (deterministic output order)."""
    return sorted(protos_dir.glob("*.proto"))


def generated_names(proto: Path) -> list[str]:
    """File names protoc writes for ``proto``."""
    stem = proto.stem
    return [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]


def generate(out_root: Path = REPO_ROOT, protos_dir: Path = PROTOS_DIR) -> list[Path]:
    """Run protoc for every .proto; write into ``out_root/protos/``; return the files written.

    ``out_root`` is the repo root normally, a temp dir in the sync test.
    """
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "grpcio-tools is required to regenerate protos/ (pip install -e '.[test]'): " + str(exc)
        ) from None

    repo_root = protos_dir.parent
    protos = proto_files(protos_dir)
    if not protos:
        raise SystemExit(f"no .proto files in {protos_dir}")
    out_root = Path(out_root)
    (out_root / protos_dir.name).mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{repo_root}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",  # type stubs: mypy checks our use of the messages
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(repo_root)) for p in protos],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc} for {', '.join(p.name for p in protos)}")
    return [out_root / protos_dir.name / n for p in protos for n in generated_names(p)]


def main() -> int:
    for path in generate():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
