"""The Flower ServerApp (coordinator) and ClientApp (party) for every fedcredit job.

Flower is only the control plane here.  The ServerApp runs in the coordinator's
process space: it reads the job from the run registry, maps party names to
SuperNode ids (registered by name, never by id order), and drives the job's
coordinator role through :class:`FlowerChannel`.  The ClientApp runs at each party:
it loads the party's own config (``party-config`` node setting), verifies peer
certificates against its own copy of the federation CA, and dispatches to the
party role of the job's protocol.  Protocol logic lives in
``fedcredit.protocols`` and is shared with the in-process simulation.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedcredit.errors import FedCreditError, ProtocolError

server_app = ServerApp()
client_app = ClientApp()

META = "fc-meta"
BODY = "fc-body"


def pack(method: str, payload: bytes, meta: Mapping[str, Any]) -> RecordDict:
    """A protocol message as Flower records: JSON metadata + raw payload bytes."""
    arr = Array(dtype="bytes", shape=(len(payload),), stype="raw", data=bytes(payload))
    return RecordDict(
        {
            META: ConfigRecord({"method": method, "meta": json.dumps(dict(meta))}),
            BODY: ArrayRecord({"payload": arr}),
        }
    )


def unpack(content: RecordDict) -> tuple[str, bytes, dict[str, Any]]:
    meta = content.config_records[META]
    payload = content.array_records[BODY]["payload"].data
    return str(meta["method"]), bytes(payload), json.loads(str(meta["meta"]))


class FlowerChannel:
    """:class:`fedcredit.channel.PartyChannel` over Flower messages (one hop per call)."""

    def __init__(self, grid: Grid, nodes: Mapping[str, int], meta: Mapping[str, Any], timeout: float) -> None:
        self.grid = grid
        self.nodes = dict(nodes)
        self.meta = dict(meta)
        self.timeout = timeout
        self.bytes_received: dict[str, int] = {p: 0 for p in nodes}
        self.bytes_sent: dict[str, int] = {p: 0 for p in nodes}
        # Coordinator-side wire capture for privacy audits and tests: every payload the
        # coordinator receives is written as-is (it only ever holds ciphertexts and public data).
        cap = os.environ.get("FEDCREDIT_CAPTURE_DIR")
        self.capture_dir = Path(cap) if cap else None
        self._seq = 0

    def _capture(self, party: str, method: str, payload: bytes) -> None:
        if self.capture_dir is None:
            return
        self.capture_dir.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        (self.capture_dir / f"{self._seq:05d}-{party}-{method}.bin").write_bytes(payload)

    @property
    def parties(self) -> list[str]:
        return list(self.nodes)

    def call_all(self, requests: Mapping[str, tuple[str, bytes]]) -> dict[str, bytes]:
        msgs, by_node = [], {}
        for party, (method, payload) in requests.items():
            node = self.nodes[party]
            by_node[node] = party
            self.bytes_sent[party] += len(payload)
            msgs.append(Message(content=pack(method, payload, self.meta), message_type="query", dst_node_id=node))
        replies = list(self.grid.send_and_receive(msgs, timeout=self.timeout))
        out: dict[str, bytes] = {}
        errors: dict[str, str] = {}
        for rep in replies:
            party = by_node.get(rep.metadata.src_node_id, f"node {rep.metadata.src_node_id}")
            if rep.has_error():
                errors[party] = rep.error.reason
                continue
            _, payload, meta = unpack(rep.content)
            if meta.get("error"):
                errors[party] = str(meta["error"])
                continue
            self.bytes_received[party] = self.bytes_received.get(party, 0) + len(payload)
            self._capture(party, requests[party][0] + ".reply", payload)
            out[party] = payload
        for party in requests:
            if party not in out and party not in errors:
                errors[party] = f"no reply within {self.timeout:.0f} s (disconnected?)"
        if errors:
            raise PartyFailure(errors, out)
        return out


class PartyFailure(ProtocolError):
    """One or more parties failed a call; ``replies`` holds the ones that answered."""

    def __init__(self, errors: Mapping[str, str], replies: Mapping[str, bytes]) -> None:
        self.errors = dict(errors)
        self.replies = dict(replies)
        super().__init__("; ".join(f"party '{p}': {e}" for p, e in self.errors.items()))


# --------------------------------------------------------------------------- ServerApp


def _wait_for_nodes(grid: Grid, nodes: Mapping[str, int], timeout: float, progress) -> None:
    deadline = time.monotonic() + timeout
    while True:
        online = set(grid.get_node_ids())
        missing = [p for p, n in nodes.items() if n not in online]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ProtocolError(f"parties not connected after {timeout:.0f} s: {', '.join(missing)}")
        progress({"event": "waiting", "message": f"waiting for parties: {', '.join(missing)}"})
        time.sleep(1.0)  # poll Flower's node list; there is no push notification for it


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    from coordinator.registry import Registry
    from fedcredit.config import load_coordinator_config
    from fedcredit.flowerapp.jobs import run_coordinator_role

    cfg = context.run_config
    registry = Registry(Path(str(cfg["registry"])))
    run_id = str(cfg["run_id"])
    rec = registry.get(run_id)
    if rec is None:
        raise RuntimeError(f"run {run_id} not found in {cfg['registry']}")
    registry.mark_running(run_id)

    def progress(ev: dict[str, Any]) -> None:
        registry.add_event(run_id, ev)

    try:
        coord = load_coordinator_config(str(cfg["coordinator_config"]))
        result = run_coordinator_role(grid, coord, registry, run_id, rec.job_toml, progress, _wait_for_nodes)
        registry.finish(run_id, result)
    except FedCreditError as e:
        registry.fail(run_id, str(e))
    except Exception as e:  # noqa: BLE001 - any crash must end the run as failed, with the reason
        registry.fail(run_id, f"internal error: {type(e).__name__}: {e}")
        traceback.print_exc()


# --------------------------------------------------------------------------- ClientApp


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    from fedcredit.flowerapp.jobs import run_party_role

    method, payload, meta = unpack(msg.content)
    try:
        reply = run_party_role(str(context.node_config["party-config"]), method, payload, meta)
        return Message(content=pack(method + ".reply", reply, {}), reply_to=msg)
    except FedCreditError as e:
        return Message(content=pack(method + ".reply", b"", {"error": str(e)}), reply_to=msg)
    except Exception as e:  # noqa: BLE001 - report, never leak a traceback with data across
        traceback.print_exc()
        return Message(content=pack(method + ".reply", b"", {"error": f"internal error: {type(e).__name__}: {e}"}),
                       reply_to=msg)
