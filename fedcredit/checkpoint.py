"""Per-party checkpoints of a long vertical job, and the agreement on where a resumed job restarts.

Why: a SecureBoost or vertical LR job runs for minutes to hours; a party or coordinator
restart must not throw that away.  Each party keeps, in its OWN state directory, what it
already holds after a step (its own trees / split table / weights / RNG state) — never a
peer's secret, never anything it did not hold anyway — so a resumed run continues from the
last step every party checkpointed (docs/resume.md).

Files: ``<state_dir>/checkpoints/<run_id>/<stage>-<step:08d>.ckpt``, written atomically and
owner-only (``crypto.files.write_file``), framed with :mod:`fedcredit.codec` (JSON meta +
numeric arrays).  At most the last :data:`KEEP` per stage are kept: two, because after a
crash the roles may be one step apart and the one ahead must be able to step back.  The
directory is deleted when the run ends for good (success or a failure a resume cannot
cure).

Agreement (:func:`agree_step`): star around the protocol's leader (the label party).  Each
other role sends the leader the steps it holds; the leader picks the latest step EVERY role
holds (or none: start over) and tells each role that one number.  So a party learns only a
peer's step numbers (the leader) or the chosen step (the others) — nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from crypto.files import write_file
from fedcredit.codec import pack, unpack
from fedcredit.errors import DataError, ProtocolError
from fedcredit.transport import Transport

__all__ = ["KEEP", "Checkpoint", "CheckpointStore", "ResumeTags", "agree_step", "NoCheckpoint", "attempt_session",
           "parse_session"]

#: checkpoints kept per stage (the roles may be one step apart after a crash)
KEEP: Final = 2
_NAME = re.compile(r"^(?P<stage>[a-z][a-z0-9_]*)-(?P<step>\d{8})\.ckpt$")
_FORMAT: Final = "fedcredit.checkpoint/1"


class NoCheckpoint(DataError):
    """A resume was asked for but this party holds no checkpoint of the run."""


class Checkpoint:
    """One stage's state after ``step`` steps: JSON-able ``meta`` and numeric ``arrays`` (the party's own)."""

    def __init__(self, step: int, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.step = int(step)
        self.meta = dict(meta)
        self.arrays = {k: np.array(v) for k, v in arrays.items()}  # writable copies


class CheckpointStore:
    """The checkpoints of one run at one party (see the module docstring for layout and lifetime)."""

    def __init__(self, state_dir: Path, run_id: str, party: str, *, keep: int = KEEP) -> None:
        if not run_id.replace("-", "").replace(".", "").isalnum():
            raise ProtocolError(f"party '{party}': malformed run id {run_id!r} for a checkpoint directory")
        self.dir = Path(state_dir) / "checkpoints" / run_id
        self.run_id, self.party, self.keep = run_id, party, keep

    def _path(self, stage: str, step: int) -> Path:
        return self.dir / f"{stage}-{int(step):08d}.ckpt"

    def steps(self, stage: str) -> list[int]:
        """Steps of ``stage`` held here, ascending."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m and m["stage"] == stage:
                out.append(int(m["step"]))
        return sorted(out)

    def exists(self) -> bool:
        """Whether any checkpoint of the run is held here."""
        return self.dir.is_dir() and any(_NAME.match(p.name) for p in self.dir.iterdir())

    def save(self, stage: str, step: int, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None,
             *, prune: bool = True) -> Path:
        """Write ``stage`` after ``step`` atomically (owner-only), then keep only the last :attr:`keep`.

        ``prune=False`` for an incremental stage, where each step holds only its own part
        (PSI batches): every step is needed to resume, so none is dropped.
        """
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = pack({"format": _FORMAT, "run_id": self.run_id, "party": self.party, "stage": stage,
                     "step": int(step), "state": dict(meta)}, dict(arrays or {}))
        path = write_file(self._path(stage, step), body, what="checkpoint")
        for old in self.steps(stage)[: -self.keep] if prune else []:
            self._path(stage, old).unlink(missing_ok=True)
        return path

    def load(self, stage: str, step: int) -> Checkpoint:
        path = self._path(stage, step)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise NoCheckpoint(f"party '{self.party}': no checkpoint {path.name} of run '{self.run_id}' in "
                               f"{self.dir}") from None
        meta, arrays, _ = unpack(raw, what=f"checkpoint {path}")
        if meta.get("format") != _FORMAT or meta.get("run_id") != self.run_id or meta.get("stage") != stage \
                or meta.get("step") != int(step) or not isinstance(meta.get("state"), dict):
            raise DataError(f"party '{self.party}': {path} is not checkpoint {stage} #{step} of run '{self.run_id}'")
        return Checkpoint(step, meta["state"], arrays)

    def drop(self, stage: str) -> None:
        """Forget every checkpoint of ``stage`` (what it was computed over no longer holds)."""
        for step in self.steps(stage):
            self._path(stage, step).unlink(missing_ok=True)

    def clear(self) -> None:
        """The run ended for good: its checkpoints go."""
        shutil.rmtree(self.dir, ignore_errors=True)


class ResumeTags:
    """The two agreement messages of a protocol whose tag prefix is ``prefix`` (declared in each protocol's Tags)."""

    def __init__(self, prefix: str) -> None:
        self.held = f"{prefix}/resume/held"  # role -> leader: {"held": [steps]}
        self.at = f"{prefix}/resume/at"  # leader -> role: {"step": n | null}


def agree_step(transport: Transport, *, leader: str, parties: Sequence[str], held: Sequence[int],
               tags: ResumeTags, timeout: float | None = None) -> int | None:
    """The step every role resumes from: the latest one all of ``parties`` hold (None: start over).

    Every role calls it with the same ``leader``/``parties`` and the steps it holds itself.
    """
    me = transport.me
    mine = sorted({int(s) for s in held})
    if me == leader:
        common = set(mine)
        for p in parties:
            if p == me:
                continue
            try:
                d = json.loads(transport.recv(p, tags.held, timeout).decode())
                theirs = {int(s) for s in d["held"]}
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise ProtocolError(f"party '{me}': malformed resume offer from party '{p}'") from None
            common &= theirs
        step = max(common) if common else None
        for p in parties:
            if p != me:
                transport.send(p, tags.at, json.dumps({"step": step}).encode())
        return step
    transport.send(leader, tags.held, json.dumps({"held": mine}).encode())
    try:
        d = json.loads(transport.recv(leader, tags.at, timeout).decode())
        step = d["step"]
        step = None if step is None else int(step)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ProtocolError(f"party '{me}': malformed resume decision from leader '{leader}'") from None
    if step is not None and step not in mine:
        raise ProtocolError(f"party '{me}': leader '{leader}' chose to resume from step {step}, which this party "
                            f"does not hold (it holds {mine})")
    return step


def attempt_session(run_id: str, attempt: int) -> str:
    """The data-plane session of a run's attempt: the run id, then ``<run id>.a<n>`` for resumed attempts.

    Why a new session per attempt: frames an earlier attempt left queued at the relay (a dead
    party's last replies, an abort) must never reach the resumed one.
    """
    return run_id if attempt <= 1 else f"{run_id}.a{int(attempt)}"


def parse_session(session: str) -> tuple[str, int] | None:
    """(run id, attempt) of a session id from :func:`attempt_session`, or None if it is not one."""
    run_id, sep, rest = session.partition(".a")
    if not sep:
        return session, 1
    if not rest.isdigit() or int(rest) < 2 or rest != str(int(rest)):
        return None
    return run_id, int(rest)
