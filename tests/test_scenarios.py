"""Every shipped scenario (``simulations/scenarios/*.toml``) runs in-process to a finished report.

Why: a scenario is what a new user runs first (``fedcredit simulate <name>``); a typo in one
(``split = "label"``) used to crash with a traceback and no test noticed.  Each scenario
runs as shipped — its data source, split, job type and model family — with only the
sizes cut (rounds, epochs, trees, rows) so the in-process runs take under a minute; the
README's first command (``horizontal-demo --deployment``) runs over real processes too.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from simulations.harness import SCENARIO_DIR, builtin_scenarios, describe_scenarios, simulate

#: Size cuts only: every other key of the scenario (source, split, family, algorithm...) runs as shipped.
FAST: dict[str, dict[str, dict[str, Any]]] = {
    "horizontal-demo": {"model": {"rounds": 2, "local_epochs": 1}, "data": {"rows_per_bank": 1500, "test_rows": 900}},
    "horizontal-noniid-demo": {"model": {"rounds": 2, "local_epochs": 1},
                               "data": {"rows_per_bank": 1500, "test_rows": 900}},
    "vertical-lr-demo": {"model": {"max_epochs": 2}, "data": {"rows": 3000}},
    "vertical-secureboost-demo": {"model": {"n_trees": 2, "max_depth": 2, "n_bins": 8}, "data": {"rows": 3000}},
    "vertical-lr-credit": {"model": {"max_epochs": 1}},
    "vertical-secureboost-credit": {"model": {"n_trees": 1, "max_depth": 2, "n_bins": 8}},
}


def test_every_shipped_scenario_has_a_fast_setting_and_a_description() -> None:
    assert sorted(FAST) == builtin_scenarios()
    for name, desc in describe_scenarios().items():
        assert desc and not desc.startswith("(unreadable"), name


@pytest.mark.parametrize("name", sorted(FAST))
def test_scenario_runs_in_process(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if name.endswith("-credit"):
        request.getfixturevalue("shared_data")  # the real UCI files beside the project
    out = io.StringIO()
    report = simulate(name, out_dir=tmp_path, console=Console(file=out, width=200), overrides=FAST[name])
    assert report["status"] == "finished", report
    assert report["scenario"] == name and report["mode"] == "in-process"
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["status"] == "finished"
    auc = (saved.get("global") or {}).get("auc") or next(
        (m.get("auc") for m in (saved.get("parties") or {}).values() if isinstance(m, dict) and m.get("auc")), None)
    assert auc is not None and 0.55 < auc <= 1.0, saved  # it learned something, on every scenario
    assert "summary (in-process)" in out.getvalue()
    _assert_reports_named(report, out.getvalue())


def _assert_reports_named(report: dict, printed: str) -> None:
    """The closing summary names every party's HTML report by its real path on this machine."""
    parties = {p for p, m in (report.get("parties") or {}).items() if isinstance(m, dict) and m.get("report")}
    assert parties and set(report["report_files"]) == parties, report
    for p, path in report["report_files"].items():
        assert Path(path).is_file() and path.endswith(report["parties"][p]["report"]), (p, path)
        assert f"    {p}: {path}" in printed, printed


def test_a_bad_split_is_an_error_naming_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((SCENARIO_DIR / "horizontal-noniid-demo.toml").read_text().replace('split = "noniid-label"',
                                                                                   'split = "label"'))
    proc = subprocess.run([sys.executable, "-m", "fedcredit.cli", "simulate", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{bad}: [data]: unknown split 'label'" in proc.stderr, proc.stderr


def test_simulate_help_lists_every_scenario_with_its_description() -> None:
    proc = subprocess.run([sys.executable, "-m", "fedcredit.cli", "simulate", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for name, desc in describe_scenarios().items():
        line = next((ln for ln in proc.stdout.splitlines() if ln.strip().startswith(name + " ")), "")
        assert desc[:40] in line, (name, proc.stdout)


@pytest.mark.e2e
def test_the_readme_first_command_runs_over_real_processes(tmp_path: Path) -> None:
    """``fedcredit simulate horizontal-demo --deployment``: coordinator + 3 party daemons on 127.0.0.1 (rounds cut)."""
    out = io.StringIO()
    report = simulate("horizontal-demo", deployment=True, out_dir=tmp_path, console=Console(file=out, width=200),
                      overrides=FAST["horizontal-demo"])
    assert report["status"] == "finished", (report, out.getvalue())
    assert report["mode"] == "deployment" and set(report["parties"]) == {"bank1", "bank2", "bank3"}
    assert 0.55 < report["global"]["auc"] <= 1.0
    assert "summary (deployment)" in out.getvalue()
    _assert_reports_named(report, out.getvalue())
