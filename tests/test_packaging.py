"""A normal (non-editable) install can run a job: the wheel carries the Flower app descriptor and scenarios.

Why: the README installs with ``-e``, which hides files missing from the built
package (the Flower app descriptor once was).  This builds the wheel, installs it
into a fresh virtualenv and runs a short in-process simulation from there, with the
working directory outside the source tree so nothing is imported from it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_a_simulation(tmp_path: Path) -> None:
    # build from a copy of the tracked tree (setuptools writes build/ next to the sources)
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    # nothing from this process's environment decides what is imported (an earlier test's library may have
    # set PYTHONPATH: pip would then see the source tree's editable install and skip the wheel)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, cwd=tmp_path, env=env)
    (wheel,) = dist.glob("fedcredit-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, env=env).stdout.strip())
    # The dependencies come from this test's environment (a plain path entry: its .pth files, among them the
    # editable install of the source tree, are NOT processed); fedcredit itself only from the wheel.
    (site / "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, cwd=tmp_path, env=env)

    run_probe = subprocess.run(
        [str(py), "-c",
         "import coordinator.flower as f, simulations.harness as h, fedcredit; "
         "print(f.APP_DIR / 'pyproject.toml'); print(fedcredit.__file__); print(h.builtin_scenarios())"],
        capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run_probe.returncode == 0, run_probe.stderr[-3000:]
    probe = run_probe.stdout.splitlines()
    descriptor, pkg_file = Path(probe[0]), probe[1]
    assert descriptor.is_file() and "party.clientapp:client_app" in descriptor.read_text()
    assert str(site) in pkg_file and str(ROOT) not in pkg_file, pkg_file
    assert "horizontal-demo" in probe[2] and "vertical-secureboost-demo" in probe[2]

    out = tmp_path / "demo"
    run = subprocess.run([str(env_dir / "bin" / "fedcredit"), "simulate", "horizontal-demo", "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "finished" and report["global"]["auc"] > 0.6
