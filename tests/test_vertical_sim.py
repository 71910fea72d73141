"""``fedcredit simulate vertical-*`` in-process: the deployed party code, one thread per party, over an InMemoryHub.

The built-in demo scenarios are run through the harness with fewer generated rows (a
tmp copy of the TOML), so the whole path — data preparation, ``_run_inprocess``,
``simulations.vertical_sim``, ``vertical_jobs.run_vertical_party_core`` — is exercised.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.console import Console

from fedcredit.config import JobConfig
from fedcredit.errors import DataError
from simulations.harness import SCENARIO_DIR, simulate
from simulations.scenario_data import prepare_vertical_data
from simulations.vertical_sim import run_vertical_inprocess

# what a party may tell the coordinator: sizes, timings, traffic, file names, model counters — no rows or labels
PUBLIC_KEYS = {"role", "type", "run_id", "intersection_size", "own_rows", "n_train", "n_test", "split", "psi_s",
               "model_s", "total_s", "psi_bytes_sent", "bytes_sent", "bytes_received", "messages_sent",
               "messages_received", "model_files", "epochs_run", "best_epoch", "steps", "n_trees",
               "splits_by_party", "splits", "metrics", "report"}


def _small_scenario(tmp_path: Path, name: str, rows: int, model: dict[str, Any]) -> Path:
    """The built-in scenario with ``rows`` generated applications and ``model`` overrides, as a tmp TOML."""
    text = (SCENARIO_DIR / f"{name}.toml").read_text()
    scn = tomllib.loads(text)
    assert scn["data"]["source"] == "vertical-generated"
    text = text.replace(f"rows = {scn['data']['rows']}", f"rows = {rows}")
    for k, v in model.items():
        text = text.replace(f"{k} = {scn['model'][k]}", f"{k} = {v}")
    p = tmp_path / f"{name}-small.toml"
    p.write_text(text)
    small = tomllib.loads(text)
    assert small["data"]["rows"] == rows and all(small["model"][k] == v for k, v in model.items())
    return p


def _check_report(report: dict[str, Any], out: Path, min_auc: float) -> None:
    assert report["status"] == "finished" and report["mode"] == "in-process"
    assert report["label_party"] == "bank"
    g = report["global"]
    assert g["auc"] > min_auc, g
    assert g["n_test"] > 100
    bank, fintech = report["parties"]["bank"], report["parties"]["fintech"]
    assert bank["role"] == "label" and fintech["role"] == "passive"
    assert bank["intersection_size"] == fintech["intersection_size"] == report["intersection_size"]
    assert bank["n_test"] == fintech["n_test"] == g["n_test"]
    # the passive party's reply: public figures only, no metrics, nothing row-shaped
    for who, reply in report["parties"].items():
        assert "metrics" not in reply, who
        assert set(reply) <= PUBLIC_KEYS, (who, set(reply) - PUBLIC_KEYS)
        assert all(not isinstance(v, list) or k == "model_files" for k, v in reply.items()), who
        assert len(json.dumps(reply)) < 2000, who
    assert fintech["bytes_sent"] == bank["bytes_received"] and bank["bytes_sent"] == fintech["bytes_received"]
    # each party keeps its own model part; only the label party holds the evaluation report
    models = {p: Path(d) for p, d in report["models"].items()}
    for p in ("bank", "fintech"):
        assert set(report["parties"][p]["model_files"]) <= {f.name for f in models[p].iterdir()}
    assert not any("_report" in f.name or "roc_ks" in f.name for f in models["fintech"].iterdir())
    # the passive party's own run report (fedcredit/report.py): its data and what it sent, nothing label-derived
    passive = json.loads((models["fintech"] / "report.json").read_text())
    assert passive["role"] == "passive" and "sent" in passive and "data" in passive
    assert not {"evaluation", "convergence", "trees"} & set(passive)
    assert fintech["report"] == f"models/{report['run_id']}/report.html"
    saved = json.loads((out / "report.json").read_text())
    assert saved["global"] == g


def test_vertical_lr_demo_inprocess(tmp_path: Path) -> None:
    scn = _small_scenario(tmp_path, "vertical-lr-demo", 2000, {"max_epochs": 3})
    out = tmp_path / "out"
    report = simulate(str(scn), out_dir=out, console=Console(quiet=True))
    _check_report(report, out, min_auc=0.62)
    # 3 mini-batch epochs, then full-batch steps until the training loss settled (at least 3 of them)
    assert report["parties"]["bank"]["epochs_run"] == report["parties"]["fintech"]["epochs_run"] >= 3 + 3
    assert "vertical_lr_report.json" in report["parties"]["bank"]["model_files"]


def test_vertical_secureboost_demo_inprocess(tmp_path: Path) -> None:
    scn = _small_scenario(tmp_path, "vertical-secureboost-demo", 1500, {"n_trees": 2, "max_depth": 2})
    out = tmp_path / "out"
    report = simulate(str(scn), out_dir=out, console=Console(quiet=True))
    _check_report(report, out, min_auc=0.6)
    assert report["parties"]["bank"]["n_trees"] == 2


def test_a_failing_party_surfaces_instead_of_hanging(tmp_path: Path) -> None:
    """The passive party's file has no id column: its DataError reaches the caller; the label party stops waiting.

    The job's receive timeout is 900 s, so finishing in seconds shows the abort works.
    """
    data = prepare_vertical_data({"source": "vertical-generated", "rows": 600, "seed": 3}, tmp_path / "data",
                                 tmp_path / "scenario.toml")
    broken = tmp_path / "data" / "fintech_no_id.csv"
    pd.read_csv(data["fintech"]["train"]["path"]).rename(columns={"id": "customer"}).to_csv(broken, index=False)
    data["fintech"]["train"]["path"] = broken
    job = JobConfig.model_validate({"job": {"type": "vertical-lr", "parties": ["bank", "fintech"],
                                            "label_party": "bank", "round_timeout_s": 900.0},
                                    "model": {"test_fraction": 0.2, "max_epochs": 2}})
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"party 'fintech'.*missing column\(s\) \['id'\]"):
        run_vertical_inprocess(job, data, tmp_path / "out", Console(quiet=True))
    assert time.perf_counter() - t0 < 30
