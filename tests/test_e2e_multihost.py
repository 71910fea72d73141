"""The README's "Running a real federation" section, run exactly as written.

Why this shape: the walkthrough is what a bank's operations team follows first, and it
drifted from the code more than once (a ``bank.toml`` that did not exist, flags every
command needed).  So the steps are not copied here: every fenced ``bash`` block of that
section that starts with ``# at <institution>, in directory <dir>/`` is extracted from
README.md and run, line by line, in ``<root>/<dir>`` — four sibling directories, as four
hosts would be, next to ``<root>/fedcredit/examples`` (the example configs from
``examples/``, as a clone has them).  The only substitutions are the ones the README
tells a one-machine user to make: the two host names become ``localhost`` where they are
dialled (the coordinator's certificate is still issued for ``coordinator.example.net`` and
binds ``0.0.0.0`` — the set-up that used to fail), the fintech's certificate name is
``localhost``, and the ports are free ones.  ``<run-id>`` is the run the last
``fedcredit train`` printed.  Daemons (``coordinator start``, ``party start``) run in the
background until they print ``ready``; every other line must exit 0.

Real processes throughout: the CLI, the coordinator (SuperLink + front door + relay),
three party daemons (SuperNodes), mutual TLS with the certificates the steps issue.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crypto.certs import certificate_names
from simulations.deployment import free_port

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Running a real federation"
AT = re.compile(r"^# at .+, in directory (\w+)/\s*$")
DAEMON = re.compile(r"^fedcredit (coordinator|party) start\b")
PORTS = ("9100", "9200", "9301", "9302")
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.e2e



def readme_steps(text: str) -> list[tuple[str, list[str]]]:
    """(directory, command lines) of each runnable block of the section, in order."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end > 0 else None]
    steps = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        lines = block.splitlines()
        m = AT.match(lines[0]) if lines else None
        if m:
            steps.append((m.group(1), [ln for ln in lines[1:] if ln.strip() and not ln.lstrip().startswith("#")]))
    return steps


@dataclass
class Walkthrough:
    root: Path
    subs: dict[str, str]
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    outputs: list[tuple[str, str, str]] = field(default_factory=list)  # (dir, command, output)
    run_ids: list[str] = field(default_factory=list)

    def substitute(self, text: str) -> str:
        for a, b in self.subs.items():
            text = text.replace(a, b)
        return text

    def env(self, directory: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDCREDIT_") and k != "XDG_CONFIG_HOME"}
        env["HOME"] = str(self.root / f"home-{directory}")  # each institution's own ~/.config
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(self, directory: str, line: str) -> str:
        cwd = self.root / directory
        cwd.mkdir(parents=True, exist_ok=True)
        cmd = self.substitute(line)
        if "<run-id>" in cmd:
            assert self.run_ids, f"{line!r} needs a run id, but no train ran before it"
            cmd = cmd.replace("<run-id>", self.run_ids[-1])
        if DAEMON.match(cmd):
            self.start_daemon(directory, cmd)
            return ""
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=self.env(directory),
                              capture_output=True, text=True, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"[{directory}] {cmd}\nexit {proc.returncode}\n{out}\n{self.logs()}"
        self.outputs.append((directory, cmd, out))
        m = re.search(r"submitted run (\S+)", out)
        if m:
            self.run_ids.append(m.group(1))
        return out

    def start_daemon(self, directory: str, cmd: str) -> None:
        log = self.root / "logs" / f"{directory}.log"
        log.parent.mkdir(exist_ok=True)
        fh = open(log, "ab")
        proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=self.root / directory, env=self.env(directory),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.daemons.append(proc)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # bounded: the daemon's own "ready" line, or its exit
            text = log.read_text(errors="replace")
            if re.search(r"\bready\b", text):
                return
            assert proc.poll() is None, f"[{directory}] {cmd} exited {proc.returncode}:\n{text}"
            time.sleep(0.5)
        raise AssertionError(f"[{directory}] {cmd}: no 'ready' within 240 s:\n{log.read_text(errors='replace')}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((self.root / "logs").glob("*.log")))

    def stop(self) -> None:
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.daemons:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_readme_steps_are_found() -> None:
    steps = readme_steps((ROOT / "README.md").read_text())
    dirs = [d for d, _ in steps]
    assert {"coordinator", "bank1", "bank2", "fintech"} <= set(dirs)
    joined = "\n".join(ln for _, lines in steps for ln in lines)
    for must in ("certs issue fintech", "coordinator start", "party start --config fintech.toml", "login",
                 "train job-horizontal.toml", "train job-vertical-lr.toml", "train job-secureboost.toml",
                 "fedcredit runs", "fedcredit status <run-id>", "--follow", "models list", "fedcredit score"):
        assert must in joined, must
    for _, lines in steps:  # every config a step copies exists in examples/
        for ln in lines:
            for name in re.findall(r"examples/([\w.*-]+\.toml)", ln):
                assert list((ROOT / "examples").glob(name)), ln


@pytest.mark.timeout(1800)
def test_readme_multihost_walkthrough(tmp_path: Path) -> None:
    ports = {p: str(free_port()) for p in PORTS}
    subs = {
        "coordinator.example.net:": "localhost:",    # where it is dialled; its certificate keeps the name
        "fintech.example.net": "localhost",          # the fintech's certificate name and where bank1 dials it
        **{f":{p}": f":{q}" for p, q in ports.items()},
        **{f"= {p}": f"= {q}" for p, q in ports.items()},
    }
    w = Walkthrough(tmp_path, subs)
    examples = tmp_path / "fedcredit" / "examples"  # what a clone beside the institutions' directories holds
    examples.mkdir(parents=True)
    for f in (ROOT / "examples").glob("*.toml"):
        (examples / f.name).write_text(w.substitute(f.read_text()))
    try:
        for directory, lines in readme_steps((ROOT / "README.md").read_text()):
            for line in lines:
                w.run(directory, line)
        by_cmd = {cmd: out for _, cmd, out in w.outputs}

        # the coordinator's certificate is for coordinator.example.net (+ loopback), bound to 0.0.0.0
        names = certificate_names((tmp_path / "coordinator/certs/coordinator/coordinator.crt").read_bytes())
        assert "coordinator.example.net" in names and "0.0.0.0" not in names
        assert "coordinator certificate covers coordinator.example.net" in (tmp_path / "logs/coordinator.log").read_text()
        assert not list((tmp_path / "coordinator/certs/bank1").glob("*.key"))  # the operator kept public halves only

        # three trainings finished; `runs` and `status` needed no connection flag (the login profile)
        assert len(w.run_ids) == 3
        assert (tmp_path / "home-coordinator/.config/fedcredit/profile.toml").exists()
        for cmd, out in by_cmd.items():
            if cmd.startswith("fedcredit train") and "--detach" not in cmd or cmd.endswith("--follow"):
                assert "status: finished" in out, (cmd, out)
        assert any(cmd.endswith("--follow") for cmd in by_cmd)
        runs_out = by_cmd["fedcredit runs"]
        for rid in w.run_ids:
            assert rid in runs_out
        assert runs_out.count("finished") >= 3, runs_out
        status_out = by_cmd[f"fedcredit status {w.run_ids[-1]}"]  # after --follow: the finished record
        parties_out = by_cmd["fedcredit parties"]  # every party heartbeating to the coordinator
        assert all(re.search(rf"{p}\W+live \(seen \d+ s ago\)", parties_out) for p in ("bank1", "bank2", "fintech")), \
            parties_out
        assert w.run_ids[-1] in status_out and "status: finished" in status_out and "secureboost" in status_out

        # each run installed a model at bank1; the SecureBoost one is activated and scores jointly
        models_out = by_cmd["fedcredit party models list --config bank1.toml"]
        for rid in w.run_ids:
            assert rid in models_out, models_out
        with open(tmp_path / "bank1" / "decisions.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 200
        assert {r["decision"] for r in rows} <= {"approve", "refer", "decline"}
        assert all(r["model_version"].startswith(w.run_ids[-1]) and r["fallback"] == "0" for r in rows)
        assert all("fintech" in r["party_contributions"] for r in rows)  # the fintech's partial score was used
    finally:
        w.stop()
        if os.environ.get("FEDCREDIT_KEEP_E2E"):
            shutil.copytree(tmp_path, Path(os.environ["FEDCREDIT_KEEP_E2E"]), dirs_exist_ok=True)
