"""The app guard's pieces: the expected app is what ``flwr`` builds, foreign bundles are refused, and the
SuperNode's environment resolves every task command to the guard (the end-to-end attack is in
tests/test_e2e_partyguard.py)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fedcredit.control_plane import APP_DIR, build_app_fab
from party import appguard
from party.appguard import AppRefused, check_fab, installed_app


def test_expected_app_is_byte_identical_to_what_flwr_run_submits(tmp_path: Path) -> None:
    """``flwr run <dir>`` submits ``build_fab_from_disk(dir)`` (flwr/cli/run/run.py); we call the same builder, and
    it is deterministic across processes, copies and file times — so coordinator and party get the same bytes."""
    import importlib

    run_module = importlib.import_module("flwr.cli.run.run")
    assert run_module.build_fab_from_disk is importlib.import_module("flwr.cli.build").build_fab_from_disk
    copy = tmp_path / "elsewhere" / "flower_app"
    shutil.copytree(APP_DIR, copy)
    os.utime(copy / "pyproject.toml", (1_000_000_000, 1_000_000_000))
    out = subprocess.run([sys.executable, "-c", "import hashlib, sys; from pathlib import Path; "
                          "from flwr.cli.build import build_fab_from_disk; "
                          "print(hashlib.sha256(build_fab_from_disk(Path(sys.argv[1]))).hexdigest())", str(copy)],
                         capture_output=True, text=True, timeout=120, check=True)
    app = installed_app()
    assert out.stdout.strip() == app.sha256
    assert app.members == ("pyproject.toml", ".info/CONTENT")  # no code of its own: only the descriptor


def _fab(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_foreign_bundles_are_refused_naming_what_and_why() -> None:
    app = installed_app()
    own = build_app_fab()
    assert check_fab(own, app, party="bank1") == app.sha256

    with zipfile.ZipFile(io.BytesIO(own)) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    shadow = _fab({**files, "party/clientapp.py": b"import os; os.system('id')\n"})
    with pytest.raises(AppRefused, match=r"party 'bank1' refused: app [0-9a-f]{64} is not the installed fedcredit "
                                         r"app " + app.sha256 + r" \(it carries files .*party/clientapp.py"):
        check_fab(shadow, app, party="bank1")

    tweaked = _fab({**files, "pyproject.toml": files["pyproject.toml"].replace(b"party.clientapp", b"evil.clientapp")})
    with pytest.raises(AppRefused, match="same file names, different content"):
        check_fab(tweaked, app, party="bank1")

    with pytest.raises(AppRefused, match="not a readable app bundle"):
        check_fab(b"not a zip", app, party="bank1")


def test_every_flwr_task_command_is_covered() -> None:
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    assert sorted(TASK_TYPE_TO_COMMAND.values()) == sorted(appguard.TASK_COMMANDS)


def test_supernode_environment_resolves_every_task_command_to_the_guard(tmp_path: Path) -> None:
    planted = tmp_path / "bin" / "flower-superexec"
    planted.parent.mkdir(mode=0o700)
    planted.write_text("#!/bin/sh\necho planted\n")
    planted.chmod(0o700)
    bindir = appguard.prepare_bin_dir(tmp_path)
    assert not planted.exists()  # only the guard's own commands sit first on the PATH
    env = appguard.guard_env(bindir, base_path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
                             party="bank1", audit_log=tmp_path / "audit.jsonl", app=installed_app())
    for cmd in appguard.TASK_COMMANDS:
        assert shutil.which(cmd, path=env["PATH"]) == str(bindir / cmd)
        assert (bindir / cmd).stat().st_mode & 0o777 == 0o700
    assert shutil.which("flower-superexec", path=env["PATH"]) == str(Path(sys.executable).parent / "flower-superexec")


def test_guard_fails_closed_without_its_expected_app(tmp_path: Path) -> None:
    """Started without what to check against, the wrapper runs nothing (and never reaches flwr's loop)."""
    bindir = appguard.prepare_bin_dir(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDCREDIT_GUARD_")}
    out = subprocess.run([str(bindir / "flwr-clientapp"), "--runtime-api-address", "127.0.0.1:9", "--token", "x"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "refusing to run any task" in out.stderr


def test_task_command_reimported_as_a_worker_main_runs_nothing(tmp_path: Path) -> None:
    """The task command is the ClientApp process's ``__main__``; the compute pool's forkserver and workers
    re-import it as ``__mp_main__`` (runpy.run_path) before they run anything.  That re-import must run
    nothing: unguarded it started a second flwr-clientapp there, which exited and broke the pool."""
    bindir = appguard.prepare_bin_dir(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDCREDIT_GUARD_")}  # main() would refuse, rc 2
    for cmd in appguard.TASK_COMMANDS:
        code = f"import runpy; runpy.run_path({str(bindir / cmd)!r}, run_name='__mp_main__'); print('imported')"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert (out.returncode, out.stdout.strip(), out.stderr) == (0, "imported", ""), (cmd, out)
