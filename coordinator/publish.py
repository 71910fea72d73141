"""Publishing a finished run, coordinator half: collect each party's manifest, add peers, sign, send back.

Two coordinator hops after training, both over the job's
:class:`fedcredit.channel.PartyChannel` (Flower in deployment, LocalChannel in tests):

1. ``artifact.build``: each party builds its artifact *locally* from the model part
   training saved and replies with the **unsigned manifest only** — file hashes,
   model hash, public metrics.  Model bytes never leave the party (``party/publish.py``).
2. The coordinator fills each manifest's ``peers`` (the other parties' model hashes,
   so joint scoring can refuse a version mismatch) and signs every manifest with
   the federation signing key (manifest only: it never sees the files).
3. ``artifact.install``: each party receives its signed manifest and installs it after
   verifying the signature and every hash (``party/publish.py``).

Why the coordinator may hold the signing key: it only ever signs hashes and public
metrics, exactly what it already knows; it never holds a party's secret.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto import signing
from fedcredit.artifacts import sign_artifact
from fedcredit.channel import PartyChannel
from fedcredit.control_plane import ARTIFACT_BUILD, ARTIFACT_INSTALL
from fedcredit.errors import ProtocolError
from fedcredit.kinds import VERTICAL_KINDS

__all__ = ["publish_run", "default_signing_key"]

Progress = Callable[[dict[str, Any]], None]


def default_signing_key(ca_dir: Path | None) -> Path | None:
    """``<ca_dir>/federation-signing.key`` when it exists (the file ``fedcredit certs init`` writes)."""
    if ca_dir is None:
        return None
    p = Path(ca_dir) / "federation-signing.key"
    return p if p.exists() else None


def publish_run(
    channel: PartyChannel,
    *,
    run_id: str,
    parties: list[str],
    signing_key: str | Path | Ed25519PrivateKey | None,
    metrics: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """Coordinator role of publishing; returns the public publish result for the run registry.

    ``signing_key``: the federation Ed25519 private key (or its PEM path).  None ->
    nothing is published and the result says why (training itself succeeded).
    ``metrics``: the run's public metrics, recorded in every manifest.
    """
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
    replies = channel.call_all({p: (ARTIFACT_BUILD, req) for p in parties})
    drafts: dict[str, dict[str, Any]] = {}
    for p in parties:
        try:
            doc = json.loads(replies[p].decode())
        except (KeyError, ValueError, UnicodeDecodeError):
            raise ProtocolError(f"party '{p}': malformed reply to {ARTIFACT_BUILD}") from None
        if not isinstance(doc, dict) or doc.get("party") != p or doc.get("run_id") != run_id:
            raise ProtocolError(f"party '{p}': {ARTIFACT_BUILD} reply is for party {doc.get('party')!r} / run "
                                f"{doc.get('run_id')!r}, expected '{p}' / {run_id!r}")
        if "signature" in doc:
            raise ProtocolError(f"party '{p}': {ARTIFACT_BUILD} reply is already signed")
        drafts[p] = doc

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
    replies = channel.call_all({p: (ARTIFACT_INSTALL, json.dumps({"run_id": run_id, "manifest": signed[p]}).encode())
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
