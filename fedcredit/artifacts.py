"""Signed model artifacts: what a finished training run hands to each party.

A run produces **one artifact per party**: its part of the model (horizontal: the
whole global model; vertical: only that party's weights or split table), the
feature schema it expects, public metrics, and a manifest with the SHA-256 of every
file, signed by the federation's Ed25519 key (``federation-signing.key`` from
:func:`crypto.certs.init_ca`).  A party installs an artifact only after
:func:`read_artifact` has checked the signature *and* every byte it is about to copy.

Layout (a directory, or the same files flat in a ``.tar`` / ``.tar.gz``)::

    manifest.json   signed; see below
    schema.json     {"format": "fedcredit-schema/1", "feature_names": [...],
                     "id_column": "id", "preprocessing": {...}, ...}
    model.json      and/or model.npz, or any other flat file names the kind needs

``manifest.json`` (canonical JSON is what is signed; the file is pretty-printed)::

    {"format": "fedcredit-artifact/1", "run_id": "...", "party": "bank",
     "kind": "vertical-lr-label", "created": "2025-01-01T00:00:00Z",
     "metrics": {...public...},
     "files": {"model.json": {"sha256": "...", "size": 123}, "schema.json": {...}},
     "model_hash": "<sha256 over party, kind and the file hashes>",
     "peers": {"fintech": {"kind": "vertical-lr-passive", "model_hash": "..."}},
     "signature": {"alg": "ed25519", "key_id": "...", "value": "..."}}

Why ``model_hash`` and ``peers``: in vertical scoring every party contributes a
partial result from *its* installed part.  Each party's manifest names the exact
part every other party must be serving (:func:`check_peers`), so a label party on
run A combined with a passive party still on run B is an error, not a silent
wrong score.  The hash reveals nothing about a part's content.

Why the signer needs only the manifest: the manifest holds hashes, never weights
or thresholds, so the federation operator can sign a passive party's manifest
without ever seeing its split table (:func:`sign_artifact` with
``check_files=False`` on a directory holding just ``manifest.json``).

Everything here is deterministic: the same inputs (including ``created``) give
byte-identical files, so a rebuilt artifact has the same hashes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from crypto import signing
from crypto.files import fsync_dir, write_file
from fedcredit.codec import MAX_JSON_DEPTH, json_too_deep
from fedcredit.config import NAME_RE
from fedcredit.errors import ConfigError, DataError, ModelMismatch, SecurityError
from fedcredit.kinds import KINDS, LOCAL, VERTICAL_KINDS

FORMAT = "fedcredit-artifact/1"
SCHEMA_FORMAT = "fedcredit-schema/1"
MANIFEST = "manifest.json"
SCHEMA = "schema.json"


FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_FILE_MODE = 0o600  # a vertical part (e.g. a passive party's thresholds) is the institution's secret
_DIR_MODE = 0o700

#: Bounds checked *before* bytes are read or unpacked (a 1.5 MB .tar.gz of zeros once made an install use
#: 1.6 GB before it was refused).  Real artifacts are a handful of files of at most a few MB.
MAX_ARTIFACT_FILES = 32
MAX_ARTIFACT_BYTES = 64 << 20  # sum of the files' sizes
MAX_TAR_HEADER_BYTES = 64 << 10  # a pax / GNU long-name header's own data


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest; ``key_id`` is the signer's key id (None while unsigned)."""

    format: str
    run_id: str
    party: str
    kind: str
    created: str
    metrics: dict[str, Any]
    files: dict[str, FileEntry]
    model_hash: str
    peers: dict[str, dict[str, str]]
    key_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_vertical(self) -> bool:
        return self.kind in VERTICAL_KINDS

    def to_dict(self) -> dict[str, Any]:
        """The manifest as stored (signature included when signed)."""
        return json.loads(json.dumps(self.raw))


class Artifact(NamedTuple):
    """A verified artifact: its manifest and the exact bytes whose hashes were checked."""

    manifest: Manifest
    files: dict[str, bytes]

    @property
    def schema(self) -> dict[str, Any]:
        return _parse_json(self.files[SCHEMA], f"artifact {self.manifest.run_id}/{self.manifest.party}", SCHEMA)

    def json(self, name: str) -> Any:
        """Parse one of the artifact's JSON files."""
        if name not in self.files:
            raise DataError(
                f"artifact {self.manifest.run_id}/{self.manifest.party} ({self.manifest.kind}) has no file "
                f"{name!r}; it holds {sorted(self.files)}"
            )
        return _parse_json(self.files[name], f"artifact {self.manifest.run_id}/{self.manifest.party}", name)


# --------------------------------------------------------------------------- file encodings


def _parse_json(raw: bytes, where: str, name: str) -> Any:
    """Parse an artifact's JSON file; SecurityError naming it if invalid or nested beyond ``MAX_JSON_DEPTH``."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise SecurityError(f"{where}: {name} nests deeper than {MAX_JSON_DEPTH} levels (refused)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SecurityError(f"{where}: {name} is not valid JSON: {exc}") from None
    if json_too_deep(doc, MAX_JSON_DEPTH):
        raise SecurityError(f"{where}: {name} nests deeper than {MAX_JSON_DEPTH} levels (refused)")
    return doc


def json_bytes(obj: Any) -> bytes:
    """Deterministic, human-readable JSON (sorted keys, no NaN) for model/schema files."""
    try:
        return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"artifact content is not JSON serializable (NaN/inf or a non-JSON type?): {exc}") from None


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A ``.npz`` with fixed zip timestamps (``np.savez`` stamps the wall clock, which breaks determinism)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            a = np.asarray(arrays[name])
            if a.dtype.kind not in "biuf":
                raise ConfigError(f"npz array {name!r} has dtype {a.dtype}; only numeric arrays (no pickle) are allowed")
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def load_npz(data: bytes, *, where: str = "npz file") -> dict[str, np.ndarray]:
    """Read :func:`npz_bytes` output; anything else is a SecurityError naming ``where``.

    Bounded, unlike ``np.load``: members must be stored (not deflated: no zip bomb), at most
    :data:`MAX_ARTIFACT_FILES`, numeric dtypes only (no pickle), and each ``.npy`` header's shape
    must match the bytes that follow it *before* an array is made (``np.load`` allocates the
    header's shape first, so a 100-byte member could claim terabytes).
    """
    data = bytes(data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ARTIFACT_FILES:
                raise SecurityError(f"{where}: {len(infos)} members, more than {MAX_ARTIFACT_FILES} (refused)")
            out: dict[str, np.ndarray] = {}
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                    raise SecurityError(f"{where}: member {info.filename!r} is compressed or larger than the file")
                if not info.filename.endswith(".npy"):
                    raise SecurityError(f"{where}: member {info.filename!r} is not a .npy array")
                raw = zf.read(info)
                out[info.filename[:-4]] = _read_npy(raw, f"{where}: member {info.filename!r}")
            return out
    except SecurityError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, TypeError,
            NotImplementedError, RuntimeError, OverflowError, SyntaxError, UnicodeDecodeError) as exc:
        raise SecurityError(f"{where}: not a readable npz file: {exc}") from None


def _read_npy(raw: bytes, where: str) -> np.ndarray:
    """One ``.npy`` member: header checked against the bytes present, then a copy of exactly those bytes."""
    buf = io.BytesIO(raw)
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf, max_header_size=10_000)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf, max_header_size=10_000)
    else:
        raise SecurityError(f"{where}: .npy format version {version} not supported")
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise SecurityError(f"{where}: dtype {dtype} is not numeric (refused)")
    count = math.prod(shape)
    body = raw[buf.tell():]
    if count * dtype.itemsize != len(body):
        raise SecurityError(f"{where}: header shape {shape} needs {count * dtype.itemsize} bytes, {len(body)} present")
    arr = np.frombuffer(body, dtype=dtype, count=count).copy()
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- validation


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise ConfigError(
            f"run_id {run_id!r} is not usable in an artifact (letters, digits, '.', '_', '-'; max 128; "
            "it becomes part of a directory name)"
        )
    return run_id


def _check_party(party: str, what: str = "party") -> str:
    if not isinstance(party, str) or not NAME_RE.match(party):
        raise ConfigError(f"{what} name {party!r} is not a valid party name (lower-case letters, digits, '-', '_')")
    return party


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown artifact kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def _check_file_name(name: str) -> str:
    if not isinstance(name, str) or not FILE_NAME_RE.match(name) or name in (MANIFEST, SCHEMA):
        raise ConfigError(
            f"artifact file name {name!r} is not allowed (flat names of letters, digits, '.', '_', '-'; "
            f"{MANIFEST!r} and {SCHEMA!r} are reserved)"
        )
    return name


def _normalize_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(schema, Mapping):
        raise ConfigError(f"schema must be a mapping, got {type(schema).__name__}")
    out = dict(schema)
    out["format"] = SCHEMA_FORMAT
    names = out.get("feature_names")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError("schema['feature_names'] must be a list of non-empty column names (in model order)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"schema['feature_names'] lists {dup} more than once")
    if "id_column" not in out:
        raise ConfigError("schema needs 'id_column' (the customer id column name, or null for horizontal models)")
    if out["id_column"] is not None and not isinstance(out["id_column"], str):
        raise ConfigError(f"schema['id_column'] must be a string or null, got {out['id_column']!r}")
    pre = out.get("preprocessing", {})
    if not isinstance(pre, Mapping):
        raise ConfigError("schema['preprocessing'] must be a mapping")
    out["preprocessing"] = dict(pre)
    return out


def _normalize_peers(peers: Mapping[str, Any], party: str, kind: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, entry in (peers or {}).items():
        _check_party(name, "peer")
        if name == party:
            raise ConfigError(f"party {party!r} lists itself among its peers")
        if isinstance(entry, str):
            entry = {"model_hash": entry}
        if not isinstance(entry, Mapping) or not _SHA_RE.match(str(entry.get("model_hash", ""))):
            raise ConfigError(f"peer {name!r}: expected a 64-hex model_hash (from model_part_hash), got {entry!r}")
        item = {"model_hash": str(entry["model_hash"])}
        if entry.get("kind") is not None:
            pk = _check_kind(str(entry["kind"]))
            if pk not in KINDS[kind].peers:
                raise ConfigError(f"peer {name!r} has kind {pk!r}, which cannot pair with a {kind!r} part")
            item["kind"] = pk
        out[name] = item
    if kind in VERTICAL_KINDS and not out:
        raise ConfigError(
            f"a {kind!r} artifact needs its peers (the other parties' names and model hashes): a vertical "
            "part cannot score alone, and scoring must detect a version mismatch between parties"
        )
    return dict(sorted(out.items()))


def _model_hash(party: str, kind: str, file_hashes: Mapping[str, str]) -> str:
    return _sha256(
        signing.canonical_json({"format": FORMAT, "party": party, "kind": kind, "files": dict(file_hashes)})
    )


def model_part_hash(*, party: str, kind: str, files: Mapping[str, bytes], schema: Mapping[str, Any]) -> str:
    """The ``model_hash`` :func:`build_artifact` will record for these inputs (to fill other parties' ``peers``)."""
    all_files = {**{_check_file_name(n): bytes(b) for n, b in files.items()}, SCHEMA: json_bytes(_normalize_schema(schema))}
    return _model_hash(_check_party(party), _check_kind(kind), {n: _sha256(b) for n, b in sorted(all_files.items())})


def _non_finite(obj: Any, where: str) -> str | None:
    """Dotted path of the first NaN/inf float inside ``obj`` (metrics often carry one)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return where
    items = obj.items() if isinstance(obj, Mapping) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _non_finite(v, f"{where}.{k}")
        if found:
            return found
    return None


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _parse_manifest(doc: Any, where: str) -> Manifest:
    """Structural validation of a manifest dict (signature already checked or absent)."""
    if not isinstance(doc, dict):
        raise SecurityError(f"{where}: manifest.json is not a JSON object")
    if doc.get("format") != FORMAT:
        raise SecurityError(f"{where}: manifest format {doc.get('format')!r} is not supported (expected {FORMAT!r})")
    try:
        run_id = _check_run_id(doc["run_id"])
        party = _check_party(doc["party"])
        kind = _check_kind(doc["kind"])
        files_doc = doc["files"]
        if not isinstance(files_doc, dict) or SCHEMA not in files_doc:
            raise ConfigError(f"'files' must be an object listing at least {SCHEMA!r}")
        files: dict[str, FileEntry] = {}
        for name, e in files_doc.items():
            if name != SCHEMA:
                _check_file_name(name)
            if not isinstance(e, dict) or not _SHA_RE.match(str(e.get("sha256", ""))) or not isinstance(e.get("size"), int):
                raise ConfigError(f"file entry {name!r} needs a 64-hex 'sha256' and an integer 'size'")
            files[name] = FileEntry(sha256=e["sha256"], size=e["size"])
        if len(files) < 2:
            raise ConfigError("the artifact lists no model file besides schema.json")
        peers = _normalize_peers(doc.get("peers", {}), party, kind)
        metrics = doc.get("metrics", {})
        if not isinstance(metrics, dict):
            raise ConfigError("'metrics' must be an object")
        created = doc.get("created")
        if not isinstance(created, str):
            raise ConfigError("'created' must be an ISO-8601 string")
        model_hash = doc.get("model_hash")
    except KeyError as exc:
        raise SecurityError(f"{where}: manifest.json lacks field {exc.args[0]!r}") from None
    except ConfigError as exc:
        raise SecurityError(f"{where}: malformed manifest.json: {exc}") from None
    expected = _model_hash(party, kind, {n: e.sha256 for n, e in sorted(files.items())})
    if model_hash != expected:
        raise SecurityError(f"{where}: manifest model_hash {model_hash!r} does not match its file list ({expected})")
    sig = doc.get(signing.SIGNATURE_FIELD)
    return Manifest(
        format=FORMAT,
        run_id=run_id,
        party=party,
        kind=kind,
        created=created,
        metrics=metrics,
        files=files,
        model_hash=expected,
        peers=peers,
        key_id=sig.get("key_id") if isinstance(sig, dict) else None,
        raw=doc,
    )


# --------------------------------------------------------------------------- build / sign


def _write_dir_atomically(out_dir: Path, contents: Mapping[str, bytes]) -> Path:
    """Create ``out_dir`` with ``contents``; a crash leaves no half-built directory; never overwrites."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"refusing to overwrite {out_dir}: it already exists and is not an empty directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(tmp, _DIR_MODE)
        for name, data in contents.items():
            write_file(tmp / name, data, _FILE_MODE, exclusive=True, what="artifact")
        fsync_dir(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a directory portably otherwise
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def build_artifact(
    out_dir: str | Path,
    *,
    run_id: str,
    party: str,
    kind: str,
    files: Mapping[str, bytes],
    schema: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    peers: Mapping[str, Any] | None = None,
    created: str | None = None,
) -> Path:
    """Write an **unsigned** artifact directory; sign it with :func:`sign_artifact`.

    ``files`` maps flat file names (e.g. ``model.json``, ``model.npz``) to bytes;
    ``schema`` becomes ``schema.json``; ``peers`` maps each other party of a
    vertical model to its ``model_hash`` (a str, or ``{"model_hash", "kind"}``).
    ``created`` defaults to now (UTC); pass it for byte-identical rebuilds.
    """
    _check_run_id(run_id)
    _check_party(party)
    _check_kind(kind)
    if not files:
        raise ConfigError(f"artifact for party {party!r} ({kind}) has no model file")
    contents: dict[str, bytes] = {}
    for name, data in files.items():
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ConfigError(f"artifact file {name!r} must be bytes, got {type(data).__name__}")
        contents[_check_file_name(name)] = bytes(data)
    contents[SCHEMA] = json_bytes(_normalize_schema(schema))
    contents = dict(sorted(contents.items()))
    entries: dict[str, dict[str, Any]] = {n: {"sha256": _sha256(b), "size": len(b)} for n, b in contents.items()}
    manifest = {
        "format": FORMAT,
        "run_id": run_id,
        "party": party,
        "kind": kind,
        "created": created or _utc_now(),
        "metrics": dict(metrics or {}),
        "files": entries,
        "model_hash": _model_hash(party, kind, {n: e["sha256"] for n, e in entries.items()}),
        "peers": _normalize_peers(peers or {}, party, kind),
    }
    bad = _non_finite(manifest["metrics"], "metrics")
    if bad:
        raise ConfigError(f"artifact for party {party!r}: {bad} is NaN or infinite (JSON has no portable form for it)")
    signing.canonical_json(manifest)  # any other non-JSON value fails here
    return _write_dir_atomically(Path(out_dir), {**contents, MANIFEST: json_bytes(manifest)})


def build_run_artifacts(
    out_root: str | Path,
    *,
    run_id: str,
    parts: Mapping[str, Mapping[str, Any]],
    created: str | None = None,
) -> dict[str, Path]:
    """Build every party's artifact of one run with ``peers`` cross-filled.

    ``parts`` maps party -> ``{"kind", "files", "schema", "metrics"?}``.  Each
    artifact goes to ``out_root/<party>``.  In a real deployment each party builds
    its own (its files never leave it) and only the model hashes are exchanged;
    this helper is that exchange done in one place (simulation, tests).
    """
    hashes = {
        p: model_part_hash(party=p, kind=spec["kind"], files=spec["files"], schema=spec["schema"])
        for p, spec in parts.items()
    }
    created = created or _utc_now()
    out: dict[str, Path] = {}
    for p, spec in parts.items():
        vertical = spec["kind"] in VERTICAL_KINDS
        peers = {q: {"model_hash": hashes[q], "kind": parts[q]["kind"]} for q in parts if q != p} if vertical else {}
        out[p] = build_artifact(
            Path(out_root) / p,
            run_id=run_id,
            party=p,
            kind=spec["kind"],
            files=spec["files"],
            schema=spec["schema"],
            metrics=spec.get("metrics", {}),
            peers=peers,
            created=created,
        )
    return out


def sign_artifact(path: str | Path, signing_key: Any, *, check_files: bool = True, resign: bool = False) -> Manifest:
    """Sign ``path/manifest.json`` in place with the federation key (an Ed25519 private key or its PEM path).

    With ``check_files`` (default) the files on disk must match the manifest first, so
    the federation never signs a directory that was altered after it was built.
    ``check_files=False`` signs a manifest shipped alone (the signer never sees model bytes).
    """
    path = Path(path)
    key = signing.load_private(Path(signing_key)) if isinstance(signing_key, (str, Path)) else signing_key
    mpath = path / MANIFEST
    doc = _load_manifest_json(mpath.read_bytes() if mpath.is_file() else None, f"artifact {path}")
    if signing.SIGNATURE_FIELD in doc:
        if not resign:
            raise ConfigError(f"artifact {path} is already signed (key {doc['signature'].get('key_id')}); pass resign=True")
        doc = {k: v for k, v in doc.items() if k != signing.SIGNATURE_FIELD}
    manifest = _parse_manifest(doc, f"artifact {path}")
    if check_files:
        _check_contents(manifest, _read_dir(path), f"artifact {path}")
    signed = signing.sign_manifest(doc, key)
    write_file(mpath, json_bytes(signed), _FILE_MODE)
    return _parse_manifest(signed, f"artifact {path}")


# --------------------------------------------------------------------------- tar


def pack_artifact(path: str | Path, tar_path: str | Path) -> Path:
    """Pack an artifact directory into one deterministic ``.tar`` (or ``.tar.gz``) for shipping."""
    src, tar_path = Path(path), Path(tar_path)
    if tar_path.exists():
        raise ConfigError(f"refusing to overwrite {tar_path}")
    files = _read_dir(src)
    if MANIFEST not in files:
        raise ConfigError(f"{src} is not an artifact directory (no {MANIFEST})")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(files[name]), 0, 0o600, 0, 0
            tf.addfile(info, io.BytesIO(files[name]))
    data = buf.getvalue()
    if tar_path.name.endswith((".tar.gz", ".tgz")):
        import gzip

        data = gzip.compress(data, mtime=0)
    return write_file(tar_path, data, _FILE_MODE, exclusive=True, what="artifact archive")


class _BoundedReader:
    """A read-only stream that refuses (SecurityError) once more than ``limit`` bytes were asked of it."""

    def __init__(self, fh: Any, limit: int, where: str) -> None:
        self._fh, self._left, self._where = fh, limit, where

    def read(self, size: int | None = -1) -> bytes:
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        data = self._fh.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise SecurityError(f"{self._where}: unpacks to more than {MAX_ARTIFACT_BYTES:,} bytes (refused)")
        return bytes(data)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses an oversized pax / GNU long-name header before tarfile reads its data into memory."""

    _EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                 tarfile.GNUTYPE_LONGLINK)

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in self._EXTENDED and self.size > MAX_TAR_HEADER_BYTES:
            raise SecurityError(f"tar extended header of {self.size:,} bytes (limit {MAX_TAR_HEADER_BYTES:,})")
        return super()._proc_member(tar)  # type: ignore[misc]

_GZIP_MAGIC = b"\x1f\x8b"


def _read_tar(path: Path) -> dict[str, bytes]:
    """A ``.tar`` / ``.tar.gz`` artifact's flat files, bounded: member count, each size and the unpacked
    stream are checked before their bytes are read, so a small archive cannot inflate into memory."""
    import gzip

    where = f"artifact {path}"
    out: dict[str, bytes] = {}
    total = 0
    try:
        with open(path, "rb") as raw:
            fh: Any = gzip.GzipFile(fileobj=raw, mode="rb") if raw.read(2) == _GZIP_MAGIC else raw
            raw.seek(0)
            stream = _BoundedReader(fh, MAX_ARTIFACT_BYTES + (MAX_ARTIFACT_FILES + 4) * 3 * tarfile.BLOCKSIZE
                                    + tarfile.RECORDSIZE, where)
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tf:  # type: ignore[call-overload]
                for m in tf:
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    if not m.isreg():
                        raise SecurityError(f"{where}: tar member {m.name!r} is not a regular file")
                    if "/" in name or not FILE_NAME_RE.match(name):
                        raise SecurityError(f"{where}: tar member {m.name!r} is not a flat artifact file name")
                    if name in out:
                        raise SecurityError(f"{where}: tar member {name!r} appears twice")
                    if len(out) >= MAX_ARTIFACT_FILES:
                        raise SecurityError(f"{where}: more than {MAX_ARTIFACT_FILES} files (refused)")
                    total += m.size
                    if total > MAX_ARTIFACT_BYTES:
                        raise SecurityError(
                            f"{where}: tar member {name!r} ({m.size:,} bytes) takes the artifact past "
                            f"{MAX_ARTIFACT_BYTES:,} bytes (refused before unpacking)"
                        )
                    member = tf.extractfile(m)
                    out[name] = member.read() if member else b""
    except SecurityError as exc:
        raise SecurityError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise SecurityError(f"{where}: not a readable tar archive: {exc}") from None
    return out


def _read_dir(path: Path) -> dict[str, bytes]:
    """Every entry of an artifact directory as bytes; anything but a regular file is refused."""
    if not path.is_dir():
        raise ConfigError(f"artifact {path} does not exist or is not a directory / tar file")
    out: dict[str, bytes] = {}
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    if len(entries) > MAX_ARTIFACT_FILES:
        raise SecurityError(f"artifact {path}: {len(entries)} entries, more than {MAX_ARTIFACT_FILES} (refused)")
    total = 0
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            raise SecurityError(f"artifact {path}: leftover temporary file {entry.name!r} (interrupted write?)")
        if not entry.is_file(follow_symlinks=False):
            raise SecurityError(
                f"artifact {path}: {entry.name!r} is not a regular file (directories and symlinks are refused)"
            )
        total += entry.stat(follow_symlinks=False).st_size
        if total > MAX_ARTIFACT_BYTES:
            raise SecurityError(f"artifact {path}: {entry.name!r} takes the artifact past {MAX_ARTIFACT_BYTES:,} bytes")
        with open(entry.path, "rb") as fh:
            out[entry.name] = fh.read(MAX_ARTIFACT_BYTES + 1)  # bounded even if the file grew meanwhile
    return out


def _is_tar(path: Path) -> bool:
    """By magic bytes only (``tarfile.is_tarfile`` would already parse, and inflate, the first member)."""
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(tarfile.BLOCKSIZE)
    return head[:2] == _GZIP_MAGIC or head[257:262] == b"ustar"


# --------------------------------------------------------------------------- verify


def _load_manifest_json(raw: bytes | None, where: str) -> dict[str, Any]:
    if raw is None:
        raise SecurityError(f"{where}: no {MANIFEST} (not a fedcredit artifact)")
    doc = _parse_json(raw, where, MANIFEST)
    if not isinstance(doc, dict):
        raise SecurityError(f"{where}: {MANIFEST} is not a JSON object")
    return doc


def _check_contents(manifest: Manifest, contents: Mapping[str, bytes], where: str) -> None:
    """Exactly the listed files, each with the listed size and SHA-256."""
    present = set(contents) - {MANIFEST}
    listed = set(manifest.files)
    extra, missing = sorted(present - listed), sorted(listed - present)
    if missing:
        raise SecurityError(f"{where}: file(s) {missing} listed in the signed manifest are missing")
    if extra:
        raise SecurityError(f"{where}: unexpected file(s) {extra} not listed in the signed manifest")
    for name in sorted(listed):
        entry, data = manifest.files[name], contents[name]
        if len(data) != entry.size:
            raise SecurityError(
                f"{where}: {name} is {len(data)} bytes, the signed manifest says {entry.size} (file altered)"
            )
        got = _sha256(data)
        if got != entry.sha256:
            raise SecurityError(
                f"{where}: {name} has sha256 {got[:16]}…, the signed manifest says {entry.sha256[:16]}… "
                "(file altered after signing)"
            )
    schema = _parse_json(contents[SCHEMA], where, SCHEMA)
    try:
        _normalize_schema(schema)
    except (ValueError, ConfigError) as exc:
        raise SecurityError(f"{where}: {SCHEMA} is unusable: {exc}") from None


def _public_key(key: Any) -> Any:
    return signing.load_public(Path(key)) if isinstance(key, (str, Path)) else key


def read_artifact(path: str | Path, federation_public_key: Any, *, party: str | None = None) -> Artifact:
    """Verify an artifact (dir or tar) and return its manifest with the verified bytes.

    Checks, in order: ``manifest.json`` is signed by ``federation_public_key`` (a key
    or a PEM path); the manifest is well formed; no file is missing or extra; every
    file has its signed size and SHA-256; ``schema.json`` is usable; and, when
    ``party`` is given, that the artifact is for that party.  Any failure is a
    :class:`SecurityError` naming the artifact and the file or field.
    """
    path = Path(path)
    where = f"artifact {path}"
    contents = _read_tar(path) if _is_tar(path) else _read_dir(path)
    doc = _load_manifest_json(contents.get(MANIFEST), where)
    public = _public_key(federation_public_key)
    try:
        signing.verify_manifest(doc, public)
    except SecurityError as exc:
        raise SecurityError(f"{where}: {exc}") from None
    manifest = _parse_manifest(doc, where)
    _check_contents(manifest, contents, where)
    if party is not None and manifest.party != party:
        raise SecurityError(
            f"{where}: this artifact is party {manifest.party!r}'s part of run {manifest.run_id}, not {party!r}'s"
        )
    return Artifact(manifest, {n: b for n, b in contents.items() if n != MANIFEST})


def check_artifact_integrity(path: str | Path) -> Artifact:
    """Hash-only re-check of an artifact that was verified when installed (integrity at rest).

    Not a substitute for :func:`read_artifact`: without the signature anyone can
    rewrite manifest and files together.  Used by a model store that was not given
    the federation key.
    """
    path = Path(path)
    where = f"artifact {path}"
    contents = _read_tar(path) if _is_tar(path) else _read_dir(path)
    manifest = _parse_manifest(_load_manifest_json(contents.get(MANIFEST), where), where)
    _check_contents(manifest, contents, where)
    return Artifact(manifest, {n: b for n, b in contents.items() if n != MANIFEST})


def verify_artifact(path: str | Path, federation_public_key: Any, *, party: str | None = None) -> Manifest:
    """Verify signature and every file of an artifact; return its manifest (see :func:`read_artifact`)."""
    return read_artifact(path, federation_public_key, party=party).manifest


def check_peers(manifest: Manifest, observed: Mapping[str, str]) -> None:
    """Refuse to combine partial results unless every peer serves the exact part this manifest names.

    ``observed`` maps peer party -> the ``model_hash`` that peer reports for its
    active part (e.g. in its scoring reply).  Raises SecurityError naming the party.
    """
    for peer, entry in manifest.peers.items():
        got = observed.get(peer)
        if got is None:
            raise ModelMismatch(
                f"model version mismatch: run {manifest.run_id} at {manifest.party!r} needs a partial result from "
                f"{peer!r}, which did not report its model part"
            )
        if got != entry["model_hash"]:
            raise ModelMismatch(
                f"model version mismatch: {manifest.party!r} runs {manifest.run_id} which expects {peer!r}'s part "
                f"{entry['model_hash'][:12]}, but {peer!r} serves {got[:12]} (activate the same run at every party)"
            )
    unknown = sorted(set(observed) - set(manifest.peers))
    if unknown:
        raise ModelMismatch(
            f"model version mismatch: {unknown} answered for run {manifest.run_id} at {manifest.party!r}, "
            "but are not parties of that model"
        )


# --------------------------------------------------------------------------- horizontal helpers


def horizontal_parts(saved: Any, *, id_column: str | None = "id") -> tuple[str, dict[str, bytes], dict[str, Any]]:
    """(kind, files, schema) for a horizontal global model (:class:`fedcredit.models.SavedModel`).

    ``model.json`` is exactly :func:`fedcredit.models.save_model`'s document, so
    :func:`load_horizontal` (and ``load_model``) read it back unchanged.
    """
    from fedcredit.models import save_model

    family = saved.model.family
    kind = {"lr": "horizontal-lr", "mlp": "horizontal-mlp"}.get(family)
    if kind is None:
        raise ConfigError(f"no artifact kind for horizontal model family {family!r}")
    with tempfile.TemporaryDirectory() as d:
        p = save_model(Path(d) / "model.json", saved.model, mean=saved.mean, std=saved.std,
                       feature_names=saved.feature_names, meta=saved.meta)
        model_json = p.read_bytes()
    schema = {
        "feature_names": list(saved.feature_names),
        "id_column": id_column,
        "preprocessing": {
            "standardize": {"mean": [float(v) for v in saved.mean], "std": [float(v) for v in saved.std]},
        },
    }
    return kind, {"model.json": model_json}, schema


def load_horizontal(artifact: Artifact) -> Any:
    """The :class:`fedcredit.models.SavedModel` inside a verified horizontal artifact."""
    m = artifact.manifest
    if KINDS[m.kind].role != LOCAL:
        raise ConfigError(f"artifact {m.run_id}/{m.party} is a {m.kind!r} part, not a horizontal model")
    saved = KINDS[m.kind].load(artifact.files.get("model.json", b""), f"artifact {m.run_id}/{m.party}")
    if list(saved.feature_names) != list(artifact.schema["feature_names"]):
        raise DataError(f"artifact {m.run_id}/{m.party}: model.json and schema.json disagree on the feature order")
    return saved
