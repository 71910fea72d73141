"""Run reports (fedcredit/report.py) and population stability (fedcredit/monitor.py, ``fedcredit party monitor``).

The HTML is parsed (html.parser), not grepped: a test must fail if a section's data is
missing, if untrusted text becomes markup, or if the page loads anything from outside.
The monitor runs over a real decision log written by the scoring service (two mutual-TLS
gRPC servers, as in test_scoring.py), through the real CLI.
"""

from __future__ import annotations

import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_scoring import frames, pki  # noqa: F401 - the scoring tests' module fixtures (real PKI, shared data)

from fedcredit.data import Table
from fedcredit.monitor import EPSILON, band, build_reference, population_stability, psi
from fedcredit.privacy import FORMS
from fedcredit.report import ReportBuilder, render_html, write_report

EVIL = '<script>alert("x")</script>'


class Page(HTMLParser):
    """Tags, attributes, text and section ids of one HTML page."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def sections(self) -> list[str]:
        return [str(a.get("id")) for t, a in self.tags if t == "h2"]

    @property
    def all_text(self) -> str:
        return " ".join(self.text)

    def images(self) -> list[str]:
        return [str(a.get("src")) for t, a in self.tags if t == "img"]


def _self_contained(page: Page) -> None:
    assert not any(t == "script" for t, _ in page.tags), "a <script> element in the report"
    for t, a in page.tags:
        for k, v in a.items():
            if k in ("src", "href") and v is not None:
                assert v.startswith("data:image/png;base64,"), (t, k, v[:60])
        if t == "link":
            raise AssertionError("external stylesheet")


def _table() -> Table:
    rng = np.random.default_rng(0)
    n = 400
    amount = rng.lognormal(8, 1, n)
    amount[rng.random(n) < 0.1] = np.nan
    cat = rng.integers(0, 3, n).astype(float)
    cat[:7] = np.nan
    return Table(party="bank", source="bank.csv", ids=[str(i) for i in range(n)], X=np.column_stack([amount, cat]),
                 feature_names=["amount", EVIL], y=(rng.random(n) < 0.3).astype(np.int64),
                 kinds=["numeric", "categorical"], categories={EVIL: ["a", "b", "<img src=x onerror=alert(1)>"]})


def _binning_table(feature: str) -> dict[str, Any]:
    counts, events = [100, 150, 150], [20, 40, 60]
    non = [c - e for c, e in zip(counts, events, strict=True)]
    te, tn = sum(events), sum(non)
    woe = [math.log((n / tn) / (e / te)) for e, n in zip(events, non, strict=True)]
    iv = [(n / tn - e / te) * w for e, n, w in zip(events, non, woe, strict=True)]
    return {"feature": feature, "kind": "numeric", "labels": ["<= 1", "(1, 5]", "missing"], "counts": counts,
            "events": events, "non_events": non, "event_rate": [e / c for e, c in zip(events, counts, strict=True)],
            "woe": woe, "iv": iv, "total_iv": sum(iv)}


def test_every_section_is_rendered_from_its_data_and_untrusted_names_stay_text(tmp_path: Path) -> None:
    t = _table()
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.25).astype(int)
    p = np.clip(0.25 + 0.3 * (y - 0.25) + rng.normal(0, 0.15, 500), 0.001, 0.999)
    b = ReportBuilder(party="bank", role="label", run_id="r-1", job_type="vertical-lr")
    b.put("run", {"n_train": 400, "split": EVIL})
    b.data(t)
    b.put("binning", [_binning_table(EVIL), _binning_table("amount")])
    b.put("selection", {"threshold": 0.02, "selected": [{"feature": EVIL, "iv": 0.3}],
                        "dropped": [{"feature": "amount", "iv": 0.001}]})
    b.put("convergence", [{"epoch": k, "train_loss": 0.6 - 0.01 * k, "val_loss": 0.61 - 0.009 * k} for k in range(1, 6)])
    b.put("trees", {"n_trees": 3, "splits_by_party": {"bank": 4, "fintech": 2}})
    b.put("scorecard", [{"feature": EVIL, "bin": "<= 1", "points": 12}])
    b.evaluate("federated", y, p)
    b.evaluate("local only", y, np.clip(p + rng.normal(0, 0.2, 500), 0.001, 0.999))
    html_path = b.write(tmp_path)
    html = html_path.read_text()
    doc = json.loads((tmp_path / "report.json").read_text())
    page = Page(html)

    assert page.sections == ["run", "data", "binning", "selection", "convergence", "trees", "scorecard", "evaluation"]
    _self_contained(page)
    assert EVIL in page.all_text and "<img src=x onerror=alert(1)>" in page.all_text  # shown as text ...
    assert "<script>" not in html and "&lt;script&gt;" in html  # ... because it was escaped
    assert sum(1 for t_, a in page.tags if t_ == "img" and not a.get("alt", "").startswith("reference")) >= 8
    # data summary: rows, missing rates, category counts, from the Table (NaN = missing)
    d = doc["data"]
    assert d["rows"] == 400 and d["events"] == int(t.y.sum())  # type: ignore[union-attr]
    amount, cat = d["features"]
    assert amount["missing"] == int(np.isnan(t.X[:, 0]).sum()) and amount["missing_rate"] == pytest.approx(
        np.isnan(t.X[:, 0]).mean())
    assert cat["missing"] == 7 and sum(c["count"] for c in cat["categories"]) == 393
    assert {c["category"] for c in cat["categories"]} == {"a", "b", "<img src=x onerror=alert(1)>"}
    assert f"{100 * amount['missing_rate']:.1f} %" in page.all_text
    # evaluation: both models, side by side, with every curve's data in the JSON
    fed, loc = doc["evaluation"]
    assert [fed["model"], loc["model"]] == ["federated", "local only"]
    from fedcredit.metrics import auc, ks

    assert fed["auc"] == pytest.approx(auc(y, p)) and fed["ks"] == pytest.approx(ks(y, p))
    assert len(fed["gains"]) == 10 and fed["gains"][-1]["cum_events_share"] == pytest.approx(1.0)
    assert sum(g["events"] for g in fed["gains"]) == y.sum()
    assert fed["gains"][0]["lift"] > 1.0  # riskiest decile holds more bads than average
    assert len(fed["calibration"]) == 10 and sum(c["n"] for c in fed["calibration"]) == 500
    assert sum(fed["score_hist"]["events"]) == y.sum() and sum(fed["score_hist"]["non_events"]) == 500 - y.sum()
    assert fed["roc"]["fpr"][0] == 0.0 and fed["roc"]["tpr"][-1] == 1.0
    assert f"{fed['auc']:.4f}" in page.all_text and f"{loc['auc']:.4f}" in page.all_text
    # binning: the table's numbers are in the page
    assert f"{_binning_table('amount')['total_iv']:.4f}" in page.all_text
    assert doc["selection"]["selected"][0]["feature"] == EVIL and doc["convergence"][0]["epoch"] == 1


def test_absent_sections_are_absent_not_errors(tmp_path: Path) -> None:
    assert Page(render_html({})).sections == []  # nothing at all: still a page
    b = ReportBuilder(party="fintech", role="passive", run_id="r-2", job_type="secureboost")
    b.data(_table())
    b.put("binning", []).put("convergence", None)  # empty = absent
    b.evaluate("federated", None, None)  # a passive party has no labels: no evaluation
    page = Page(b.write(tmp_path).read_text())
    assert page.sections == ["data"]
    doc = json.loads((tmp_path / "report.json").read_text())
    assert set(doc) == {"format", "title", "party", "role", "run_id", "job_type", "created", "data"}
    with pytest.raises(KeyError, match="not one of"):
        b.put("convergance", [])  # a typo is an error, not a silently missing section
    # a section of an unexpected shape from another step renders as what it is
    html = render_html({"scorecard": {"base_points": 600, "pdo": 20}, "binning": [{"feature": "x"}]})
    assert Page(html).sections == ["binning", "scorecard"]


def test_vertical_label_and_passive_reports(tmp_path: Path) -> None:
    """A real in-process vertical SecureBoost run: the label party's report has the trees and every test
    figure; the passive party's has its data and what it sent, and nothing label-derived."""
    from rich.console import Console
    from test_vertical_sim import _small_scenario

    from simulations.harness import simulate

    scen = _small_scenario(tmp_path, "vertical-secureboost-demo", 1200, {"n_trees": 2, "max_depth": 2})
    rep = simulate(str(scen), out_dir=tmp_path / "out", console=Console(quiet=True))
    models = {p: Path(d) for p, d in rep["models"].items()}
    label, passive = rep["label_party"], next(p for p in rep["models"] if p != rep["label_party"])
    for p in (label, passive):
        assert rep["parties"][p]["report"] == f"models/{rep['run_id']}/report.html"
    lab = json.loads((models[label] / "report.json").read_text())
    assert {"data", "trees", "evaluation", "run", "privacy"} <= set(lab) and "sent" not in lab
    assert lab["trees"]["n_trees"] == 2 and sum(lab["trees"]["splits_by_party"].values()) >= 1
    ev = lab["evaluation"][0]
    assert ev["n"] == rep["global"]["n_test"] and ev["auc"] == pytest.approx(rep["global"]["auc"], abs=1e-6)
    assert ev["gains"] and ev["calibration"] and ev["roc"] and ev["score_hist"]
    page = Page((models[label] / "report.html").read_text())
    assert page.sections == ["run", "compute", "data", "trees", "evaluation", "privacy"]
    _self_contained(page)
    ref = json.loads((models[label] / "reference.json").read_text())
    assert ref["score"]["rows"] == ev["n"] and abs(sum(ref["score"]["shares"]) - 1) < 1e-6
    assert set(ref["features"]) == {f["name"] for f in lab["data"]["features"]}

    pas = json.loads((models[passive] / "report.json").read_text())
    assert set(pas) - {"format", "title", "party", "role", "run_id", "job_type", "created"} == {"run", "compute", "data",
                                                                                                 "sent", "privacy"}
    assert pas["sent"]["bytes_sent"] == rep["parties"][passive]["bytes_sent"]
    assert sum(r["bytes"] for r in pas["sent"]["by_tag"]) == pas["sent"]["bytes_sent"]
    assert {r["to"] for r in pas["sent"]["by_tag"]} == {label}
    assert not any(seg.isdigit() for r in pas["sent"]["by_tag"] for seg in r["tag"].split("/"))  # kinds, bounded
    assert Page((models[passive] / "report.html").read_text()).sections == ["run", "compute", "data", "sent", "privacy"]
    assert pas["compute"]["engine"] == lab["compute"]["engine"] and pas["compute"]["pid"] == os.getpid()  # one pool
    # the privacy report: every message it sent has a declared form, the rows of the protocols it ran, the attacks
    for doc, role in ((lab, "label"), (pas, "passive")):
        pv = doc["privacy"]
        assert pv["protocol"] == "secureboost" and pv["mode"] == "hidden-splits" and pv["role"] == role  # the default since issue 12
        assert pv["sent"] and all(r["form"] in FORMS for r in pv["sent"]), pv["sent"]
        assert {r["protocol"] for r in pv["leakage"]} >= {"psi", "secureboost"}
        assert pv["dp"] is None
        assert {e["attacker"] for e in pv["attacks"]["entries"]} == {"passive party", "label party"}
    assert {r["tag"]: r["form"] for r in pas["privacy"]["sent"]}["sb.reply"] == "masked"
    assert not (models[passive] / "reference.json").exists()  # a passive party decides nothing: no PSI reference


def test_horizontal_bank_reports_federated_local_only_and_global(tmp_path: Path) -> None:
    from simulations.horizontal_sim import run_inprocess

    rep = run_inprocess(None, None, {"rounds": 2, "run_id": "hz-rep"}, tmp_path,
                        generate={"n_banks": 3, "rows_per_bank": 600, "test_rows": 600, "seed": 3})
    res = rep["result"]
    decrypter = (res["global_metrics"] or {}).get("decrypted_by")
    for bank, m in res["party_metrics"].items():
        assert m["report"] == f"{bank}/hz-rep/report.html"  # under the dir above the bank's model root
        d = tmp_path / "parties" / bank / "hz-rep"
        doc = json.loads((d / "report.json").read_text())
        models = [e["model"] for e in doc["evaluation"]]
        assert models[:2] == ["federated", "local only"]
        fed, loc = doc["evaluation"][:2]
        assert fed["auc"] == pytest.approx(m["auc"], abs=1e-9) and fed["n"] == m["n_test"]
        assert loc["gains"] and loc["calibration"] and fed["score_hist"] and 0.5 < loc["auc"] <= 1.0
        if bank == decrypter:  # the party that decrypted the summed histogram adds the global figure
            assert models[2] == "federated, all banks' test rows"
            assert doc["evaluation"][2]["auc"] == pytest.approx(res["global_metrics"]["auc"])
        else:
            assert len(models) == 2
        assert doc["data"]["rows"] == 600
        page = Page((d / "report.html").read_text())
        assert page.sections == ["run", "data", "convergence", "evaluation", "privacy"]  # LR: Newton rounds; privacy report
        assert [r["epoch"] for r in doc["convergence"]][:1] == [3] and all(r["train_loss"] > 0 for r in doc["convergence"])
        _self_contained(page)
        assert (d / "reference.json").exists()


# --------------------------------------------------------------------------- PSI


def test_psi_formula_bands_and_epsilon() -> None:
    e, a = [0.5, 0.5], [0.9, 0.1]
    assert psi(e, a) == pytest.approx(0.4 * math.log(1.8) + (-0.4) * math.log(0.2))
    assert psi(e, e) == 0.0
    assert psi([10, 30], [1, 3]) == pytest.approx(0.0)  # counts are normalised to shares
    # an empty bin is floored at EPSILON: large but finite
    assert psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(
        (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - EPSILON) * math.log(0.5 / EPSILON))
    assert [band(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == \
        ["stable", "stable", "watch", "watch", "act", "act"]
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])


def test_population_stability_on_known_populations() -> None:
    t = _table()
    rng = np.random.default_rng(5)
    scores = rng.beta(2, 5, 2000)
    ref = build_reference(t, scores, run_id="r", party="bank")
    assert len(ref["score"]["edges"]) == 9 and all(s == pytest.approx(0.1, abs=0.002) for s in ref["score"]["shares"][:10])
    cats = ["a", "b", "<img src=x onerror=alert(1)>"]

    def lines(n: int, shift: float, pd_shift: float) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            amt = float(rng.lognormal(8 + shift, 1)) if rng.random() > 0.1 else None
            out.append({"pd": float(np.clip(rng.beta(2, 5) + pd_shift, 0, 1)),
                        "features": {"amount": amt,  # the category is missing as often as in the reference
                                     EVIL: cats[int(rng.integers(0, 3))] if rng.random() > 7 / 400 else None}})
        return out

    same = population_stability(ref, lines(3000, 0.0, 0.0))
    assert same["score"]["band"] == "stable" and all(f["band"] == "stable" for f in same["features"])
    moved = population_stability(ref, lines(3000, 1.5, 0.3))
    assert moved["score"]["band"] == "act" and moved["features"][0]["name"] == "amount"
    assert moved["features"][0]["band"] == "act" and moved["features"][0]["psi"] > 0.25
    # an unknown category and a missing value land in their own bins
    odd = population_stability(ref, [{"pd": 0.1, "features": {"amount": None, EVIL: "zzz"}}])
    f = {i["name"]: i for i in odd["features"]}
    assert f[EVIL]["bins"][-2]["bin"] == "(other/unknown)" and f[EVIL]["bins"][-2]["actual"] == 1.0
    assert f["amount"]["missing"] == 1


def test_monitor_over_a_real_decision_log(tmp_path: Path, pki, frames, capsys) -> None:  # noqa: F811
    """``fedcredit score`` writes the decision log through the scoring service (label party + a passive
    party over mutual TLS); ``fedcredit party monitor`` reads it: the training population is stable, a
    shifted one is 'act'; the label party's report lists only its own features and the joint score."""
    import pandas as pd
    from test_scoring import GUEST_CSV, HOST_CSV, N_FIT, _fit_lr, _host_loader, _install, _lr_parts, guest_toml

    from fedcredit.cli import main
    from fedcredit.data import load_table
    from fedcredit.monitor import save_reference
    from fedcredit.protocols import vertical_lr as vlr
    from party.models import ModelStore
    from party.scoring import ScoringService, serve

    lab, pas = _fit_lr(frames)
    run = "vlr-mon"
    _install(tmp_path, pki, run, _lr_parts(lab, pas))
    host_store = ModelStore(tmp_path / "host" / "models", party="host",
                            federation_public_key=pki["ca"] / "federation-signing.pub")
    host = serve(ScoringService("host", host_store, identity=pki["host"], table_loader=_host_loader), pki["host"])
    # the training reference, as the label party saves it at the end of the run
    train = load_table(GUEST_CSV, party="guest", feature_cols=lab.feature_names).take(np.arange(N_FIT))
    hx = load_table(HOST_CSV, party="host", feature_cols=pas.feature_names).take(np.arange(N_FIT))
    p_train = vlr.combine(lab, train.X, [vlr.passive_partial_scores(pas, hx.X)])
    save_reference(tmp_path / "guest" / "models" / run, build_reference(train, p_train, run_id=run, party="guest"))
    g, feats = frames[0], lab.feature_names
    try:
        def config(name: str) -> Path:
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(guest_toml(tmp_path, pki, host.address,
                                      scoring=f"decision_log = \"{tmp_path / (name + '.jsonl')}\"\n"))
            return cfg

        same, moved = config("same"), config("moved")
        rows = g.iloc[N_FIT:N_FIT + 1500].drop(columns=["y"])
        rows.to_csv(tmp_path / "same.csv", index=False)
        shifted = rows.copy()
        big = feats[int(np.argmax(np.abs(lab.weights)))]  # the label party's most influential feature drifts
        shifted[big] = shifted[big] + 2.5 * float(g[big].std())
        shifted.to_csv(tmp_path / "moved.csv", index=False)
        for cfg, name in ((same, "same"), (moved, "moved")):
            assert main(["score", "--config", str(cfg), "--batch-size", "256", str(tmp_path / f"{name}.csv"),
                         str(tmp_path / f"{name}-out.csv")]) == 0
        logged = json.loads((tmp_path / "same.jsonl").read_text().splitlines()[0])
        assert set(logged["features"]) == set(feats)  # the label party's own inputs only
        own = g.set_index(g["id"].astype(str)).loc[str(logged["id"]), feats]  # the guest's values, not the host's
        assert logged["features"] == pytest.approx(dict(zip(feats, map(float, own), strict=True)))
        capsys.readouterr()

        assert main(["party", "monitor", "--config", str(same), "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        doc = json.loads((tmp_path / "guest" / "models" / run / "monitor.json").read_text())["psi"]
        assert printed == doc
        assert doc["n_decisions"] == 1500 and doc["score"]["band"] == "stable"
        assert {f["name"] for f in doc["features"]} == set(feats)
        assert all(f["band"] == "stable" for f in doc["features"]), [(f["name"], f["psi"]) for f in doc["features"]]

        out_html = tmp_path / "moved-monitor.html"
        assert main(["party", "monitor", "--config", str(moved), "--run", run, "--out", str(out_html)]) == 0
        console_out = capsys.readouterr().out
        moved_doc = json.loads((tmp_path / "moved-monitor.json").read_text())["psi"]
        worst = moved_doc["features"][0]
        assert worst["name"] == big and worst["band"] == "act"
        assert moved_doc["score"]["band"] in ("watch", "act")
        assert big in console_out and "act" in console_out and str(out_html) in console_out
        page = Page(out_html.read_text())
        assert page.sections == ["psi"]
        _self_contained(page)
        assert len(page.images()) == 2 + len(feats)  # the PSI overview + one chart per item (score + features)
        assert pd.read_csv(tmp_path / "moved-out.csv").shape[0] == 1500
        # a run with no decisions is a clear error, naming the log
        assert main(["party", "monitor", "--config", str(same), "--run", "nope"]) == 2
        assert "no decision of run 'nope'" in capsys.readouterr().err
    finally:
        host.stop(0)


def test_report_files_are_owner_only(tmp_path: Path) -> None:
    path = write_report({"title": "t", "data": {"rows": 0, "features": [], "n_features": 0, "what": "rows"}}, tmp_path)
    assert (path.stat().st_mode & 0o077) == 0 and ((tmp_path / "report.json").stat().st_mode & 0o077) == 0


def test_cli_prints_each_partys_report_path_at_the_end_of_a_run() -> None:
    """``fedcredit train`` / ``status`` print the run record (``print_run``): each party's report path, as the
    party's public reply carries it (relative to that party's state dir)."""
    import io

    from rich.console import Console

    from fedcredit.progress import print_run
    from protos import control_pb2

    result = {"global": {"auc": 0.8, "ks": 0.5, "n_test": 10},
              "parties": {"bank": {"role": "label", "report": "models/r-9/report.html"},
                          "fintech": {"role": "passive", "report": "models/r-9/report.html"},
                          "telco": {"role": "passive", "report": None}}}  # a report that could not be written
    info = control_pb2.RunInfo(run_id="r-9", name="j", type="vertical-lr", status="finished",
                               result_json=json.dumps(result))
    out = io.StringIO()
    print_run(info, Console(file=out, width=200, markup=False))
    lines = out.getvalue().splitlines()
    assert "    bank: <state_dir>/models/r-9/report.html" in lines
    assert "    fintech: <state_dir>/models/r-9/report.html" in lines
    assert not any("telco:" in x for x in lines)


def test_binning_step_output_is_picked_up_and_both_selection_shapes_render(tmp_path: Path) -> None:
    """The binning step writes ``binning.json`` (``binning`` + ``selection``) beside the model part; the
    vertical hook renders it.  A passive party's own tables may have counts only (no label-derived column)."""
    from fedcredit.report import vertical_report

    model_dir = tmp_path / "models" / "r-3"
    model_dir.mkdir(parents=True)
    passive_tables = [{"feature": EVIL, "owner": "fintech", "kind": "categorical", "labels": ["a", "b", "missing"],
                       "counts": [200, 193, 7], "selected": True}]
    sel = {"min_iv": 0.02, "features": [{"feature": EVIL, "owner": "fintech", "selected": True},
                                        {"feature": "amount", "owner": "fintech", "selected": False}],
           "selected": [EVIL]}
    (model_dir / "binning.json").write_text(json.dumps({"binning": passive_tables, "selection": sel}))
    t = _table()
    t.y = None
    rel = vertical_report(model_dir=model_dir, state_dir=tmp_path, train=t,
                          reply={"role": "passive", "type": "vertical-lr", "run_id": "r-3", "bytes_sent": 10})
    assert rel == "models/r-3/report.html"
    doc = json.loads((model_dir / "report.json").read_text())
    assert doc["binning"] == passive_tables and doc["selection"] == sel
    page = Page((model_dir / "report.html").read_text())
    assert page.sections == ["run", "data", "binning", "selection", "sent", "privacy"]
    _self_contained(page)
    text = page.all_text
    assert "rule: IV ≥ 0.0200" in text and "held by fintech" in text and "193" in text
    # the other documented selection shape: selected / dropped lists
    html = render_html({"selection": {"threshold": 0.1, "selected": ["a"], "dropped": [{"feature": "b", "iv": 0.01}]}})
    assert "rule: IV ≥ 0.1000" in Page(html).all_text and "0.0100" in Page(html).all_text
