"""The Flower ServerApp: the coordinator's side of every fedcredit job.

Flower is only the control plane here.  The ServerApp runs in the coordinator's
process space: it reads the job from the run registry, maps party names to
SuperNode ids (registered by name, never by id order), and drives the job's
coordinator role through :class:`FlowerChannel`.  The message envelope it shares
with the parties' ClientApp is :mod:`fedcredit.control_plane`; protocol logic lives
in :mod:`fedcredit.protocols` and is shared with the in-process simulation.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from coordinator.liveness import liveness, not_live_reason
from coordinator.publish import default_signing_key, publish_run
from coordinator.registry import CHECKPOINTED_TYPES, Registry
from fedcredit.config import CoordinatorConfig, JobConfig, load_coordinator_config
from fedcredit.control_plane import JOB_ADMIT, REPLY_SUFFIX, VERTICAL_RUN, pack, unpack
from fedcredit.errors import ConfigError, FedCreditError, ProtocolError
from fedcredit.jobs import horizontal_job, horizontal_public_result, parse_job
from fedcredit.protocols import horizontal

__all__ = ["server_app", "FlowerChannel", "PartyFailure", "run_coordinator_role"]

server_app = ServerApp()

Progress = Callable[[dict[str, Any]], None]
#: parties -> {party: why it is not live} for those that are not (empty: all live)
LivenessCheck = Callable[[Collection[str]], dict[str, str]]

#: How often a call polls the SuperLink for replies (and the registry for liveness).  Flower's own
#: send_and_receive sleeps 3 s between polls; we poll ourselves so a silent party is seen within a second.
POLL_S = 0.5


def liveness_check(registry: Registry, timeout_s: float, grace_s: float = 0.0) -> LivenessCheck:
    """Which of some parties have stopped heartbeating (coordinator/liveness.py), read from the registry.

    ``grace_s``: how much longer a silent party is waited for.  A vertical job's data-plane stream
    survives a drop of up to ``reconnect_window_s`` (the relay holds the party's place), and a
    network cut stops heartbeats as well, so abandoning such a job at ``liveness_timeout_s`` would
    defeat the reconnect.  ``fedcredit status`` shows the party as not live meanwhile.
    """
    def check(parties: Collection[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in liveness(registry, parties, timeout_s):
            if p.live or (grace_s and p.age_s is not None and p.age_s <= timeout_s + grace_s):
                continue
            out[p.name] = not_live_reason(p) + (
                f"; a vertical job also waits reconnect_window_s = {grace_s:g} s for it" if grace_s else "")
        return out
    return check


class PartyFailure(ProtocolError):
    """One or more parties failed a call; ``replies`` holds the ones that answered.

    ``resumable``: party -> the checkpoints it kept (e.g. ``"psi 1, sb 3"``), for each party whose error
    reply said a resume can cure it (``party.clientapp`` sets it on ``vertical.run`` only).
    """

    def __init__(self, errors: Mapping[str, str], replies: Mapping[str, bytes],
                 resumable: Mapping[str, str] | None = None, unreachable: frozenset[str] = frozenset()) -> None:
        self.errors = dict(errors)
        self.replies = dict(replies)
        self.resumable = dict(resumable or {})
        self.unreachable = unreachable  # no answer from the party itself (no reply, or Flower's own error)
        super().__init__("; ".join(f"party '{p}': {e}" for p, e in self.errors.items()))


class FlowerChannel:
    """:class:`fedcredit.channel.PartyChannel` over Flower messages (one hop per call)."""

    def __init__(self, grid: Grid, nodes: Mapping[str, int], meta: Mapping[str, Any], timeout: float,
                 live: LivenessCheck | None = None, tolerate_dead: bool = False) -> None:
        self.grid = grid
        self.live = live  # a call stops waiting for a party that stops heartbeating
        # False: one dead party ends the call at once (the job needs every party); True: the call keeps
        # waiting for the others (a horizontal job with min_parties drops the dead one and goes on)
        self.tolerate_dead = tolerate_dead
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
        msgs = []
        for party, (method, payload) in requests.items():
            node = self.nodes[party]
            self.bytes_sent[party] += len(payload)
            msgs.append(Message(content=pack(method, payload, self.meta), message_type="query", dst_node_id=node))
        replies, dead = self._send_and_receive(msgs, list(requests))
        out: dict[str, bytes] = {}
        errors: dict[str, str] = dict(dead)
        resumable: dict[str, str] = {}
        unreachable: set[str] = set(dead)
        for party, rep in replies:  # party: whose message this replies to (Flower's own errors come from the SuperLink)
            if rep.has_error():  # Flower's own error (e.g. the node stopped heartbeating), not the party's answer
                errors[party] = str(rep.error.reason)
                unreachable.add(party)
                continue
            if rep.metadata.src_node_id != self.nodes[party]:
                errors[party] = f"reply came from node {rep.metadata.src_node_id}, not this party's node"
                continue
            _, payload, meta = unpack(rep.content)
            if meta.get("error"):
                errors[party] = str(meta["error"])
                if meta.get("resumable"):
                    resumable[party] = str(meta.get("checkpoint") or "")
                continue
            self.bytes_received[party] = self.bytes_received.get(party, 0) + len(payload)
            self._capture(party, requests[party][0] + REPLY_SUFFIX, payload)
            out[party] = payload
        for party in requests:
            if party not in out and party not in errors:
                errors[party] = f"no reply within {self.timeout:.0f} s (disconnected?)"
                unreachable.add(party)
        if errors:
            raise PartyFailure(errors, out, resumable, frozenset(unreachable))
        return out

    def _send_and_receive(self, msgs: list[Message], parties: list[str]) -> tuple[list[tuple[str, Message]], dict[str, str]]:
        """Flower's send_and_receive, plus: stop waiting for a party as soon as it is not live.

        Returns the replies and {party: why it has none} for parties that are not live (or whose
        message the SuperLink refused); a party still silent at ``timeout`` is in neither (the
        caller reports it as no reply).  Without ``tolerate_dead`` the first dead party ends the call.
        """
        ids = list(self.grid.push_messages(msgs))
        waiting = {mid: p for mid, p in zip(ids, parties, strict=True) if mid}
        dead = {p: "the SuperLink did not accept the message" for mid, p in zip(ids, parties, strict=True) if not mid}
        replies: list[tuple[str, Message]] = []
        deadline = time.monotonic() + self.timeout
        while waiting:
            for rep in self.grid.pull_messages(list(waiting)):
                party = waiting.pop(rep.metadata.reply_to_message_id, None)
                if party is not None:
                    replies.append((party, rep))
            if not waiting or time.monotonic() > deadline:
                break
            silent = self.live(list(waiting.values())) if self.live is not None else {}
            if silent:
                dead.update(silent)
                waiting = {mid: p for mid, p in waiting.items() if p not in silent}
                if not self.tolerate_dead:
                    why = f"still working when the call was abandoned ({', '.join(sorted(silent))} not live)"
                    dead.update({p: why for p in waiting.values()})
                    break
            time.sleep(POLL_S)
        return replies, dead


def wait_for_nodes(grid: Grid, nodes: Mapping[str, int], timeout: float, progress: Progress,
                   live: LivenessCheck | None = None, party_wait_s: float = 0.0,
                   heard: Callable[[], Collection[str]] | None = None) -> None:
    """Block until every job party is live and its SuperNode connected (or fail naming the missing ones).

    A party that is not live (no recent heartbeat) fails the run after ``party_wait_s``
    (``[coordinator].party_wait_s``), not after ``timeout``: a daemon that is down is not
    going to connect its SuperNode either.  ``heard``: the parties whose SuperNode this
    SuperLink has heard since it started (``Registry.supernodes_heard``); Flower's node list
    alone is not enough right after a coordinator restart, when it still counts a node online
    on a heartbeat the previous SuperLink received (``Registry.forget_supernodes``).
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        silent = live(list(nodes)) if live is not None else {}
        if silent and time.monotonic() - start >= party_wait_s:
            raise PartyFailure({p: f"{why}; the run waited {party_wait_s:g} s for it (party_wait_s)"
                                for p, why in silent.items()}, {})
        online = set(grid.get_node_ids())
        unheard = set(nodes) - set(heard()) if heard is not None else set()
        missing = [p for p, n in nodes.items() if n not in online or p in unheard]
        if not missing and not silent:
            return
        missing = list(dict.fromkeys([*silent, *missing]))
        if time.monotonic() > deadline:
            raise ProtocolError(f"parties not connected after {timeout:.0f} s: {', '.join(missing)}")
        progress({"event": "waiting", "message": "waiting for parties: " + ", ".join(
            f"{p} (not live)" if p in silent else
            f"{p} (its SuperNode has not reached this coordinator's SuperLink yet)" if p in unheard else p
            for p in missing)})
        time.sleep(1.0)  # poll Flower's node list; there is no push notification for it


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
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
        result = run_coordinator_role(grid, coord, registry, run_id, rec.job_toml, progress, attempt=rec.attempt)
        registry.finish(run_id, result)
    except FedCreditError as e:
        why = interruption(rec.type, e, run_id)
        if why is None:
            registry.fail(run_id, str(e))
        else:
            progress({"event": "interrupted", "message": why})
            registry.interrupt(run_id, why)
    except Exception as e:  # noqa: BLE001 - any crash must end the run as failed, with the reason
        registry.fail(run_id, f"internal error: {type(e).__name__}: {e}")
        traceback.print_exc()


def interruption(job_type: str, e: FedCreditError, run_id: str) -> str | None:
    """Why a failed vertical attempt can be resumed (the registry's ``interrupted`` reason), or None: it failed.

    Resumable: every party that answered with an error said its checkpoints can cure it, and any other
    failing party gave no answer at all (it died or is unreachable).  Anything a party calls final — bad
    data or config, a refusal, a missing checkpoint — and any non-vertical job fails for good.
    """
    if job_type not in CHECKPOINTED_TYPES or not isinstance(e, PartyFailure):
        return None
    if any(p not in e.resumable for p in e.errors if p not in e.unreachable):
        return None
    kept = "; ".join(f"{p} holds {e.resumable[p] or 'no checkpoint yet'}" for p in e.resumable)
    return f"{e} — resumable ({kept or 'no party answered'}): fedcredit runs resume {run_id}"


def run_coordinator_role(
    grid: Grid,
    coord: CoordinatorConfig,
    registry: Registry,
    run_id: str,
    job_toml: str,
    progress: Progress,
    *,
    attempt: int = 1,
) -> dict[str, Any]:
    """Drive one job from the ServerApp; returns the public result stored in the registry.

    ``attempt`` >= 2 is a resumed vertical run (``fedcredit runs resume``): the parties accepted it at
    attempt 1 (each re-checks the digest of the job it approved), so there is no ``job.admit``; the
    ``vertical.run`` message says ``resume`` and names the attempt's data-plane session.
    """
    job = parse_job(job_toml)
    nodes_by_party = registry.nodes()
    missing = [p for p in job.job.parties if p not in nodes_by_party]
    if missing:
        raise ConfigError(f"job parties not registered with the coordinator: {', '.join(missing)}")
    nodes = {p: int(nodes_by_party[p]) for p in job.job.parties}
    certs = {p.name: p.certificate.read_text() for p in coord.parties if p.name in nodes}
    progress({"event": "starting", "message": f"waiting for {len(nodes)} parties", "parties": {p: "waiting" for p in nodes}})
    live = liveness_check(registry, coord.coordinator.liveness_timeout_s)
    # a vertical call is abandoned only once the party is also past the relay's reconnect window
    grace = 0.0 if job.job.type == "horizontal" else coord.coordinator.reconnect_window_s
    wait_for_nodes(grid, nodes, timeout=job.job.round_timeout_s, progress=progress, live=live,
                   party_wait_s=coord.coordinator.party_wait_s, heard=registry.supernodes_heard)
    meta: dict[str, Any] = {"run_id": run_id, "job_toml": job_toml, "peer_certs": certs}
    if attempt > 1:
        meta.update({"resume": True, "attempt": attempt})
    channel = FlowerChannel(grid, nodes, meta, timeout=job.job.round_timeout_s,
                            live=liveness_check(registry, coord.coordinator.liveness_timeout_s, grace),
                            tolerate_dead=job.job.type == "horizontal" and job.job.min_parties is not None)
    if attempt > 1:
        progress({"event": "resuming", "message": f"attempt {attempt}: every party continues from its checkpoints",
                  "parties": {p: "resuming" for p in nodes}})
        out_admit: dict[str, Any] = {"resumed": attempt}
    else:
        out_admit = admit_job(channel, job, progress)
    if job.job.type == "horizontal":
        out = _coordinate_horizontal(channel, job, progress)
    else:
        out = _coordinate_vertical(channel, job, progress)
    out["publish"] = _publish(channel, coord, job, run_id, out, progress)
    out["admission"] = out_admit
    return out


#: Slack on top of the longest approval expiry a party announced before the coordinator stops asking.
_ADMIT_GRACE_S = 120.0


def admit_job(channel: FlowerChannel, job: JobConfig, progress: Progress) -> dict[str, Any]:
    """Ask every party to admit the run (``job.admit``) before any protocol call; returns who accepted it.

    A party with ``approval = "manual"`` answers "pending" after a short wait; it is asked again (and shown
    "awaiting approval") until it accepts, refuses or its approval expires — each party enforces its own expiry,
    the coordinator stops asking after the longest announced expiry plus a grace period.  A refusal fails the
    run with the party's error (it names the party and the rule).
    """
    parties = list(job.job.parties)
    state: dict[str, str] = {p: "asked" for p in parties}
    accepted: dict[str, dict[str, Any]] = {}
    deadline: float | None = None
    while True:
        pending = [p for p in parties if p not in accepted]
        replies = channel.call_all({p: (JOB_ADMIT, b"") for p in pending})  # PartyFailure on a refusal
        waiting: list[str] = []
        for p, raw in replies.items():
            try:
                rep = json.loads(raw.decode())
                status = str(rep["status"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise ProtocolError(f"party '{p}': malformed {JOB_ADMIT} reply") from None
            if status == "accepted":
                accepted[p] = {"approval": rep.get("approval"), "digest": rep.get("digest")}
                state[p] = "approved"
            elif status == "pending":
                waiting.append(p)
                state[p] = "awaiting approval"
                expiry = time.monotonic() + float(rep.get("expires_in_s", 0.0)) + _ADMIT_GRACE_S
                deadline = expiry if deadline is None else max(deadline, expiry)
            else:
                raise ProtocolError(f"party '{p}': unexpected {JOB_ADMIT} status {status!r}")
        if not waiting:
            progress({"event": "admitted", "message": "every party accepted the job", "parties": dict(state)})
            return accepted
        progress({"event": "approval", "message": f"awaiting approval at {', '.join(waiting)}",
                  "parties": dict(state)})
        if deadline is not None and time.monotonic() > deadline:
            raise ProtocolError("; ".join(f"party '{p}': approval still pending after its announced expiry"
                                          for p in waiting))


def _publish(channel: FlowerChannel, coord: CoordinatorConfig, job: JobConfig, run_id: str, out: Mapping[str, Any],
             progress: Progress) -> dict[str, Any]:
    """Signed artifacts for every party after training (coordinator.publish); a failure is reported, the
    trained run stays finished."""
    key = coord.federation.signing_key or default_signing_key(coord.federation.ca_dir)
    parties = [p for p in job.job.parties if p not in set(out.get("dropped") or [])]
    try:
        return publish_run(channel, run_id=run_id, parties=parties, signing_key=key,
                           metrics=out.get("global") or {}, progress=progress)
    except FedCreditError as e:
        progress({"event": "publish", "step": "failed", "message": f"publishing failed: {e}"})
        return {"published": False, "error": str(e)}


def _coordinate_horizontal(channel: FlowerChannel, job: JobConfig, progress: Progress) -> dict[str, Any]:
    hjob = horizontal_job(job, channel.meta["run_id"])
    result = horizontal.run_coordinator(channel, hjob, progress=progress)
    out = horizontal_public_result(result)
    out["bytes_from_parties"] = dict(channel.bytes_received)
    out["bytes_to_parties"] = dict(channel.bytes_sent)
    return out


def _coordinate_vertical(channel: FlowerChannel, job: JobConfig, progress: Progress) -> dict[str, Any]:
    """One Flower message per party launches the whole protocol over the data plane."""
    progress({"event": "vertical", "message": f"{job.job.type}: PSI then training over the data plane",
              "parties": {p: "running" for p in job.job.parties}})
    replies = channel.call_all({p: (VERTICAL_RUN, b"") for p in job.job.parties})
    parties = {p: json.loads(r.decode()) for p, r in replies.items()}
    label = job.job.label_party
    assert label is not None  # JobConfig validation guarantees it for vertical jobs
    out: dict[str, Any] = {"global": parties[label].get("metrics", {}), "parties": {}}
    for p, rep in parties.items():
        out["parties"][p] = {k: v for k, v in rep.items() if k != "metrics"}
    out["label_party"] = label
    out["intersection_size"] = parties[label].get("intersection_size")
    out["bytes_from_parties"] = dict(channel.bytes_received)
    return out
