"""The party's model store: verified versions side by side, one active, rollback in one step.

Layout under ``root`` (one store per party daemon, e.g. ``<state_dir>/models``)::

    versions/<run_id>-<party>-<n>/artifact/   the verified artifact (exactly the checked bytes)
    versions/<run_id>-<party>-<n>/install.json  installed time, source, model hash, signer
    active.json     {"version": ..., "previous": [older actives, newest last], "updated": ...}
    history.jsonl   append-only log of install / activate / rollback events
    .lock           flock target serializing every writer (processes and threads)
    .staging/       in-progress installs (never visible under versions/)

Why this shape:

* **Nothing is overwritten.** A version directory appears by one ``rename`` of a
  fully written, fsynced staging directory, under an exclusive lock, and is never
  modified afterwards.  Installing the same artifact again returns the existing
  version instead of a duplicate.
* **Verification before any write.** :meth:`ModelStore.install` reads the artifact
  with :func:`fedcredit.artifacts.read_artifact` and copies exactly the bytes whose
  signature and hashes it checked, so a tampered or foreign artifact leaves the
  store byte-for-byte untouched.
* **Atomic switch.** ``active.json`` (the active version *and* the rollback stack) is
  rewritten with temp file + ``os.replace``: a reader sees the old or the new state,
  never a mix, and a crash cannot lose the rollback target.
* **Integrity at rest.** :meth:`ModelStore.load` re-checks every file hash (and the
  signature, when the store knows the federation key) on each load.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.files import exclusive_lock, write_file
from fedcredit.artifacts import MANIFEST, Artifact, check_artifact_integrity, json_bytes, read_artifact
from fedcredit.errors import ConfigError, SecurityError
from party.audit import JsonlLog

VERSIONS = "versions"
ACTIVE = "active.json"
HISTORY = "history.jsonl"
LOCK = ".lock"
STAGING = ".staging"
ARTIFACT_DIR = "artifact"
INSTALL_INFO = "install.json"


@dataclass(frozen=True)
class ModelVersion:
    """One installed version as ``models list`` shows it."""

    version: str
    run_id: str
    party: str
    kind: str
    created: str
    installed: str
    active: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    model_hash: str = ""
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path) if self.path else None
        return d


def _now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_file(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), 0o600)


class ModelStore:
    """Installed model versions of one party.

    ``party``: when set, artifacts for another party are refused at install.
    ``federation_public_key``: an Ed25519 public key or its PEM path; used by
    :meth:`install` when none is passed there, and by :meth:`load` to re-check the
    stored signature.
    """

    def __init__(self, root: str | Path, *, party: str | None = None, federation_public_key: Any = None) -> None:
        self.root = Path(root)
        self.party = party
        self.federation_public_key = federation_public_key

    # ------------------------------------------------------------------ internals

    @property
    def _versions(self) -> Path:
        return self.root / VERSIONS

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock over every writer (flock: works across processes and across threads' own fds)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(self.root / LOCK):
            yield

    def _state(self) -> dict[str, Any]:
        p = self.root / ACTIVE
        if not p.exists():
            return {"version": None, "previous": []}
        try:
            st = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"model store {self.root}: {ACTIVE} is unreadable ({exc}); fix or remove it") from None
        if not isinstance(st, dict) or not isinstance(st.get("previous", []), list):
            raise ConfigError(f"model store {self.root}: {ACTIVE} is malformed")
        st.setdefault("previous", [])
        return st

    def _log(self, event: dict[str, Any]) -> None:
        with JsonlLog(self.root / HISTORY, what=f"model store {self.root} history") as log:  # 0600, append-only
            log.append([{"time": _now_iso(), **event}])

    def _version_dir(self, version: str) -> Path:
        d = self._versions / version
        if not isinstance(version, str) or "/" in version or version.startswith(".") or not (d / INSTALL_INFO).is_file():
            known = ", ".join(v.version for v in self.list()) or "none installed"
            raise ConfigError(f"model store {self.root}: no model version {version!r} (installed: {known})")
        return d

    def _info(self, d: Path, active: str | None) -> ModelVersion:
        info = json.loads((d / INSTALL_INFO).read_text())
        man = json.loads((d / ARTIFACT_DIR / MANIFEST).read_text())
        return ModelVersion(
            version=d.name,
            run_id=man["run_id"],
            party=man["party"],
            kind=man["kind"],
            created=man.get("created", ""),
            installed=info["installed"],
            active=d.name == active,
            metrics=dict(man.get("metrics", {})),
            model_hash=man["model_hash"],
            path=d / ARTIFACT_DIR,
        )

    # ------------------------------------------------------------------ public API

    def install(self, artifact_path: str | Path, federation_public_key: Any = None, *, activate: bool = False) -> str:
        """Verify an artifact (dir or tar) and install it as a new version; return the version name.

        The store is not touched at all unless verification passes.  Installing an
        artifact that is already installed (same model hash and signed manifest)
        returns the existing version.  ``activate=True`` also makes it active.
        """
        key = federation_public_key if federation_public_key is not None else self.federation_public_key
        if key is None:
            raise ConfigError(
                "installing a model needs the federation signing public key (federation-signing.pub)"
            )
        art = read_artifact(artifact_path, key, party=self.party)  # raises before anything is written
        m = art.manifest
        manifest_bytes = json_bytes(m.raw)  # same serialization sign_artifact writes
        with self._locked():
            for existing in self.list():
                if existing.model_hash == m.model_hash and existing.run_id == m.run_id:
                    stored = json.loads((existing.path / MANIFEST).read_text())  # type: ignore[operator]
                    if stored == m.raw:
                        if activate:
                            self._activate_locked(existing.version, "activate")
                        return existing.version
            self._versions.mkdir(parents=True, exist_ok=True, mode=0o700)
            staging_root = self.root / STAGING
            staging_root.mkdir(exist_ok=True, mode=0o700)
            stage = Path(tempfile.mkdtemp(prefix="install-", dir=staging_root))
            try:
                adir = stage / ARTIFACT_DIR
                adir.mkdir(mode=0o700)
                for name, data in {**art.files, MANIFEST: manifest_bytes}.items():
                    write_file(adir / name, data, 0o600, exclusive=True, what="artifact")
                n = 1 + sum(1 for p in self._versions.iterdir() if p.name.startswith(f"{m.run_id}-{m.party}-"))
                version = f"{m.run_id}-{m.party}-{n}"
                while (self._versions / version).exists():
                    n += 1
                    version = f"{m.run_id}-{m.party}-{n}"
                _write_json_atomic(stage / INSTALL_INFO, {
                    "version": version,
                    "installed": _now_iso(),
                    "source": str(Path(artifact_path).resolve()),
                    "model_hash": m.model_hash,
                    "signed_by": m.key_id,
                })
                os.rename(stage, self._versions / version)
                dfd = os.open(self._versions, os.O_RDONLY)  # make the new entry durable before reporting it
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            self._log({"event": "install", "version": version, "run_id": m.run_id, "kind": m.kind,
                       "model_hash": m.model_hash, "signed_by": m.key_id})
            if activate:
                self._activate_locked(version, "activate")
        return version

    def list(self) -> list[ModelVersion]:
        """Every installed version, oldest install first."""
        if not self._versions.is_dir():
            return []
        active = self._state().get("version")
        out = [self._info(d, active) for d in self._versions.iterdir() if (d / INSTALL_INFO).is_file()]
        return sorted(out, key=lambda v: (v.installed, v.version))

    def get(self, version: str) -> ModelVersion:
        """One installed version (ConfigError listing the installed ones if unknown)."""
        return self._info(self._version_dir(version), self._state().get("version"))

    def _activate_locked(self, version: str, event: str) -> None:
        self._version_dir(version)
        st = self._state()
        current = st.get("version")
        if current == version:
            return
        previous = list(st["previous"]) + ([current] if current else [])
        _write_json_atomic(self.root / ACTIVE, {"version": version, "previous": previous, "updated": _now_iso()})
        self._log({"event": event, "version": version, "previous": current})

    def activate(self, version: str) -> ModelVersion:
        """Make ``version`` the active one; the version it replaces becomes the rollback target."""
        with self._locked():
            self._activate_locked(version, "activate")
        return self.get(version)

    def rollback(self) -> ModelVersion:
        """Re-activate the version that was active before the current one (repeatable down the history)."""
        with self._locked():
            st = self._state()
            current, previous = st.get("version"), list(st["previous"])
            if not previous:
                why = "no version is active" if current is None else f"{current!r} is the first version ever activated"
                raise ConfigError(f"model store {self.root}: nothing to roll back to ({why})")
            target = previous.pop()
            self._version_dir(target)
            _write_json_atomic(self.root / ACTIVE, {"version": target, "previous": previous, "updated": _now_iso()})
            self._log({"event": "rollback", "version": target, "previous": current})
        return self.get(target)

    def active_version(self) -> str | None:
        """Name of the active version, or None."""
        return self._state().get("version")

    def active(self) -> ModelVersion:
        """The active version; ConfigError if none has been activated."""
        v = self.active_version()
        if v is None:
            raise ConfigError(
                f"model store {self.root}: no active model (install one and run `fedcredit party models activate <version>`)"
            )
        return self.get(v)

    def load(self, version: str | None = None) -> Artifact:
        """``(manifest, files)`` of a version (default: the active one), re-verified on every load.

        File hashes are always re-checked against the stored manifest; the
        signature too when the store was given the federation key.
        """
        version = version if version is not None else self.active().version
        adir = self._version_dir(version) / ARTIFACT_DIR
        if self.federation_public_key is not None:
            try:
                return read_artifact(adir, self.federation_public_key, party=self.party)
            except SecurityError as exc:
                raise SecurityError(f"model store version {version!r} failed its integrity check: {exc}") from None
        try:
            return check_artifact_integrity(adir)
        except SecurityError as exc:
            raise SecurityError(f"model store version {version!r} failed its integrity check: {exc}") from None

    def history(self) -> builtins.list[dict[str, Any]]:
        """Install / activate / rollback events, oldest first."""
        p = self.root / HISTORY
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


FEDERATION_KEY_FILE = "federation-signing.pub"


def open_store(config: Any, federation_public_key: str | Path | None = None) -> ModelStore:
    """The model store of a party daemon: ``<state_dir>/models``, bound to the party's name.

    ``config`` is a :class:`fedcredit.config.PartyConfig`.  The federation key
    defaults to ``<identity_dir>/federation-signing.pub`` when that file exists
    (copy it there from the CA directory); otherwise pass it explicitly.
    """
    key: Any = federation_public_key
    if key is None:
        candidate = Path(config.party.identity_dir) / FEDERATION_KEY_FILE
        key = candidate if candidate.exists() else None
    return ModelStore(Path(config.party.state_dir) / "models", party=config.party.name, federation_public_key=key)
