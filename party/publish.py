"""Publishing a finished run, party half: build the artifact draft locally, install the signed manifest.

``artifact.build``: the party builds its artifact from the model part training saved
under ``<state_dir>/models/<run_id>/`` and replies with the unsigned manifest only
(hashes, public metrics) — model bytes never leave the party.  ``artifact.install``:
the signed manifest is put next to the draft files and installed through
:meth:`party.models.ModelStore.install`, which verifies the signature and every hash
before writing anything.  A manifest altered on the way (a metric, a hash, the peers)
fails the signature; a manifest swapped for another party's fails the party check.
The version is activated when the store has no active version yet.
The coordinator half is ``coordinator/publish.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcredit.artifacts import MANIFEST, build_artifact, horizontal_parts, json_bytes, model_part_hash
from fedcredit.config import PartyConfig
from fedcredit.control_plane import ARTIFACT_BUILD, ARTIFACT_INSTALL
from fedcredit.errors import ConfigError, DataError, ProtocolError, SecurityError
from fedcredit.kinds import VERTICAL_KINDS, kind_of_part
from fedcredit.models import load_model
from party.models import ModelStore, open_store

__all__ = ["find_model_part", "party_build", "party_install", "party_handler", "DRAFT_DIR"]

DRAFT_DIR = "artifact-draft"


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", run_id)


def find_model_part(model_dir: Path, party: str) -> tuple[str, dict[str, bytes], dict[str, Any]]:
    """(kind, files, schema) of the model part training saved in ``model_dir``.

    Recognised by content, not by file name, so every protocol's saving code works:
    ``global_model.json`` (horizontal), a ``vertical_lr/label|passive`` JSON
    (``LabelModel/PassiveModel.to_json``) or a SecureBoost label/passive part.
    """
    if not model_dir.is_dir():
        raise DataError(f"party '{party}': no saved model for this run ({model_dir} does not exist)")
    g = model_dir / "global_model.json"
    if g.is_file():
        return horizontal_parts(load_model(g))
    found: list[tuple[str, Path, dict[str, Any]]] = []
    for f in sorted(model_dir.glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (ValueError, OSError):
            continue
        if not isinstance(d, dict):
            continue
        k = kind_of_part(d)
        if k is not None and d.get("party", party) == party:
            found.append((k.name, f, d))
    if not found:
        raise DataError(f"party '{party}': {model_dir} holds no model part (global_model.json, a vertical LR part "
                        "or a SecureBoost part)")
    if len(found) > 1:
        raise DataError(f"party '{party}': {model_dir} holds several model parts {[str(x[1].name) for x in found]}; "
                        "expected one")
    kind, path, d = found[0]
    pre: dict[str, Any] = {}
    if "standardizer" in d:
        pre["standardize"] = d["standardizer"]
    schema = {"feature_names": list(d["feature_names"]), "id_column": "id", "preprocessing": pre}
    return kind, {"model.json": path.read_bytes()}, schema


def party_build(model_root: Path, party: str, payload: bytes, *, id_column: str | None = "id") -> bytes:
    """``artifact.build`` at a party: write a draft artifact beside the run's model, reply its manifest."""
    req = json.loads(payload.decode())
    run_id = str(req["run_id"])
    run_dir = Path(model_root) / _safe(run_id)
    kind, files, schema = find_model_part(run_dir, party)
    if schema.get("id_column") is not None:
        schema["id_column"] = id_column
    draft = run_dir / DRAFT_DIR
    if draft.exists():
        shutil.rmtree(draft)
    # a vertical kind needs peers to build; a placeholder is replaced by the coordinator's before signing
    placeholder = {"placeholder-peer": "0" * 64} if kind in VERTICAL_KINDS else {}
    build_artifact(draft, run_id=run_id, party=party, kind=kind, files=files, schema=schema,
                   metrics=req.get("metrics") or {}, peers=placeholder, created=req.get("created"))
    doc = json.loads((draft / "manifest.json").read_text())
    doc.pop("peers", None)
    if doc["model_hash"] != model_part_hash(party=party, kind=kind, files=files, schema=schema):
        raise ProtocolError(f"party '{party}': draft artifact of run {run_id} does not match its model part")
    return json.dumps(doc).encode()


def party_install(store: ModelStore, model_root: Path, party: str, payload: bytes) -> bytes:
    """``artifact.install`` at a party: verify the signed manifest against the draft files and install."""
    req = json.loads(payload.decode())
    run_id, manifest = str(req["run_id"]), req["manifest"]
    if not isinstance(manifest, dict):
        raise SecurityError(f"party '{party}': {ARTIFACT_INSTALL} carries no manifest object")
    draft = Path(model_root) / _safe(run_id) / DRAFT_DIR
    if not draft.is_dir():
        raise ProtocolError(f"party '{party}': {ARTIFACT_INSTALL} for run {run_id} before {ARTIFACT_BUILD} (no {draft})")
    with tempfile.TemporaryDirectory(dir=draft.parent) as tmp:
        stage = Path(tmp) / "artifact"
        stage.mkdir(mode=0o700)
        for f in draft.iterdir():
            if f.name != MANIFEST:
                shutil.copyfile(f, stage / f.name)
        (stage / MANIFEST).write_bytes(json_bytes(manifest))
        # ModelStore.install -> read_artifact: signature, party, every file hash; nothing written on failure
        had_active = store.active_version() is not None
        version = store.install(stage, activate=not had_active)
    shutil.rmtree(draft, ignore_errors=True)
    return json.dumps({"version": version, "active": store.active_version() == version}).encode()


def party_handler(config: PartyConfig, *, id_column: str | None = "id") -> Callable[[str, bytes], bytes]:
    """The party side for a :class:`fedcredit.config.PartyConfig` (used by ``run_party_role``).

    ``id_column``: the training dataset's id column, recorded in the schema so the
    scorer looks rows up by the same column.
    """
    root = Path(config.party.state_dir) / "models"
    name = config.party.name

    def handle(method: str, payload: bytes) -> bytes:
        if method == ARTIFACT_BUILD:
            return party_build(root, name, payload, id_column=id_column)
        if method == ARTIFACT_INSTALL:
            store = open_store(config)
            if store.federation_public_key is None:
                raise ConfigError(f"party '{name}': cannot verify artifacts: no federation-signing.pub in "
                                  f"{config.party.identity_dir} (copy it from the CA directory)")
            return party_install(store, root, name, payload)
        raise ProtocolError(f"party '{name}': unknown publish method {method!r}")

    return handle
