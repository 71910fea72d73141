"""The control-plane contract between the coordinator's ServerApp and each party's ClientApp.

Why here: the ServerApp (``coordinator/serverapp.py``) and the ClientApp
(``party/clientapp.py``) run in different institutions and never import each other;
what both must agree on — the Flower record envelope, the method names, the job
``meta`` keys — is declared once, below both.

A message is one Flower ``RecordDict``: a ConfigRecord with the method name and a
JSON ``meta`` (run id, job text, verified-by-the-receiver peer certificates), and
an ArrayRecord holding the raw payload bytes.  A party reports failure by replying
with ``meta = {"error": "..."}`` and an empty payload.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedcredit.codec import loads_json
from fedcredit.errors import ProtocolError

__all__ = ["APP_DIR", "build_app_fab", "META", "BODY", "JOB_ADMIT", "VERTICAL_RUN", "ARTIFACT_BUILD", "ARTIFACT_INSTALL", "REPLY_SUFFIX", "pack", "unpack"]

#: The Flower app descriptor the coordinator submits for every job (no code of its own: its
#: components are our installed packages).  A package resource of the shared library, so a wheel
#: install has it and every party builds the same app to check what it is asked to run.
APP_DIR = Path(str(resources.files("fedcredit") / "flower_app"))


def build_app_fab() -> bytes:
    """The FAB ``flwr run APP_DIR`` submits, built here with flwr's own builder.

    Why: a party accepts only this exact bundle (party/appguard.py).  The builder is
    deterministic (fixed timestamps, sorted entries, stored members), so coordinator and
    party get the same bytes when they run the same fedcredit and flwr versions.
    """
    from flwr.cli.build import build_fab_from_disk  # flwr's CLI module: loaded only when needed

    return build_fab_from_disk(APP_DIR)


META = "fc-meta"
BODY = "fc-body"

#: The first call of every run: the party checks the job against its [policy] and its job ledger, and replies
#: ``{"status": "accepted"}`` or ``{"status": "pending"}`` (awaiting its officer; ask again) — or refuses.
JOB_ADMIT = "job.admit"
#: Launches a whole vertical job at a party (the protocol itself runs over the data plane).
VERTICAL_RUN = "vertical.run"
#: Publishing, step 1: the party builds its artifact draft and replies its unsigned manifest.
ARTIFACT_BUILD = "artifact.build"
#: Publishing, step 2: the party verifies the signed manifest and installs the artifact.
ARTIFACT_INSTALL = "artifact.install"
#: Appended to a method name for its reply (horizontal methods are the protocol's own, see protocols.horizontal).
REPLY_SUFFIX = ".reply"


def pack(method: str, payload: bytes, meta: Mapping[str, Any]) -> RecordDict:
    """A protocol message as Flower records: JSON metadata + raw payload bytes."""
    arr = Array(dtype="bytes", shape=(len(payload),), stype="raw", data=bytes(payload))
    return RecordDict(
        {
            META: ConfigRecord({"method": method, "meta": json.dumps(dict(meta))}),
            BODY: ArrayRecord({"payload": arr}),
        }
    )


def unpack(content: RecordDict, *, what: str = "control-plane message") -> tuple[str, bytes, dict[str, Any]]:
    """(method, payload, meta) of a message built by :func:`pack`; anything else is a ProtocolError naming ``what``.

    The other side is another institution: a missing record, a non-string method or ``meta``
    that is not a JSON object must not surface as a KeyError deep in a role.
    """
    try:
        meta = content.config_records[META]
        payload = content.array_records[BODY]["payload"].data
        method, raw_meta = meta["method"], meta["meta"]
    except (KeyError, TypeError, AttributeError) as e:
        raise ProtocolError(f"malformed {what}: missing {e}") from None
    if not isinstance(method, str) or not isinstance(raw_meta, str) or not isinstance(payload, bytes):
        raise ProtocolError(f"malformed {what}: 'method' and 'meta' must be strings and the payload bytes")
    return method, payload, loads_json(raw_meta.encode("utf-8", "surrogatepass"), what=f"{what} meta")
