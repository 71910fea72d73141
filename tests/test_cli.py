"""The ``fedcredit`` command line as a user meets it: the profile, ``--version``, and messages printed intact.

Run as subprocesses (the real entry point, real environment variables) except where a
function is the thing under test (:func:`fedcredit.profile.resolve_connection`).
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from crypto.certs import init_ca, issue
from fedcredit import __version__
from fedcredit.errors import ConfigError
from fedcredit.profile import load_profile, profile_path, resolve_connection

ENV_KEYS = ("FEDCREDIT_CONTROL", "FEDCREDIT_IDENTITY_DIR", "FEDCREDIT_NAME", "FEDCREDIT_PROFILE", "XDG_CONFIG_HOME")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(HOME=str(tmp_path / "home"), **extra)
    return env


def _cli(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcredit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_version(tmp_path: Path) -> None:
    proc = _cli(["--version"], _env(tmp_path))
    assert proc.returncode == 0 and proc.stdout.strip() == f"fedcredit {__version__}"


def test_no_connection_configured_says_how_to_set_one(tmp_path: Path) -> None:
    for cmd in (["runs"], ["status", "some-run"]):
        proc = _cli(cmd, _env(tmp_path))
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "no CLI connection configured" in proc.stderr
        assert "fedcredit login --control HOST:PORT --identity-dir DIR" in proc.stderr
        assert "FEDCREDIT_CONTROL" in proc.stderr


def test_login_writes_the_profile_in_the_xdg_place_and_commands_use_it(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "certs" / "ca", "cli-test")
    issue(ca, tmp_path / "certs" / "operator", "operator", role="operator")
    env = _env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = _cli(["login", "--control", "127.0.0.1:1", "--identity-dir", "certs/operator", "--no-check"], env,
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    prof_file = tmp_path / "xdg" / "fedcredit" / "profile.toml"
    assert str(prof_file) in proc.stdout
    assert stat.S_IMODE(prof_file.stat().st_mode) == 0o600
    prof = load_profile(prof_file)
    assert prof is not None and prof.control == "127.0.0.1:1"
    assert prof.identity_dir == (tmp_path / "certs" / "operator").resolve()  # absolute: works from any directory
    # `runs` now needs no flag: it reads the profile and dials its address (nothing listens on port 1)
    proc = _cli(["runs"], env)
    assert proc.returncode == 2 and "cannot reach the coordinator control service at 127.0.0.1:1" in proc.stderr, (
        proc.stderr)


def test_login_refuses_a_non_operator_certificate(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", "cli-test")
    issue(ca, tmp_path / "bank1", "bank1")
    env = _env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = _cli(["login", "--control", "127.0.0.1:1", "--identity-dir", str(tmp_path / "bank1"), "--name", "bank1",
                 "--no-check"], env)
    assert proc.returncode == 2 and "has role 'party'" in proc.stderr and "--role operator" in proc.stderr
    assert not (tmp_path / "xdg" / "fedcredit" / "profile.toml").exists()


def test_flags_beat_env_beat_job_beat_profile(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = clean_env
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp / "xdg"))
    assert profile_path() == tmp / "xdg" / "fedcredit" / "profile.toml"
    with pytest.raises(ConfigError, match="no CLI connection configured"):
        resolve_connection()
    prof = profile_path()
    prof.parent.mkdir(parents=True)
    prof.write_text('control = "profile:1"\nidentity_dir = "/p"\nname = "prof-op"\n')
    c = resolve_connection()
    assert (c.control, c.identity_dir, c.name) == ("profile:1", Path("/p"), "prof-op")
    job = SimpleNamespace(address="job:2", identity_dir=Path("/j"), name="job-op")
    c = resolve_connection(job_control=job)
    assert (c.control, c.identity_dir, c.name) == ("job:2", Path("/j"), "job-op")
    monkeypatch.setenv("FEDCREDIT_CONTROL", "env:3")
    monkeypatch.setenv("FEDCREDIT_IDENTITY_DIR", "/e")
    monkeypatch.setenv("FEDCREDIT_NAME", "env-op")
    c = resolve_connection(job_control=job)
    assert (c.control, c.identity_dir, c.name) == ("env:3", Path("/e"), "env-op")
    c = resolve_connection("flag:4", "/f", "flag-op", job_control=job)
    assert (c.control, c.identity_dir, c.name) == ("flag:4", Path("/f"), "flag-op")
    # FEDCREDIT_PROFILE names another file; a missing one is an error, not silently ignored
    monkeypatch.delenv("FEDCREDIT_CONTROL")
    monkeypatch.delenv("FEDCREDIT_IDENTITY_DIR")
    monkeypatch.setenv("FEDCREDIT_PROFILE", str(tmp / "nope.toml"))
    with pytest.raises(ConfigError, match=r"FEDCREDIT_PROFILE=.*nope\.toml: no such profile file"):
        resolve_connection()


def test_a_profile_with_an_unknown_key_is_an_error_naming_it(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prof = clean_env / "p.toml"
    prof.write_text('control = "a:1"\nidentity_dir = "/p"\ncontrl = "typo"\n')
    monkeypatch.setenv("FEDCREDIT_PROFILE", str(prof))
    with pytest.raises(ConfigError, match=r"p\.toml: contrl: Extra inputs are not permitted"):
        resolve_connection()


# --------------------------------------------------------------------------- messages printed intact


def _coordinator_config(tmp_path: Path, relay_port: str, second_party: str) -> Path:
    cfg = tmp_path / "coordinator.toml"
    cfg.write_text(
        '[federation]\nname = "x"\nca_dir = "ca"\n'
        f'[coordinator]\nname = "coordinator"\nidentity_dir = "c"\nstate_dir = "s"\nrelay_port = {relay_port}\n'
        '[[parties]]\nname = "bank1"\ncertificate = "a"\nflower_public_key = "b"\n'
        f'[[parties]]\nname = "{second_party}"\ncertificate = "a"\nflower_public_key = "b"\n'
    )
    return cfg


def test_config_errors_print_section_names_intact(tmp_path: Path) -> None:
    """Rich markup once ate `[coordinator]` and `[[parties]]` out of these messages."""
    proc = _cli(["coordinator", "start", "--config", str(_coordinator_config(tmp_path, '"x"', "bank2"))], _env(tmp_path))
    assert proc.returncode == 2
    assert "[coordinator].relay_port" in proc.stderr, proc.stderr
    proc = _cli(["coordinator", "start", "--config", str(_coordinator_config(tmp_path, "9200", "bank1"))],
                _env(tmp_path))
    assert proc.returncode == 2
    assert "party 'bank1' is listed twice in [[parties]]" in proc.stderr, proc.stderr


def test_run_records_print_brackets_intact() -> None:
    """A run's error and name, shown by `fedcredit status`, keep their brackets."""
    from fedcredit.progress import print_run

    out = io.StringIO()
    from protos import control_pb2

    info = control_pb2.RunInfo(run_id="r-1", name="job [q4]", type="horizontal", status="failed", created=1.0,
                               error="party 'bank1': [datasets.train] not in [[parties]] [bold]x", attempt=2)
    print_run(info, Console(file=out, width=200, markup=False))
    text = out.getvalue()
    assert "job [q4]" in text and "party 'bank1': [datasets.train] not in [[parties]] [bold]x" in text
    assert "status: failed  (attempt 2)" in text  # a resumed run says which attempt it is on
    from fedcredit.progress import console, err_console

    assert not console._markup and not err_console._markup  # every CLI print path goes through these
