"""The coordinator's run registry: runs, their progress events and public results.

SQLite (WAL) in the coordinator's state directory, so runs and their metrics
survive a coordinator restart and can be read while a job writes to them (the
Flower ServerApp runs in its own process and writes here directly).  It stores
only what the coordinator is allowed to know: job configs, statuses, public
metrics, byte counts — never a key, a row or an update.

Statuses: ``queued`` -> ``running`` -> ``finished`` | ``failed`` | ``interrupted``.  A vertical
run is ``interrupted`` (not failed) when it was active at a coordinator restart or a party
died or lost its stream while the parties kept their checkpoints; ``fedcredit runs resume``
(:meth:`Registry.resume`) queues it again as attempt n+1 of the same run id (docs/resume.md).
"""

from __future__ import annotations

import builtins
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcredit.checkpoint import parse_session
from fedcredit.config import parse_job_text
from fedcredit.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    job_toml TEXT NOT NULL,
    flower_run_id TEXT,
    error TEXT,
    result_json TEXT
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    data_json TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS nodes (
    party TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    registered REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS liveness (
    party TEXT PRIMARY KEY,
    last_seen REAL NOT NULL,
    interval_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS supernode_heard (
    party TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""

ACTIVE = ("queued", "running")
TERMINAL = ("finished", "failed")
#: an attempt ended but the run can go on from its parties' checkpoints (``fedcredit runs resume``)
RESUMABLE = ("interrupted",)
#: no attempt is running: a watcher stops following
ENDED = TERMINAL + RESUMABLE
#: job types whose parties checkpoint (horizontal rounds keep none: such a run fails for good)
CHECKPOINTED_TYPES = ("vertical-lr", "secureboost")
_COLUMNS = ("run_id, name, type, status, created, started, ended, job_toml, flower_run_id, error, result_json, "
            "attempt")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    type: str
    status: str
    created: float
    started: float | None
    ended: float | None
    job_toml: str
    flower_run_id: str | None
    error: str | None
    result: dict[str, Any] | None
    attempt: int = 1  # 1 for the submitted run, n+1 after each ``runs resume``

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "name": self.name,
            "type": self.type,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "flower_run_id": self.flower_run_id,
            "error": self.error,
            "result": self.result,
            "attempt": self.attempt,
        }


class Registry:
    """Thin, process-safe access to the registry database."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.executescript(SCHEMA)
            cols = {r[1] for r in c.execute("PRAGMA table_info(runs)")}
            if "attempt" not in cols:  # a registry written before resumable runs
                c.execute("ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1")

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA busy_timeout=30000")
            yield c
        finally:
            c.close()

    # ------------------------------------------------------------------ runs
    def create_run(self, name: str, type_: str, job_toml: str) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        with self._conn() as c:
            c.execute(
                "INSERT INTO runs (run_id, name, type, status, created, job_toml) VALUES (?,?,?,?,?,?)",
                (run_id, name, type_, "queued", time.time(), job_toml),
            )
        return run_id

    def set_flower_run(self, run_id: str, flower_run_id: str) -> None:
        with self._conn() as c:
            c.execute("UPDATE runs SET flower_run_id=? WHERE run_id=?", (flower_run_id, run_id))

    def mark_running(self, run_id: str) -> None:
        with self._conn() as c:
            c.execute(
                "UPDATE runs SET status='running', started=? WHERE run_id=? AND status='queued'", (time.time(), run_id)
            )

    def finish(self, run_id: str, result: dict[str, Any]) -> None:
        with self._conn() as c:
            c.execute(
                "UPDATE runs SET status='finished', ended=?, result_json=? WHERE run_id=? AND status IN ('queued','running')",
                (time.time(), json.dumps(result), run_id),
            )

    def fail(self, run_id: str, error: str, result: dict[str, Any] | None = None) -> None:
        with self._conn() as c:
            c.execute(
                "UPDATE runs SET status='failed', ended=?, error=?, result_json=COALESCE(?, result_json) "
                "WHERE run_id=? AND status IN ('queued','running')",
                (time.time(), error, json.dumps(result) if result is not None else None, run_id),
            )

    def interrupt(self, run_id: str, reason: str) -> None:
        """This attempt ended, the parties keep their checkpoints: the run waits for ``runs resume``."""
        with self._conn() as c:
            c.execute(
                "UPDATE runs SET status='interrupted', ended=?, error=? WHERE run_id=? AND status IN ('queued','running')",
                (time.time(), reason, run_id),
            )

    def fail_interrupted(self, reason: str) -> list[str]:
        """At start-up: runs that were active when the coordinator stopped.  Vertical runs become ``interrupted``
        (resumable from the parties' checkpoints), others ``failed``."""
        with self._conn() as c:
            rows = list(c.execute("SELECT run_id, type FROM runs WHERE status IN ('queued','running')"))
        for rid, type_ in rows:
            if type_ in CHECKPOINTED_TYPES:
                self.interrupt(rid, f"{reason}; resumable: fedcredit runs resume {rid}")
            else:
                self.fail(rid, reason)
        return [r[0] for r in rows]

    def resume(self, run_id: str) -> RunRecord:
        """Queue an interrupted run again as its next attempt; ConfigError says why a run cannot be resumed."""
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute(f"SELECT {_COLUMNS} FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                c.execute("ROLLBACK")
                raise ConfigError(f"no run '{run_id}'")
            rec = _record(row)
            why = _not_resumable(rec)
            if why:
                c.execute("ROLLBACK")
                raise ConfigError(why)
            # flower_run_id cleared: the coordinator's monitor must not judge the new attempt by the old Flower run
            c.execute("UPDATE runs SET status='queued', ended=NULL, error=NULL, flower_run_id=NULL, "
                      "attempt=attempt+1 WHERE run_id=?", (run_id,))
            c.execute("COMMIT")
        got = self.get(run_id)
        assert got is not None
        return got

    def get(self, run_id: str) -> RunRecord | None:
        with self._conn() as c:
            row = c.execute(f"SELECT {_COLUMNS} FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _record(row) if row else None

    def list(self, limit: int = 50) -> list[RunRecord]:
        with self._conn() as c:
            rows = c.execute(f"SELECT {_COLUMNS} FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_record(r) for r in rows]

    def job_parties(self, session: str) -> frozenset[str] | None:
        """The parties of the run's job while the run is active and ``session`` is its current attempt, else None.

        Why: the relay's session id is the run id (``<run id>.a<n>`` for attempt n >= 2,
        :func:`fedcredit.checkpoint.attempt_session`), and only the parties a job names may
        join its session or receive its frames; a finished, failed, interrupted or unknown
        run — or an earlier attempt of a resumed one — has no members, so an old session
        (and anything still queued in it) cannot be reopened.
        """
        parsed = parse_session(session)
        if parsed is None:
            return None
        run_id, attempt = parsed
        with self._conn() as c:
            row = c.execute("SELECT status, job_toml, attempt FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None or row[0] not in ACTIVE or int(row[2]) != attempt:
            return None
        try:
            return frozenset(parse_job_text(row[1], f"run {run_id}").job.parties)
        except ConfigError:
            return None  # stored before a schema change; such a run cannot be joined

    # ------------------------------------------------------------------ events
    def add_event(self, run_id: str, data: dict[str, Any]) -> int:
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id=?", (run_id,)).fetchone()[0]
            c.execute(
                "INSERT INTO events (run_id, seq, time, data_json) VALUES (?,?,?,?)",
                (run_id, seq, time.time(), json.dumps(data)),
            )
            c.execute("COMMIT")
        return int(seq)

    def events(self, run_id: str, after_seq: int = 0) -> builtins.list[tuple[int, float, dict[str, Any]]]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT seq, time, data_json FROM events WHERE run_id=? AND seq>? ORDER BY seq", (run_id, after_seq)
            ).fetchall()
        return [(int(s), float(t), json.loads(d)) for s, t, d in rows]

    # ------------------------------------------------------------------ nodes
    def set_node(self, party: str, node_id: str) -> None:
        with self._conn() as c:
            c.execute(
                "INSERT INTO nodes (party, node_id, registered) VALUES (?,?,?) "
                "ON CONFLICT(party) DO UPDATE SET node_id=excluded.node_id, registered=excluded.registered",
                (party, node_id, time.time()),
            )

    def nodes(self) -> dict[str, str]:
        with self._conn() as c:
            return {p: n for p, n in c.execute("SELECT party, node_id FROM nodes")}

    # ------------------------------------------------------------------ liveness
    def touch(self, party: str, interval_s: float, when: float | None = None) -> None:
        """Record a heartbeat from ``party`` (named by its certificate; see coordinator/liveness.py).

        Why in the registry: the ServerApp runs in its own process and must see liveness
        to fail a run whose party went silent; the database is what both processes share.
        """
        with self._conn() as c:
            c.execute(
                "INSERT INTO liveness (party, last_seen, interval_s) VALUES (?,?,?) "
                "ON CONFLICT(party) DO UPDATE SET last_seen=excluded.last_seen, interval_s=excluded.interval_s",
                (party, time.time() if when is None else when, interval_s),
            )

    def last_seen(self) -> dict[str, tuple[float, float]]:
        """party -> (unix time of its last heartbeat, the interval it announced)."""
        with self._conn() as c:
            return {p: (float(t), float(i)) for p, t, i in c.execute("SELECT party, last_seen, interval_s FROM liveness")}


    # ------------------------------------------------------------------ Flower's own view of the SuperNodes
    def forget_supernodes(self) -> None:
        """At start-up, before the front door opens: no SuperNode has been heard by the SuperLink just started.

        Why: the SuperLink keeps its nodes (and each one's ``online_until``) in its database, so right
        after a restart it lists a node as online on the strength of a heartbeat the *previous* process
        received, until that expires.  A SuperNode that lost the old SuperLink retries its heartbeat with
        a back-off of up to 20 s (flwr 1.41), so a job sent meanwhile came back "Node Unavailable".
        """
        with self._conn() as c:
            c.execute("DELETE FROM supernode_heard")

    def supernode_heard(self, party: str) -> None:
        """The SuperLink accepted an activation or a heartbeat from ``party``'s SuperNode (seen by the front door)."""
        with self._conn() as c:
            c.execute("INSERT INTO supernode_heard (party, at) VALUES (?,?) "
                      "ON CONFLICT(party) DO UPDATE SET at=excluded.at", (party, time.time()))

    def supernodes_heard(self) -> set[str]:
        """Parties whose SuperNode the running SuperLink has heard since it started."""
        with self._conn() as c:
            return {p for (p,) in c.execute("SELECT party FROM supernode_heard")}


def _record(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        name=row[1],
        type=row[2],
        status=row[3],
        created=row[4],
        started=row[5],
        ended=row[6],
        job_toml=row[7],
        flower_run_id=row[8],
        error=row[9],
        result=json.loads(row[10]) if row[10] else None,
        attempt=int(row[11]),
    )


def _not_resumable(rec: RunRecord) -> str | None:
    """Why ``rec`` cannot be resumed (None: it can)."""
    if rec.type not in CHECKPOINTED_TYPES:
        return (f"run '{rec.run_id}' is a {rec.type} job: its parties keep no checkpoints, so it cannot be resumed "
                "(submit the job again)")
    if rec.status == "finished":
        return f"run '{rec.run_id}' finished; there is nothing to resume"
    if rec.status in ACTIVE:
        return f"run '{rec.run_id}' is {rec.status} (attempt {rec.attempt}); only an interrupted run can be resumed"
    if rec.status == "failed":
        return f"run '{rec.run_id}' failed for good ({rec.error}); it cannot be resumed"
    return None
