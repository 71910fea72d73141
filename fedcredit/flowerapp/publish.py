"""Publishing a finished run: one signed artifact per party, installed in its model store.

Two more coordinator hops after training, both over the job's
:class:`fedcredit.channel.PartyChannel` (Flower in deployment, LocalChannel in tests):

1. ``artifact.build``: each party builds its artifact *locally* from the model part
   training saved under ``<state_dir>/models/<run_id>/`` and replies with the
   **unsigned manifest only** — file hashes, model hash, public metrics.  Model
   bytes never leave the party.
2. The coordinator fills each manifest's ``peers`` (the other parties' model hashes,
   so joint scoring can refuse a version mismatch) and signs every manifest with
   the federation signing key (manifest only: it never sees the files).
3. ``artifact.install``: each party receives its signed manifest, puts it next to
   its own draft files and installs through :meth:`party.models.ModelStore.install`,
   which verifies the signature and every hash before writing anything.  A manifest
   altered on the way (a metric, a hash, the peers) fails the signature; a manifest
   swapped for another party's fails the party check.  The version is activated
   when the store has no active version yet.

Why the coordinator may hold the signing key: it only ever signs hashes and public
metrics, exactly what it already knows; it never holds a party's secret.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from fedcredit.errors import ConfigError, DataError, ProtocolError, SecurityError

BUILD = "artifact.build"
INSTALL = "artifact.install"
DRAFT_DIR = "artifact-draft"

Progress = Callable[[dict[str, Any]], None]


def _safe(run_id: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_-]", "_", run_id)


# =========================================================================== coordinator side


def default_signing_key(ca_dir: Path | None) -> Path | None:
    """``<ca_dir>/federation-signing.key`` when it exists (the file ``fedcredit certs init`` writes)."""
    if ca_dir is None:
        return None
    p = Path(ca_dir) / "federation-signing.key"
    return p if p.exists() else None


def publish_run(
    channel: Any,
    *,
    run_id: str,
    parties: list[str],
    signing_key: str | Path | Any | None,
    metrics: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """Coordinator role of publishing; returns the public publish result for the run registry.

    ``signing_key``: the federation Ed25519 private key (or its PEM path).  None ->
    nothing is published and the result says why (training itself succeeded).
    ``metrics``: the run's public metrics, recorded in every manifest.
    """
    from crypto import signing

    progress = progress or (lambda ev: None)
    if signing_key is None or (isinstance(signing_key, (str, Path)) and not Path(signing_key).exists()):
        note = ("not published: no federation signing key configured for the coordinator "
                f"({signing_key or 'set [federation].signing_key or put federation-signing.key in ca_dir'}); "
                "build and sign artifacts by hand with fedcredit.artifacts")
        progress({"event": "publish", "message": note})
        return {"published": False, "note": note}
    key = signing.load_private(Path(signing_key)) if isinstance(signing_key, (str, Path)) else signing_key
    created = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    public_metrics = {k: v for k, v in dict(metrics or {}).items() if isinstance(v, (int, float, str, bool))}

    progress({"event": "publish", "step": "build", "message": f"asking {len(parties)} parties to build their artifacts",
              "parties": {p: "building" for p in parties}})
    req = json.dumps({"run_id": run_id, "created": created, "metrics": public_metrics}).encode()
    replies = channel.call_all({p: (BUILD, req) for p in parties})
    drafts: dict[str, dict[str, Any]] = {}
    for p in parties:
        try:
            doc = json.loads(replies[p].decode())
        except (KeyError, ValueError, UnicodeDecodeError):
            raise ProtocolError(f"party '{p}': malformed reply to {BUILD}") from None
        if not isinstance(doc, dict) or doc.get("party") != p or doc.get("run_id") != run_id:
            raise ProtocolError(f"party '{p}': {BUILD} reply is for party {doc.get('party')!r} / run "
                                f"{doc.get('run_id')!r}, expected '{p}' / {run_id!r}")
        if "signature" in doc:
            raise ProtocolError(f"party '{p}': {BUILD} reply is already signed")
        drafts[p] = doc

    from fedcredit.artifacts import VERTICAL_KINDS, sign_artifact

    signed: dict[str, dict[str, Any]] = {}
    for p, doc in drafts.items():
        if doc["kind"] in VERTICAL_KINDS:
            doc["peers"] = {q: {"model_hash": d["model_hash"], "kind": d["kind"]} for q, d in drafts.items() if q != p}
        else:
            doc["peers"] = {}
        with tempfile.TemporaryDirectory() as tmp:  # sign_artifact validates the manifest's structure first
            (Path(tmp) / "manifest.json").write_text(json.dumps(doc))
            man = sign_artifact(tmp, key, check_files=False)
        signed[p] = man.to_dict()

    progress({"event": "publish", "step": "install", "message": "sending signed manifests",
              "parties": {p: "installing" for p in parties}})
    replies = channel.call_all({p: (INSTALL, json.dumps({"run_id": run_id, "manifest": signed[p]}).encode())
                                for p in parties})
    installed = {p: json.loads(replies[p].decode()) for p in parties}
    progress({"event": "publish", "step": "done",
              "message": "installed: " + ", ".join(f"{p}={r['version']}" for p, r in installed.items()),
              "parties": {p: "installed" for p in parties}})
    return {
        "published": True,
        "key_id": next(iter(signed.values()))["signature"]["key_id"] if signed else None,
        "parties": {p: {"kind": drafts[p]["kind"], "model_hash": drafts[p]["model_hash"], **installed[p]}
                    for p in parties},
    }


# =========================================================================== party side


def find_model_part(model_dir: Path, party: str) -> tuple[str, dict[str, bytes], dict[str, Any]]:
    """(kind, files, schema) of the model part training saved in ``model_dir``.

    Recognised by content, not by file name, so every protocol's saving code works:
    ``global_model.json`` (horizontal), a ``vertical_lr/label|passive`` JSON
    (``LabelModel/PassiveModel.to_json``) or a SecureBoost label/passive part.
    """
    from fedcredit.artifacts import horizontal_parts

    if not model_dir.is_dir():
        raise DataError(f"party '{party}': no saved model for this run ({model_dir} does not exist)")
    g = model_dir / "global_model.json"
    if g.is_file():
        from fedcredit.models import load_model

        return horizontal_parts(load_model(g))
    found: list[tuple[str, Path, dict[str, Any]]] = []
    for f in sorted(model_dir.glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (ValueError, OSError):
            continue
        if not isinstance(d, dict):
            continue
        tag = d.get("kind") if isinstance(d.get("kind"), str) else d.get("format")
        kind = {"vertical_lr/label": "vertical-lr-label", "vertical_lr/passive": "vertical-lr-passive",
                "fedcredit.secureboost.label/1": "secureboost-label",
                "fedcredit.secureboost.passive/1": "secureboost-passive"}.get(str(tag))
        if kind and d.get("party", party) == party:
            found.append((kind, f, d))
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
    from fedcredit.artifacts import VERTICAL_KINDS, build_artifact, model_part_hash

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


def party_install(store: Any, model_root: Path, party: str, payload: bytes) -> bytes:
    """``artifact.install`` at a party: verify the signed manifest against the draft files and install."""
    from fedcredit.artifacts import MANIFEST, json_bytes

    req = json.loads(payload.decode())
    run_id, manifest = str(req["run_id"]), req["manifest"]
    if not isinstance(manifest, dict):
        raise SecurityError(f"party '{party}': {INSTALL} carries no manifest object")
    draft = Path(model_root) / _safe(run_id) / DRAFT_DIR
    if not draft.is_dir():
        raise ProtocolError(f"party '{party}': {INSTALL} for run {run_id} before {BUILD} (no {draft})")
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


def party_handler(config: Any, *, id_column: str | None = "id") -> Callable[[str, bytes], bytes]:
    """The party side for a :class:`fedcredit.config.PartyConfig` (used by ``run_party_role``).

    ``id_column``: the training dataset's id column, recorded in the schema so the
    scorer looks rows up by the same column.
    """
    from party.models import open_store

    root = Path(config.party.state_dir) / "models"
    name = config.party.name

    def handle(method: str, payload: bytes) -> bytes:
        if method == BUILD:
            return party_build(root, name, payload, id_column=id_column)
        if method == INSTALL:
            store = open_store(config)
            if store.federation_public_key is None:
                raise ConfigError(f"party '{name}': cannot verify artifacts: no federation-signing.pub in "
                                  f"{config.party.identity_dir} (copy it from the CA directory)")
            return party_install(store, root, name, payload)
        raise ProtocolError(f"party '{name}': unknown publish method {method!r}")

    return handle


__all__ = ["BUILD", "INSTALL", "publish_run", "default_signing_key", "find_model_part", "party_build",
           "party_install", "party_handler"]
