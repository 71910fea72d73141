"""``fedcredit party jobs ...``: the party officer's view of the job ledger (pending, show, approve, reject).

Kept apart from cli.py because it is the party's own approval desk: it reads the
party config and ``<state_dir>/jobs/`` directly, on the party's machine, and never
talks to the coordinator.  A waiting job continues on its own once approved: the
ClientApp that is waiting for it polls the same ledger entry.
"""

from __future__ import annotations

import argparse
import getpass
import json
import time
from collections.abc import Callable
from typing import Any

from fedcredit.errors import ConfigError

__all__ = ["register_party_commands"]

_HELP = """\
Every job that touches this party's data is checked against its [policy] and recorded in
<state_dir>/jobs/ (one entry per run id, accepted once).  With approval = "manual" a job
waits here until an officer approves it; the approval binds to the job's digest (the
validated job spec + run id + the partners' certificate fingerprints), so a changed job
needs a new approval.  Every decision is a line in <state_dir>/audit.jsonl."""


def _ledger(args: argparse.Namespace) -> Any:
    from fedcredit.config import load_party_config
    from party.jobs import JobLedger

    return JobLedger(load_party_config(args.config))


def _review(ledger: Any, entry: Any) -> Any:
    """The entry's job checked against the policy as it is now (the digest does not depend on the policy)."""
    from fedcredit.jobs import parse_job
    from party.policy import review_job

    job = parse_job(entry.job_toml, f"job of run {entry.run_id}")
    review = review_job(ledger.config, job, entry.run_id, entry.peers)
    if review.digest != entry.digest:
        raise ConfigError(f"party '{ledger.party}': run '{entry.run_id}': the stored job does not match its digest "
                          f"({entry.digest[:16]}… recorded, {review.digest[:16]}… now); the ledger entry was altered")
    return review


def _t(v: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v)) if v else "-"


def _get(ledger: Any, run_id: str) -> Any:
    e = ledger.get(run_id)
    if e is None:
        raise ConfigError(f"party '{ledger.party}': no job with run id '{run_id}' in {ledger.root} "
                          "(see: fedcredit party jobs pending --all)")
    return e


def cmd_jobs_pending(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedcredit.progress import console

    ledger = _ledger(args)
    entries = ledger.list(None if args.all else "pending")
    if args.json:
        print(json.dumps([{"run_id": e.run_id, "status": e.status, "job_type": e.job_type, "parties": e.parties,
                           "digest": e.digest, "datasets": e.datasets, "created": e.created,
                           "expires_at": e.expires_at, "decided_by": e.decided_by} for e in entries], indent=1))
        return 0
    if not entries:
        print(f"no {'' if args.all else 'pending '}jobs at party '{ledger.party}'")
        return 0
    t = Table(title=f"jobs at party '{ledger.party}'" + ("" if args.all else " awaiting approval"))
    # the run id is what the officer types next: never truncated, whatever the terminal width (or a pipe)
    t.add_column("run", no_wrap=True, min_width=max(len(e.run_id) for e in entries))
    for col in ("status", "type", "parties", "datasets (columns)", "digest", "received", "expires / decided by"):
        t.add_column(col)
    for e in entries:
        ds = "; ".join(f"{k} ({len(v)})" for k, v in e.datasets.items())
        last = _t(e.expires_at) if e.status == "pending" else (e.decided_by or "-")
        t.add_row(e.run_id, e.status, e.job_type, ", ".join(e.parties), ds, e.digest[:16], _t(e.created), last)
    console.print(t)
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    e = _get(ledger, args.run_id)
    review = _review(ledger, e)
    if args.json:
        print(json.dumps({"run_id": e.run_id, "status": e.status, "digest": e.digest, "spec": review.canonical,
                          "datasets": [u.to_dict() | {"columns": u.columns} for u in review.uses],
                          "rules": [r.to_dict() for r in review.results], "decided_by": e.decided_by,
                          "reason": e.reason, "rule": e.rule, "calls": e.calls}, indent=1, sort_keys=True))
        return 0
    print(f"run {e.run_id} at party '{ledger.party}': {e.status}"
          + (f" (expires {_t(e.expires_at)})" if e.status == "pending" else "")
          + (f"; decided by {e.decided_by} at {_t(e.decided_at)}: {e.reason}" if e.decided_by else ""))
    print(f"digest: {e.digest}")
    print("partners' certificates (SHA-256):")
    for p, fp in sorted(e.peers.items()):
        print(f"  {p}: {fp}")
    print("datasets and columns this job would use:")
    for u in review.uses:
        label = f", label '{u.label_column}'" if u.label_column else ", no label"
        print(f"  {u.key} ({u.purpose}): id '{u.id_column}'{label}, {len(u.features)} features: {', '.join(u.features)}")
    if not review.uses:
        print("  (none could be determined; see the rules)")
    print("rules (the policy as it is now):")
    for r in review.results:
        print(f"  [{'pass' if r.ok else 'FAIL'}] {r.rule}: {r.detail}")
    print("approval: " + ("manual (an officer decides)" if ledger.config.policy.approval == "manual" else "auto"))
    print("job spec (validated; the digest covers it with the run id and the certificates above):")
    print(json.dumps(review.canonical["job"], indent=1, sort_keys=True))
    print("job as submitted:")
    print(e.job_toml.rstrip())
    return 0


def _who(args: argparse.Namespace) -> str:
    by = (args.by or "").strip()
    if not by:
        try:
            by = getpass.getuser()
        except (OSError, KeyError):  # no login name in this environment
            by = ""
    if not by:
        raise ConfigError("cannot tell who approves: pass --by NAME")
    return by


def cmd_jobs_approve(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    review = _review(ledger, _get(ledger, args.run_id))
    e = ledger.decide(args.run_id, approve=True, by=_who(args), review=review)
    print(f"approved run {e.run_id} (digest {e.digest[:16]}…) as {e.decided_by}; the waiting job continues")
    return 0


def cmd_jobs_reject(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    e = ledger.decide(args.run_id, approve=False, by=_who(args), reason=args.reason or "")
    print(f"rejected run {e.run_id} as {e.decided_by}: {e.reason}; the run fails naming this party")
    return 0


def register_party_commands(party_sub: Any) -> None:
    """Add ``jobs`` (pending/show/approve/reject) under ``fedcredit party``."""
    jobs = party_sub.add_parser(
        "jobs", help="jobs asking to use this party's data: pending, show, approve, reject",
        description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="jobs_cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="this party's config (party.toml)")

    p = jobs.add_parser("pending", help="jobs waiting for an officer's approval (--all: every job in the ledger)")
    common(p)
    p.add_argument("--all", action="store_true", help="every run id this party was asked about, with its state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs_pending)
    p = jobs.add_parser("show", help="a job's full spec, digest, the datasets/columns it would use and each rule")
    common(p)
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs_show)
    p = jobs.add_parser("approve", help="approve a pending job (it must pass every rule); records who approved")
    common(p)
    p.add_argument("run_id")
    p.add_argument("--by", help="who approves (default: your OS user name)")
    p.set_defaults(func=cmd_jobs_approve)
    p = jobs.add_parser("reject", help="reject a pending job; the run fails naming this party")
    common(p)
    p.add_argument("run_id")
    p.add_argument("--reason", help="why (recorded in the ledger and the audit log, and sent in the refusal)")
    p.add_argument("--by", help="who rejects (default: your OS user name)")
    p.set_defaults(func=cmd_jobs_reject)


# --------------------------------------------------------------------------- fedcredit runs resume


def register_runs_resume(runs: argparse.ArgumentParser) -> None:
    """``fedcredit runs resume <run id>``: positionals on ``runs`` (plain ``fedcredit runs`` still lists)."""
    runs.add_argument("action", nargs="?", choices=["resume"],
                      help="resume: start the next attempt of an interrupted vertical run from its checkpoints")
    runs.add_argument("run_id", nargs="?", help="the run to resume")
    runs.add_argument("--detach", action="store_true", help="with resume: return without following the run")


def cmd_runs_resume(args: argparse.Namespace, connect: Callable[[], Any]) -> int:
    """Resume an interrupted run and follow it like ``train`` does; exit 0 only if it finishes."""
    from fedcredit.progress import follow

    if not args.run_id:
        raise ConfigError("fedcredit runs resume: name the run to resume (see 'fedcredit runs' for interrupted ones)")
    client = connect()
    info = client.resume(args.run_id)
    print(f"resuming run {info.run_id} (attempt {info.attempt}); every party continues from its own checkpoints",
          flush=True)
    if args.detach:
        return 0
    info = follow(client.watch(info.run_id), lambda: client.get(info.run_id))
    return 0 if info.status == "finished" else 1
