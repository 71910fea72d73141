"""A vertical LR job with [model.binning], in process: PSI -> split -> federated binning -> LR -> scoring parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedcredit.config import JobConfig, parse_job_text
from fedcredit.data import Table
from fedcredit.errors import ConfigError
from fedcredit.kinds import load_part
from fedcredit.metrics import auc
from fedcredit.protocols.vertical_jobs import VerticalParty, run_vertical_party_core
from fedcredit.transport import InMemoryHub
from simulations.inprocess import run_roles
from tests.test_binning_federated import _messy


def _job(transform: str) -> JobConfig:
    return JobConfig.model_validate({
        "job": {"type": "vertical-lr", "parties": ["bank", "fintech"], "label_party": "bank",
                "round_timeout_s": 300.0},
        "model": {"test_fraction": 0.25, "max_epochs": 20, "binning": {"method": "optimal", "monotonic": "auto",
                                                                       "transform": transform, "min_iv": 0.02}}})


@pytest.mark.parametrize("transform", ["indicators", "woe"])
def test_vertical_lr_on_binned_features_end_to_end(tmp_path: Path, transform: str) -> None:
    label, passive = _messy(4000, seed=11)
    job = _job(transform)
    tables = {"bank": label, "fintech": passive}
    views = {p: VerticalParty(p, "run-bin", job, frozenset({"train"}), lambda k, p=p: tables[p],  # type: ignore[misc]
                              tmp_path / p) for p in tables}
    out = run_roles(InMemoryHub(default_timeout=300), {p: (lambda t, p=p: run_vertical_party_core(t, views[p]))
                                                       for p in tables}, timeout_s=600)
    lab = out["bank"]
    assert out["fintech"]["binning_kept"] >= 1
    assert "binning.json" in lab["model_files"] and lab["binning_features"] == 4
    assert lab["metrics"]["auc"] > 0.7, lab["metrics"]
    # the public reply carries counts only, never a table
    assert {k for k in lab if "binning" in k} == {"binning_features", "binning_kept", "binning_only", "binning_s"}
    assert all(isinstance(lab[k], (int, float, bool)) for k in lab if "binning" in k)

    # run JSON for the report: label party has every party's tables (passive ones by bin index), passive its own
    ldoc = json.loads((tmp_path / "bank" / "models" / "run-bin" / "binning.json").read_text())
    pdoc = json.loads((tmp_path / "fintech" / "models" / "run-bin" / "binning.json").read_text())
    owners = {t["owner"] for t in ldoc["binning"]}
    assert owners == {"bank", "fintech"}
    assert all(lbl.startswith("bin ") or lbl == "missing" for t in ldoc["binning"] if t["owner"] == "fintech"
               for lbl in t["labels"])
    assert {r["feature"] for r in pdoc["selection"]["features"]} == {"amount", "purpose", "housing"}
    assert all("events" not in t and "iv" not in t for t in pdoc["binning"])  # the passive never learns them
    assert ("woe" in json.dumps(pdoc["binning"])) == (transform == "woe")

    # the model parts score raw rows (NaN = missing, category codes) through the same transform
    lpart_raw = (tmp_path / "bank" / "models" / "run-bin" / "vertical_lr_bank_model.json").read_bytes()
    ppart_raw = (tmp_path / "fintech" / "models" / "run-bin" / "vertical_lr_fintech_model.json").read_bytes()
    lonline = load_part("vertical-lr-label", lpart_raw, "bank part")
    ponline = load_part("vertical-lr-passive", ppart_raw, "fintech part")
    assert json.loads(ppart_raw)["input_schema"]["kinds"] == [
        {"amount": "numeric", "purpose": "categorical", "housing": "categorical"}[f] for f in ponline.feature_names]
    rows = np.arange(len(label))
    XL = label.X[:, [label.feature_names.index(f) for f in lonline.feature_names]]
    XP = passive.X[:, [passive.feature_names.index(f) for f in ponline.feature_names]]
    assert np.isnan(XP).any()  # raw, with missing values
    pd_, _ = lonline.score(XL[rows], {"fintech": ponline.answer(XP[rows])})
    assert label.y is not None
    assert auc(label.y, pd_) > 0.7


def test_binning_params_are_validated() -> None:
    text = """[job]\ntype = "vertical-lr"\nparties = ["a", "b"]\nlabel_party = "a"\n[model.binning]\n"""
    with pytest.raises(ConfigError, match=r"job.toml: \[model.binning\].bins: unknown field"):
        parse_job_text(text + "bins = 3\n")
    with pytest.raises(ConfigError, match=r"\[model.binning\].transform"):
        parse_job_text(text + 'transform = "onehot"\n')
    with pytest.raises(ConfigError, match=r"\[model.binning\].min_iv: expected a number"):
        parse_job_text(text + 'min_iv = "0.02"\n')
    m = parse_job_text(text).model
    assert m.binning is not None and m.binning.transform == "indicators"  # type: ignore[union-attr]


def _run_job(tmp_path: Path, job: JobConfig, tables: dict[str, Table]) -> dict[str, dict]:  # type: ignore[type-arg]
    views = {p: VerticalParty(p, "run-b", job, frozenset({"train"}), lambda k, p=p: tables[p],  # type: ignore[misc]
                              tmp_path / p) for p in tables}
    return run_roles(InMemoryHub(default_timeout=300), {p: (lambda t, p=p: run_vertical_party_core(t, views[p]))
                                                        for p in tables}, timeout_s=600)


def test_binning_only_job_writes_tables_and_trains_nothing(tmp_path: Path) -> None:
    label, passive = _messy(1500, seed=5)
    job = JobConfig.model_validate({
        "job": {"type": "vertical-lr", "parties": ["bank", "fintech"], "label_party": "bank"},
        "model": {"test_fraction": 0.2, "binning": {"only": True, "min_iv": 0.05}}})
    out = _run_job(tmp_path, job, {"bank": label, "fintech": passive})
    for p in ("bank", "fintech"):
        assert out[p]["model_files"] == ["binning.json"], out[p]
        assert not list((tmp_path / p / "models" / "run-b").glob("vertical_lr_*"))
    doc = json.loads((tmp_path / "bank" / "models" / "run-b" / "binning.json").read_text())
    assert doc["selection"]["min_iv"] == 0.05 and len(doc["binning"]) == 4


def test_secureboost_job_applies_iv_selection_to_raw_features(tmp_path: Path) -> None:
    from tests.test_binning_federated import _shared

    label, passive = _shared(1200)
    job = JobConfig.model_validate({
        "job": {"type": "secureboost", "parties": ["bank", "fintech"], "label_party": "bank"},
        "model": {"test_fraction": 0.2, "n_trees": 2, "max_depth": 2, "binning": {"min_iv": 0.05,
                                                                                 "transform": "woe"}}})
    out = _run_job(tmp_path, job, {"bank": label, "fintech": passive})
    pdoc = json.loads((tmp_path / "fintech" / "models" / "run-b" / "binning.json").read_text())
    kept = pdoc["selection"]["selected"]
    assert 0 < len(kept) < passive.n_features
    assert "woe" not in json.dumps(pdoc["binning"])  # selection only: no WOE leaves the label party
    part = json.loads((tmp_path / "fintech" / "models" / "run-b" / "secureboost_fintech_model.json").read_text())
    assert part["feature_names"] == kept  # the trees see the kept raw features only
    assert out["bank"]["binning_kept"] < out["bank"]["binning_features"]
