"""Starting and supervising the Flower daemons we run (SuperLink at the coordinator, SuperNode at a party).

Why here: both daemons need the same process plumbing, and a bank's installation must
not import the coordinator package to get it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from fedcredit.errors import FedCreditError

__all__ = ["find_executable", "flower_env", "spawn_daemon", "die_with_parent", "stop_process_group", "supervise"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def find_executable(name: str) -> str:
    """Flower's executables live next to the running interpreter (venv/bin)."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise FedCreditError(f"'{name}' not found: is flwr installed in this environment?")
    return found


def flower_env(**extra: str) -> dict[str, str]:
    """Environment for Flower processes: its helper executables (flower-superexec,
    flwr-serverapp, flwr-clientapp) are spawned by name, so our venv's bin dir
    must be on PATH even when fedcredit was started by absolute path."""
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Why: a daemon killed with SIGKILL (or crashing) runs no cleanup, and a Flower process
    in its own session would live on as an orphan still holding the party's node.  The
    kernel delivers the signal even then.  SIGKILL by default: a SuperNode whose daemon is
    gone has nothing to flush, and its own children (flower-superexec, flwr-clientapp)
    watch their ``--parent-pid`` and stop within a fraction of a second.  Everything is
    resolved before the fork, so the child runs no imports (safe with threads).  ``None``
    (no hook) off Linux, where only the process-group stop applies.  Note: the "parent" is
    the *thread* that started the child, so call :func:`spawn_daemon` from a long-lived thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, signum = os.getpid(), int(sig)

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before the hook was in place
            os._exit(125)

    return preexec


def spawn_daemon(cmd: Sequence[str], *, log: IO[bytes], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start a Flower daemon in its own session (one group to stop) that dies with this process."""
    return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(env), preexec_fn=die_with_parent())


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Terminate a daemon we started in its own session (and everything it spawned)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def supervise(proc: subprocess.Popen[bytes], what: str, log_path: Path) -> int:
    """Foreground loop of a daemon: 0 after SIGINT/SIGTERM, 1 if the Flower process it runs dies."""
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if proc.poll() is not None:
            print(f"{what} exited with code {proc.returncode}; see {log_path}", file=sys.stderr, flush=True)
            return 1
    return 0
