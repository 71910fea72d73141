"""A party runs only the fedcredit app installed in its own environment.

The attack: Flower hands every SuperNode whatever app bundle (FAB) a run was started
with, and its ``flwr-clientapp`` installs it and imports the ClientApp from it, with
the bundle's directory first on ``sys.path`` — so a bundle shipping its own
``party/clientapp.py`` would even shadow ours.  Whoever can start a run (the
coordinator, or anyone who reaches its Control API) could run code inside the bank.
Signatures do not help: the coordinator holds the federation's keys.

The defence: at start-up the party daemon builds, with flwr's own builder, the FAB of
its *own installed* app descriptor (:func:`fedcredit.control_plane.build_app_fab`;
the builder is deterministic, so it is byte-identical to the one the coordinator's
``flwr run`` submits for the same fedcredit/flwr versions).  The SuperNode runs with
a private bin directory first on its ``PATH`` (:func:`prepare_bin_dir`), so the
``flower-superexec`` it starts resolves every task command (``flwr-clientapp``,
``flwr-agentapp``, ...) to :func:`main` here.  :func:`main` runs flwr's own
``flwr-clientapp`` loop with one change: before flwr installs the bundle it checks the
actual bytes (member list, then sha256) against the expected app.  Anything else is
refused: an audit-log line (run id, FAB hash, expected hash), and an error reply —
raised inside flwr's loop after it pulled the task's message, so flwr itself answers
the SuperNode with an ``Error`` naming the party and the refusal (the run fails
promptly instead of the SuperNode waiting for a reply).  Each task gets a fresh
``FLWR_HOME``, because flwr reuses an installed app directory by name without
checking its content, and runtime dependency installation is always off.

Why PATH + wrapper rather than ``--isolation process`` with our own launcher: the
launcher would see only the hash the SuperLink *claims* (``task.fab_hash``; the
SuperNode never recomputes it), so it would still have to pull the task input and
push an error reply — i.e. do everything this wrapper does — while re-implementing
flwr's task-acquisition loop and its parent-death handling.  The wrapper checks the
real bytes and reuses flwr's loop unchanged.  The PATH resolution it relies on is
covered by tests (tests/test_appguard.py: a foreign app submitted by the coordinator
is refused at every party; the SuperNode's environment resolves every task command
to the wrapper).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from crypto.files import write_file
from fedcredit.control_plane import build_app_fab
from fedcredit.errors import SecurityError
from party.audit import AuditLog

__all__ = ["InstalledApp", "AppRefused", "installed_app", "check_fab", "prepare_bin_dir", "guard_env", "main"]

#: Every command flwr's SuperExec may start for a task (flwr.supercore.constant.TASK_TYPE_TO_COMMAND);
#: all of them resolve to the guard, so no task type can slip past it.  Checked against flwr by a test.
TASK_COMMANDS = ("flwr-clientapp", "flwr-agentapp", "flwr-connector", "flwr-model", "flwr-serverapp", "flwr-simulation")

ENV_PARTY = "FEDCREDIT_GUARD_PARTY"
ENV_AUDIT = "FEDCREDIT_GUARD_AUDIT_LOG"
ENV_SHA256 = "FEDCREDIT_GUARD_APP_SHA256"
ENV_MEMBERS = "FEDCREDIT_GUARD_APP_MEMBERS"
AUDIT_TAG = "refused-app"


class AppRefused(SecurityError):
    """The app bundle a run carries is not this party's installed fedcredit app."""


@dataclass(frozen=True)
class InstalledApp:
    """What this party accepts: the FAB of its own installed app descriptor."""

    sha256: str
    members: tuple[str, ...]


def _members(fab: bytes) -> tuple[str, ...]:
    with zipfile.ZipFile(io.BytesIO(fab)) as zf:
        return tuple(zf.namelist())


def installed_app() -> InstalledApp:
    """Build this environment's fedcredit app with flwr's builder; its hash and file list."""
    fab = build_app_fab()
    return InstalledApp(hashlib.sha256(fab).hexdigest(), _members(fab))


def check_fab(fab: bytes, expected: InstalledApp, *, party: str) -> str:
    """The bundle's sha256 if it is exactly the installed app; :class:`AppRefused` otherwise.

    The member list is checked first only to say *what* is foreign; the sha256 decides.
    """
    got = hashlib.sha256(fab).hexdigest()
    prefix = f"party '{party}' refused: app {got} is not the installed fedcredit app {expected.sha256}"
    try:
        members = _members(fab)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise AppRefused(f"{prefix} (not a readable app bundle: {exc})") from None
    extra = sorted(set(members) - set(expected.members))
    if extra:
        raise AppRefused(f"{prefix} (it carries files the installed app does not have: {', '.join(extra[:10])})")
    if got != expected.sha256:
        raise AppRefused(f"{prefix} (same file names, different content: another app or another fedcredit/flwr version)")
    return got


def prepare_bin_dir(state_dir: Path) -> Path:
    """``<state_dir>/bin``: every task command flwr may start, each resolving to :func:`main` (owner-only)."""
    bindir = Path(state_dir) / "bin"
    bindir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(bindir, 0o700)
    for entry in bindir.iterdir():  # nothing else may sit first on the SuperNode's PATH (e.g. a planted flower-superexec)
        if entry.name in TASK_COMMANDS:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    # The guard: this script is the ``__main__`` of Flower's ClientApp process, and the forkserver of the party's
    # compute pool (fedcredit.compute, engine "processes") re-imports a program's ``__main__`` — in the forkserver
    # and in every worker — before it runs anything.  Unguarded, that re-import ran a second ``flwr-clientapp``
    # there, which exited (no task token) and took the forkserver with it: the first submit broke its pipe.
    script = (f"#!{sys.executable}\nimport sys\nfrom party.appguard import main\n\n"
              "if __name__ == \"__main__\":  # re-imported by worker processes (fedcredit.compute): run nothing\n"
              "    sys.exit(main())\n").encode()
    for cmd in TASK_COMMANDS:
        write_file(bindir / cmd, script, 0o700)
    return bindir


def guard_env(bindir: Path, *, base_path: str, party: str, audit_log: Path, app: InstalledApp) -> dict[str, str]:
    """Environment entries for the SuperNode: the guard's bin dir first on PATH and what it checks against."""
    return {
        "PATH": str(bindir) + os.pathsep + base_path,
        ENV_PARTY: party,
        ENV_AUDIT: str(audit_log),
        ENV_SHA256: app.sha256,
        ENV_MEMBERS: "\n".join(app.members),
        "FLWR_TELEMETRY_ENABLED": "0",  # nothing at a bank phones home
    }


def _record_refusal(env: Mapping[str, str], party: str, fab: bytes, expected: str, reason: str) -> None:
    from flwr.supercore.task_identity import TaskIdentity  # set by flwr's pull_task_input before the install step

    log = AuditLog(env[ENV_AUDIT])
    try:
        log.record_event(
            AUDIT_TAG,
            session=str(TaskIdentity.run_id or ""),
            party=party,
            size=len(fab),
            sha256=hashlib.sha256(fab).hexdigest(),
            expected_sha256=expected,
            reason=reason,
        )
    finally:
        log.close()


def main() -> int:
    """Entry point of every task command in the guard's bin dir (see the module docstring)."""
    import flwr.supernode.runtime.run_clientapp as rc
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    env = os.environ
    missing = [k for k in (ENV_PARTY, ENV_AUDIT, ENV_SHA256, ENV_MEMBERS) if not env.get(k)]
    if missing or not hasattr(rc, "install_from_fab"):
        # fail closed: without what to check against (or flwr's hook point), nothing runs
        print(f"fedcredit app guard: refusing to run any task (missing {missing or 'flwr hook install_from_fab'})",
              file=sys.stderr)
        return 2
    party = env[ENV_PARTY]
    expected = InstalledApp(env[ENV_SHA256], tuple(env[ENV_MEMBERS].split("\n")))
    real_install = rc.install_from_fab

    def verified_install(fab_file: Path | bytes, install_dir: Path | None = None, skip_prompt: bool = False) -> Path:
        fab = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        try:
            check_fab(fab, expected, party=party)
        except AppRefused as exc:
            _record_refusal(env, party, fab, expected.sha256, str(exc))
            raise
        return real_install(fab, install_dir, skip_prompt)

    rc.install_from_fab = verified_install  # flwr's loop calls it after pulling the message, before any app code
    home = tempfile.mkdtemp(prefix="fedcredit-flwr-home-")  # fresh per task: flwr reuses installed dirs by name
    atexit.register(shutil.rmtree, home, True)
    os.environ["FLWR_HOME"] = home
    # runtime dependency installation (uv sync of the bundle's dependencies) is never allowed at a party
    sys.argv = ["flwr-clientapp", *(a for a in sys.argv[1:] if a != "--allow-runtime-dependency-installation")]
    flwr_clientapp()
    return 0


if __name__ == "__main__":
    sys.exit(main())
