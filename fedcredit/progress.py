"""Rendering a run's progress events and results for a person (CLI and simulator).

Why one module: ``fedcredit train`` follows a run through the coordinator's event
stream, ``fedcredit simulate`` follows the same protocol events in-process; both
must show the same thing, so the rendering lives here once and both import it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

__all__ = ["console", "err_console", "styled", "describe", "LiveProgress", "follow", "print_run", "print_result",
           "print_summary", "print_reports", "print_parties", "liveness_text", "fmt_time"]

#: Piped to a file or a log, rich would squeeze tables into 80 columns and cut run ids; use a wide page there.
#: Markup is off on both: our messages quote config sections (``[coordinator].relay_port``, ``[[parties]]``)
#: and user-supplied names, which rich would otherwise parse as tags and drop.  Styling goes through
#: ``style=`` / :func:`styled`, never through text.
console = Console(width=None if sys.stdout.isatty() else 200, markup=False, highlight=False)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False, highlight=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line built from plain strings and ``(text, style)`` pairs; nothing in it is parsed as markup."""
    return Text.assemble(*parts)

PARTY_COLUMNS = ("role", "auc", "ks", "n_test", "n_train", "intersection_size", "total_s", "status")


def fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def describe(ev: Mapping[str, Any]) -> tuple[str, int | None, int | None]:
    """(one-line description, total, completed) of a protocol progress event."""
    desc = str(ev.get("message") or ev.get("event", ""))
    total = completed = None
    if "round" in ev and "rounds" in ev:
        total, completed = int(ev["rounds"]), int(ev["round"])
        desc = f"round {completed}/{total}"
    parties = ev.get("parties")
    if isinstance(parties, dict):
        desc += "  " + " ".join(f"{p}:{s.get('status', '?') if isinstance(s, dict) else s}" for p, s in parties.items())
    metrics = ev.get("metrics")
    if isinstance(metrics, dict):
        desc += "  " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    return desc, total, completed


class LiveProgress:
    """A rich progress bar fed with protocol events: ``with LiveProgress(console) as show: show(event)``.

    On a terminal it is one live bar.  Piped to a file or a log, rich draws nothing until
    the bar stops (a live display needs a terminal), so a long run printed nothing at all
    for minutes; there each new state is one timestamped line instead, flushed at once.
    """

    def __init__(self, con: Console | None = None, first: str = "setting up") -> None:
        self.con = con or console
        self.prog = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                             TextColumn("{task.completed}/{task.total}", markup=False),
                             TimeElapsedColumn(), console=self.con)
        self.first = first
        self.task: TaskID | None = None
        self.lines = not self.con.is_terminal
        self._last = ""
        self._t0 = time.monotonic()

    def __enter__(self) -> Callable[[Mapping[str, Any]], None]:
        if self.lines:
            self._line(self.first)
            return self.show
        self.prog.__enter__()
        self.task = self.prog.add_task(self.first, total=None)
        return self.show

    def _line(self, text: str) -> None:
        if text and text != self._last:  # one line per change, not one per repeated "waiting" event
            self._last = text
            self.con.print(f"[{time.monotonic() - self._t0:6.1f} s] {text}", markup=False, highlight=False)
            self.con.file.flush()

    def show(self, ev: Mapping[str, Any]) -> None:
        desc, total, completed = describe(ev)
        if self.lines:
            self._line(desc)
            if ev.get("log"):
                self.con.print(ev["log"], markup=False, highlight=False)
            return
        assert self.task is not None
        if total is not None:
            self.prog.update(self.task, total=total, completed=completed)
        self.prog.update(self.task, description=desc)
        if ev.get("log"):
            self.prog.console.print(str(ev["log"]), markup=False, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if not self.lines:
            self.prog.__exit__(None, None, None)


def follow(events: Iterable[Any], fetch_final: Callable[[], Any], con: Console | None = None) -> Any:
    """Show live progress from a run's event stream (``ControlClient.watch``) until the run ends.

    ``events`` yields control-service ``RunEvent`` messages; the one carrying ``run`` ends
    the stream.  Returns the final ``RunInfo`` (``fetch_final()`` if the stream ended early).
    """
    final = None
    with LiveProgress(con, "waiting for parties") as show:
        for ev in events:
            if ev.HasField("run"):
                final = ev.run
                break
            show(json.loads(ev.data_json))
    if final is None:
        final = fetch_final()
    print_run(final, con)
    return final


def print_run(info: Any, con: Console | None = None) -> None:
    """A run record (``RunInfo``): status, times, error and its public result."""
    con = con or console
    result = json.loads(info.result_json) if info.result_json else None
    attempt = int(getattr(info, "attempt", 0) or 0)
    con.print(styled("run ", (info.run_id, "bold"), f"  {info.name} ({info.type})  status: ", (info.status, "bold"),
                     f"  (attempt {attempt})" if attempt > 1 else ""))
    con.print(f"  created {fmt_time(info.created)}  started {fmt_time(info.started)}  ended {fmt_time(info.ended)}",
              markup=False)
    if info.error:
        con.print(styled("  ", ("error:", "red"), " ", info.error))
    if info.parties:  # GetRun carries the job's parties' liveness (heartbeats), as the coordinator sees it now
        con.print("  parties: " + ", ".join(f"{p.name} {liveness_text(p)}" for p in info.parties), markup=False,
                  highlight=False)
    if result:
        print_result(result, con)


def liveness_text(p: Any) -> str:
    """A ``PartyLiveness``: ``live (seen 1 s ago)``, ``NOT LIVE (last seen 42 s ago)`` or ``never seen``."""
    if p.state == "never":
        return "never seen"
    ago = f"{p.age_s:.0f} s ago"
    return f"live (seen {ago})" if p.state == "live" else f"NOT LIVE (last seen {ago})"


def print_parties(reply: Any, con: Console | None = None) -> None:
    """``fedcredit parties``: every party the coordinator knows, with its liveness (``ListPartiesReply``)."""
    con = con or console
    t = Table(title=f"parties (not live after {reply.liveness_timeout_s:g} s without a heartbeat)")
    t.add_column("party", no_wrap=True)
    for col in ("liveness", "last heartbeat", "interval"):
        t.add_column(col)
    for p in reply.parties:
        t.add_row(p.name, liveness_text(p), fmt_time(p.last_seen), f"{p.interval_s:g} s" if p.interval_s else "-")
    con.print(t)


def print_result(result: Mapping[str, Any], con: Console | None = None) -> None:
    """The public result of a run: global test metrics, per-party table, dropped parties."""
    con = con or console
    g = result.get("global") or {}
    if g:
        con.print("  global test: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in g.items()),
                  markup=False)
    parties = result.get("parties") or {}
    if parties:
        t = Table(title="per-party (public metrics)")
        present = {k for m in parties.values() if isinstance(m, dict) for k in m}
        keys = [k for k in PARTY_COLUMNS if k in present]
        t.add_column("party")
        for k in keys:
            t.add_column(k)
        for p, m in parties.items():
            t.add_row(p, *[f"{m.get(k):.4f}" if isinstance(m.get(k), float) else str(m.get(k, "")) for k in keys])
        con.print(t)
    print_reports(parties, con)
    if result.get("dropped"):
        for p, why in result["dropped"].items():
            con.print(styled("  ", ("dropped", "yellow"), f" {p}: {why}"))


def print_reports(parties: Mapping[str, Any], con: Console | None = None) -> None:
    """Where each party wrote its run report (fedcredit/report.py): a path under that party's own state dir."""
    con = con or console
    reports = {p: m["report"] for p, m in parties.items() if isinstance(m, dict) and isinstance(m.get("report"), str)}
    if reports:
        con.print("  reports (each at its own party, under its state dir):", markup=False)
        for p, path in reports.items():
            con.print(f"    {p}: <state_dir>/{path}", markup=False, highlight=False)


def print_summary(report: Mapping[str, Any], con: Console | None = None) -> None:
    """The simulator's closing table: per-party and global test AUC/KS, status and wall time."""
    con = con or console
    t = Table(title=f"summary ({report.get('mode')})")
    for col in ("who", "test AUC", "test KS", "n test"):
        t.add_column(col)
    g = report.get("global") or {}
    for p, m in (report.get("parties") or {}).items():
        if isinstance(m, dict):
            t.add_row(p, _f(m.get("auc")), _f(m.get("ks")), str(m.get("n_test", "")))
    t.add_row(Text("global (all banks' test rows)", style="bold"), _f(g.get("auc")), _f(g.get("ks")), str(g.get("n_test", "")))
    con.print(t)
    files = report.get("report_files")
    if files:  # a simulation knows where every party's state dir is
        con.print("  reports:", markup=False)
        for p, path in files.items():
            con.print(f"    {p}: {path}", markup=False, highlight=False)
    else:
        print_reports(report.get("parties") or {}, con)
    status = report.get("status", "finished")
    con.print(f"status: {status}  wall time: {report.get('wall_time_s')} s"
              + (f"  error: {report['error']}" if report.get("error") else ""), markup=False)


def _f(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"
