"""Starting and supervising the Flower daemons we run (SuperLink at the coordinator, SuperNode at a party).

Why here: both daemons need the same process plumbing, and a bank's installation must
not import the coordinator package to get it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from fedcredit.errors import FedCreditError

__all__ = ["find_executable", "flower_env", "stop_process_group", "supervise"]


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
