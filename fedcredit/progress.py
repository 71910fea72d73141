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

__all__ = ["console", "err_console", "styled", "describe", "LiveProgress", "follow", "print_run", "print_result", "print_summary",
           "fmt_time"]

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
    """A rich progress bar fed with protocol events: ``with LiveProgress(console) as show: show(event)``."""

    def __init__(self, con: Console | None = None, first: str = "setting up") -> None:
        self.prog = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                             TextColumn("{task.completed}/{task.total}", markup=False),
                             TimeElapsedColumn(), console=con or console)
        self.first = first
        self.task: TaskID | None = None

    def __enter__(self) -> Callable[[Mapping[str, Any]], None]:
        self.prog.__enter__()
        self.task = self.prog.add_task(self.first, total=None)
        return self.show

    def show(self, ev: Mapping[str, Any]) -> None:
        assert self.task is not None
        desc, total, completed = describe(ev)
        if total is not None:
            self.prog.update(self.task, total=total, completed=completed)
        self.prog.update(self.task, description=desc)
        if ev.get("log"):
            self.prog.console.print(str(ev["log"]), markup=False, highlight=False)

    def __exit__(self, *exc: object) -> None:
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
    con.print(styled("run ", (info.run_id, "bold"), f"  {info.name} ({info.type})  status: ", (info.status, "bold")))
    con.print(f"  created {fmt_time(info.created)}  started {fmt_time(info.started)}  ended {fmt_time(info.ended)}",
              markup=False)
    if info.error:
        con.print(styled("  ", ("error:", "red"), " ", info.error))
    if result:
        print_result(result, con)


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
    if result.get("dropped"):
        for p, why in result["dropped"].items():
            con.print(styled("  ", ("dropped", "yellow"), f" {p}: {why}"))


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
    status = report.get("status", "finished")
    con.print(f"status: {status}  wall time: {report.get('wall_time_s')} s"
              + (f"  error: {report['error']}" if report.get("error") else ""), markup=False)


def _f(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"
