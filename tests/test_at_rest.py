"""Files at rest: archives are bounded before they are unpacked, manifests cannot exhaust the stack,
keys and model files are owner-only, a loose state directory is tightened (never silently kept)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from crypto import signing
from crypto.certs import Identity, init_ca, issue
from crypto.files import private_dir
from fedcredit import artifacts as A
from fedcredit.errors import ConfigError, SecurityError
from party.models import ModelStore


@pytest.fixture(scope="module")
def fed_key(tmp_path_factory: pytest.TempPathFactory):
    ca = init_ca(tmp_path_factory.mktemp("ca") / "fed", "demo-fed")
    return signing.load_public(ca / "federation-signing.pub")


def _gzip_bomb(path: Path, member: str, size: int, chunk: int = 16 << 20) -> Path:
    """A valid .tar.gz whose one member is ``size`` zero bytes, written without compressing them all:
    after a full flush, deflate emits the same bytes for the same chunk, so one compressed chunk is repeated."""
    assert size % chunk == 0
    info = tarfile.TarInfo(member)
    info.size, info.mode = size, 0o600
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(chunk)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH) == block
    tail_plain = bytes(-size % 512 + 1024)  # member padding + end-of-archive blocks
    tail = c.compress(tail_plain) + c.flush()
    crc = zlib.crc32(header)
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(tail_plain, crc)
    total = len(header) + size + len(tail_plain)
    with open(path, "wb") as fh:
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head)
        for _ in range(size // chunk):
            fh.write(block)
        fh.write(tail + crc.to_bytes(4, "little") + (total & 0xFFFFFFFF).to_bytes(4, "little"))
    return path


def _refused_fast_and_small(fn, match: str) -> tuple[float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(SecurityError, match=match):
            fn()
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return elapsed, peak


def test_small_archive_that_inflates_to_gigabytes_is_refused_quickly_with_bounded_memory(tmp_path: Path, fed_key) -> None:
    bomb = _gzip_bomb(tmp_path / "model.tar.gz", "model.json", 1536 << 20)  # 1.5 GiB of zeros
    assert bomb.stat().st_size < 2 << 20  # ~1.5 MB on disk, as in the report
    with tarfile.open(bomb) as tf:  # it is a well-formed archive, not a truncated one
        assert tf.getmember("model.json").size == 1536 << 20
    store = ModelStore(tmp_path / "store", party="bank1", federation_public_key=fed_key)
    elapsed, peak = _refused_fast_and_small(lambda: store.install(bomb), r"model\.tar\.gz: tar member 'model.json' "
                                            r"\(1,610,612,736 bytes\) takes the artifact past 67,108,864 bytes")
    assert elapsed < 2.0, f"refusal took {elapsed:.1f} s (it inflated the member?)"
    assert peak < 4 << 20, f"peak Python memory {peak / 2**20:.1f} MiB while refusing"
    assert not (tmp_path / "store" / "versions").exists() or not any((tmp_path / "store" / "versions").iterdir())


def test_oversized_pax_header_and_too_many_members_are_refused_before_reading(tmp_path: Path, fed_key) -> None:
    # a pax extended header claiming 1 GiB: tarfile would read all of it into memory to parse it
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 1 << 30
    pax = tmp_path / "pax.tar"
    pax.write_bytes(info.tobuf(format=tarfile.USTAR_FORMAT) + bytes(1 << 20))
    elapsed, peak = _refused_fast_and_small(lambda: A.read_artifact(pax, fed_key), "extended header of 1,073,741,824 bytes")
    assert elapsed < 2.0 and peak < 4 << 20

    many = tmp_path / "many.tar"
    with tarfile.open(many, "w") as tf:
        for i in range(A.MAX_ARTIFACT_FILES + 1):
            ti = tarfile.TarInfo(f"f{i}.json")
            ti.size = 2
            tf.addfile(ti, io.BytesIO(b"{}"))
    with pytest.raises(SecurityError, match=f"more than {A.MAX_ARTIFACT_FILES} files"):
        A.read_artifact(many, fed_key)

    d = tmp_path / "bigdir"
    d.mkdir()
    with open(d / "model.npz", "wb") as fh:
        fh.truncate(A.MAX_ARTIFACT_BYTES + 1)  # sparse: no disk used
    with pytest.raises(SecurityError, match="takes the artifact past"):
        A.read_artifact(d, fed_key)


@pytest.mark.parametrize("doc", [b"[" * 200_000 + b"]" * 200_000,
                                 b'{"format": "x", "metrics": ' + b"[" * 500 + b"]" * 500 + b"}"])
def test_deeply_nested_manifest_is_the_projects_own_error_naming_the_file(tmp_path: Path, fed_key, doc: bytes) -> None:
    d = tmp_path / "art"
    d.mkdir()
    (d / "manifest.json").write_bytes(doc)
    (d / "schema.json").write_bytes(b"{}")
    with pytest.raises(SecurityError, match=r"art: manifest\.json nests deeper than 32 levels"):
        A.read_artifact(d, fed_key)


def test_installed_model_files_and_store_logs_are_owner_only(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", "demo-fed")
    sk = signing.load_private(ca / "federation-signing.key")
    from tests.test_artifacts import _build_lr

    art = _build_lr(tmp_path / "art")
    A.sign_artifact(art, sk)
    store = ModelStore(tmp_path / "store", party="bank-a", federation_public_key=ca / "federation-signing.pub")
    old = os.umask(0o022)  # a permissive operator shell: the store must not depend on it
    try:
        store.install(art, activate=True)
    finally:
        os.umask(old)
    loose = [(p, oct(stat.S_IMODE(p.stat().st_mode))) for p in (tmp_path / "store").rglob("*")
             if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []


def test_private_keys_with_group_or_other_access_are_refused(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", "demo-fed")
    issue(ca, tmp_path / "bank1", "bank1")
    for name in ("bank1.key", "bank1.envelope.key", "bank1.flower.key"):
        path = tmp_path / "bank1" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        path.chmod(0o640)
        with pytest.raises(ConfigError, match=rf"{name} has mode 0640: group/others may access it.*chmod 600"):
            Identity.load(tmp_path / "bank1", "bank1")
        path.chmod(0o600)
    Identity.load(tmp_path / "bank1", "bank1")
    (ca / "federation-signing.key").chmod(0o644)
    with pytest.raises(ConfigError, match="federation-signing.key has mode 0644"):
        signing.load_private(ca / "federation-signing.key")


def test_loose_state_dir_is_tightened_with_a_warning_and_a_foreign_one_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert private_dir(state, "state dir") is None and stat.S_IMODE(state.stat().st_mode) == 0o700
    state.chmod(0o755)
    warning = private_dir(state, "party 'bank1' [party].state_dir")
    assert warning and "had mode 0755" in warning and "tightened to 0700" in warning
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(state)
    with pytest.raises(ConfigError, match="not a plain directory"):
        private_dir(link, "state dir")


def test_party_start_reports_the_tightened_state_dir(tmp_path: Path) -> None:
    """Through the real daemon: the warning reaches the operator (the start itself fails later, no coordinator)."""
    ca = init_ca(tmp_path / "ca", "demo-fed")
    issue(ca, tmp_path / "bank1", "bank1")
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    cfg = tmp_path / "bank1.toml"
    cfg.write_text(f'[party]\nname = "bank1"\nidentity_dir = "{tmp_path / "bank1"}"\nstate_dir = "{state}"\n\n'
                   '[coordinator]\nflower_address = "127.0.0.1:9"\nrelay_address = "127.0.0.1:9"\n')
    proc = subprocess.Popen([sys.executable, "-m", "fedcredit.cli", "party", "start", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (state / "party.ready.json").exists() and proc.poll() is None:
            time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "had mode 0777" in err and "tightened to 0700" in err, err
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert json.loads((state / "party.ready.json").read_text())["app_sha256"]
