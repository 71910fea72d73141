"""fedcredit/privacy.py: the leakage tables as data, and each run's privacy report built from them.

The tables are checked against real transcripts (every message kind the protocols send is
declared, with its form), docs/leakage.md is generated from them, and the report section
shows DP parameters and ε when the run JSON has them and the measured attacks for the
configuration used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedcredit import privacy
from fedcredit.data import load_table
from fedcredit.params import SecureBoostConfig, VerticalLRConfig
from fedcredit.transport import WireRecord
from simulations.inprocess import run_secureboost_inprocess, run_vertical_lr_inprocess

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _kind(tag: str) -> str:  # as CountingTransport.sent_by_tag counts it
    return "/".join(seg for seg in tag.split("/") if not seg.isdigit())


def test_docs_leakage_md_is_generated_from_the_tables() -> None:
    assert (ROOT / "docs" / "leakage.md").read_text(encoding="utf-8") == privacy.markdown(), \
        "run: python -m fedcredit.privacy > docs/leakage.md"


def test_every_message_of_real_vertical_runs_is_declared_with_its_form() -> None:
    g = load_table(DATA / "default_credit_hetero_guest.csv", party="guest", label_col="y")
    h = load_table(DATA / "default_credit_hetero_host.csv", party="host")
    ids = g.ids[:900]
    wire: list[WireRecord] = []
    for weights in ("shared", "plaintext"):  # the default and the other mode: both transcripts are declared
        run_vertical_lr_inprocess(g.align(ids), {"host": h.align(ids)},
                                  VerticalLRConfig(max_epochs=1, full_batch_steps=1, passive_weights=weights),
                                  test_ids=set(ids[:200]), observers=[wire.append])
    gdf = pd.read_csv(DATA / "default_credit_hetero_guest.csv", dtype={"id": str}).iloc[:600]
    hdf = pd.read_csv(DATA / "default_credit_hetero_host.csv", dtype={"id": str})
    run_secureboost_inprocess(gdf, {"host": hdf[hdf["id"].isin(set(gdf["id"]))]},
                              SecureBoostConfig(n_trees=1, max_depth=2), test_ids=set(gdf["id"][:100]),
                              observers=[wire.append])
    kinds = {_kind(r.tag) for r in wire}
    assert {"psi/s", "vlr/g", "vlr/gs", "vlr/wb", "vlr/wfinal", "sb.cmd", "sb.reply"} <= kinds
    undeclared = sorted(k for k in kinds if privacy.form_of(k) is None)
    assert not undeclared, f"message kinds missing from fedcredit/privacy.py: {undeclared}"
    assert privacy.form_of("vlr/r") == ("vertical-lr", "ciphertext", privacy.form_of("vlr/r")[2])  # type: ignore[index]
    assert privacy.form_of("vlr/g")[1] == "masked"  # type: ignore[index]


def _section(role: str, **kw):  # type: ignore[no-untyped-def]
    sent = [{"to": "bank", "tag": "vlr/g", "messages": 57, "bytes": 12_000_000},
            {"to": "bank", "tag": "vlr/unheard-of", "messages": 1, "bytes": 10}]
    return privacy.privacy_section(protocol="vertical-lr", role=role, sent_by_tag=sent, **kw)


def test_privacy_section_forms_rows_and_the_figures_of_the_configuration() -> None:
    default = _section("passive", config=VerticalLRConfig().model_dump())["attacks"]
    assert default["defence"] == "shared-weights" and default["entries"]  # the default's own measured figures
    assert all(e["value"] <= 0.55 for e in default["entries"] if e["attacker"] == "passive party"), default
    pv = _section("passive", config=VerticalLRConfig(passive_weights="plaintext").model_dump())
    forms = {r["tag"]: r["form"] for r in pv["sent"]}
    assert forms == {"vlr/g": "masked", "vlr/unheard-of": "undeclared"}  # an unknown kind is shown, never dropped
    assert {(r["protocol"], r["role"]) for r in pv["leakage"]} >= {("vertical-lr", "passive"), ("vertical-lr", "label")}
    att = pv["attacks"]
    assert att["mode"] == "default" and att["defence"] == "none" and pv["dp"] is None
    figs = {e["attacker"]: e for e in att["entries"]}
    assert figs["passive party"]["metric"] == "AUC" and figs["label party"]["metric"] == "median R²"
    assert figs["passive party"]["baseline"] == pytest.approx(0.5, abs=0.03)
    # a batch between measured sizes gets the figure of the next smaller one: an upper bound for it
    assert _section("label", config={"batch_size": 2000})["attacks"]["mode"] == "batch_size=512"
    assert _section("label", config={"batch_size": 0})["attacks"]["mode"] == "batch_size=0"


def test_dp_parameters_and_epsilon_are_shown_and_pick_the_nearest_measured_defence(tmp_path: Path) -> None:
    from fedcredit.report import REPORT_JSON, ReportBuilder

    dp = {"option": "label DP, vertical LR", "noise_multiplier": 3.2, "epsilon": 1.0, "target_epsilon": 1.0,
          "delta": 1e-5, "accountant": "RDP (dp-accounting 0.6.0, RdpAccountant)"}
    pv = _section("label", config={"batch_size": 4096}, privacy={"dp": dp})
    assert pv["dp"] == dp
    measured = {e["defence"] for e in privacy.attack_figures()["entries"] if e["mode"] == "default"}
    if "label-dp eps=1" in measured:
        assert pv["attacks"]["defence"] == "label-dp eps=1" and pv["attacks"]["entries"]
    b = ReportBuilder(party="bank", role="label", run_id="r1", job_type="vertical-lr")
    b.put("privacy", pv)
    html = b.write(tmp_path).read_text()
    assert "Privacy report" in html and "RdpAccountant" in html and "3.2000" in html
    assert json.loads((tmp_path / REPORT_JSON).read_text())["privacy"]["dp"]["epsilon"] == 1.0
    off = _section("label", config={})
    page = ReportBuilder(party="bank", role="label", run_id="r2", job_type="vertical-lr").put("privacy", off)
    assert "No DP option was on" in page.write(tmp_path / "off").read_text()


def test_shipped_figures_cover_both_protocols_and_the_default() -> None:
    doc = privacy.attack_figures()
    assert doc["format"] == "fedcredit-attack-figures/1" and doc["command"].startswith("python -m simulations.bench_attacks")
    keys = {(e["protocol"], e["mode"], e["defence"], e["attacker"]) for e in doc["entries"]}
    assert ("vertical-lr", "default", "none", "passive party") in keys
    assert ("secureboost", "hide_membership", "none", "passive party") in keys
    assert ("secureboost", "hidden-splits", "none", "passive party") in keys  # the default since issue 12
    assert all(e["metric"] in ("AUC", "median R²") for e in doc["entries"] if e["protocol"] != "horizontal")
    assert ("horizontal", "default", "none", "coordinator + one colluding bank (with the shared CKKS key)") in keys




def test_a_secureboost_run_with_label_dp_shows_the_label_dp_attack_figures_at_both_parties() -> None:
    """SecureBoost + [model.dp]: the label party's report has ε (its run JSON), the passive party only the job's
    [model.dp]; both show the label-inference figures measured with label DP at the nearest ε, in the run's mode."""
    keys = {(e["mode"], e["defence"]) for e in privacy.attack_figures()["entries"] if e["protocol"] == "secureboost"}
    assert {(m, f"label-dp eps={x}") for m in ("hide_membership", "per_level") for x in (8, 16, 64)} <= keys
    cfg = SecureBoostConfig(dp={"epsilon": 16.0}, passive_splits="revealed").model_dump()
    dp = {"option": "label (SecureBoost gradients)", "noise_multiplier": 1.985, "epsilon": 16.0, "target_epsilon": 16.0,
          "delta": 1e-5}
    sent = [{"to": "host", "tag": "sb.cmd", "messages": 90, "bytes": 1_000_000}]
    label = privacy.privacy_section(protocol="secureboost", role="label", sent_by_tag=sent, config=cfg,
                                    privacy={"dp": dp})
    passive = privacy.privacy_section(protocol="secureboost", role="passive", sent_by_tag=sent, config=cfg)
    for pv in (label, passive):
        att = pv["attacks"]
        assert (att["mode"], att["defence"], att["note"]) == ("hide_membership", "label-dp eps=16", ""), att
        fig = {e["attacker"]: e for e in att["entries"]}["passive party"]
        assert fig["metric"] == "AUC" and fig["baseline_name"] == "no information" and fig["joint_test_auc"] > 0.7
        assert "--sb-dp-only" in att["source"]  # the command that measured these entries, not the file's last
    none = {e["attacker"]: e for e in privacy.privacy_section(protocol="secureboost", role="label", sent_by_tag=sent,
                                                              config=SecureBoostConfig(passive_splits="revealed").model_dump()
                                                              )["attacks"]["entries"]}
    assert fig["value"] < none["passive party"]["value"]  # the DP figure is the lower one
    # the default (hidden splits) with DP: no DP figure was measured there; its no-DP figure (no partition reaches
    # the passive party, 0.5) applies, with a note saying so
    hid = privacy.privacy_section(protocol="secureboost", role="passive", sent_by_tag=sent,
                                  config=SecureBoostConfig(dp={"epsilon": 16.0}).model_dump())["attacks"]
    assert (hid["mode"], hid["defence"]) == ("hidden-splits", "none") and "without DP" in hid["note"]
    assert {e["attacker"]: e for e in hid["entries"]}["passive party"]["value"] <= 0.55
    near = privacy.privacy_section(protocol="secureboost", role="passive", sent_by_tag=sent,
                                   config=SecureBoostConfig(histogram_mode="per_level", dp={"epsilon": 10.0}).model_dump())
    assert (near["attacks"]["mode"], near["attacks"]["defence"]) == ("per_level", "label-dp eps=8")
    assert "nearest" in near["attacks"]["note"]
    z = privacy.privacy_section(protocol="secureboost", role="passive", sent_by_tag=sent,  # a noise multiplier: its ε
                                config=SecureBoostConfig(dp={"noise_multiplier": 0.718},
                                                         passive_splits="revealed").model_dump())
    assert z["attacks"]["defence"] == "label-dp eps=64", z["attacks"]


def test_a_real_vertical_lr_run_with_label_dp_reports_epsilon_at_the_label_party(tmp_path: Path) -> None:
    """fedcredit simulate (in-process, the same party code as a deployment): PSI + vertical LR with [model.dp]."""
    from rich.console import Console

    from simulations.harness import simulate

    text = (ROOT / "simulations" / "scenarios" / "vertical-lr-demo.toml").read_text()
    text = text.replace("rows = 8000", "rows = 2000").replace("max_epochs = 10", "max_epochs = 2\n"
                                                              "full_batch_steps = 3\nvalidation_fraction = 0.0")
    scen = tmp_path / "dp.toml"
    scen.write_text(text + "\n[model.dp]\nepsilon = 4.0\n")
    rep = simulate(str(scen), out_dir=tmp_path / "out", console=Console(quiet=True))
    models = {p: Path(d) for p, d in rep["models"].items()}
    lab = json.loads((models["bank"] / "report.json").read_text())["privacy"]
    pas = json.loads((models["fintech"] / "report.json").read_text())["privacy"]
    assert lab["dp"]["target_epsilon"] == 4.0 and 0 < lab["dp"]["epsilon"] <= 4.0 + 1e-6, lab["dp"]
    assert lab["attacks"]["defence"].startswith("label-dp") or lab["attacks"]["note"]
    # [model.dp] is part of the job both parties approved: the passive party reports the same parameters
    assert pas["dp"]["noise_multiplier"] == lab["dp"]["noise_multiplier"], pas["dp"]
    for pv in (lab, pas):
        assert pv["sent"] and all(r["form"] != "undeclared" for r in pv["sent"]), pv["sent"]
    assert {r["tag"]: r["form"] for r in pas["sent"]}["vlr/g"] == "masked"
    html = (models["bank"] / "report.html").read_text()
    assert "Privacy report" in html and "Differential privacy" in html and "RdpAccountant" in html


def test_a_horizontal_run_reports_what_each_bank_sent_and_the_secagg_rows(tmp_path: Path) -> None:
    """Every bank's run report has a privacy section: its replies per method (as the coordinator counted them),
    each with its declared form, the horizontal leakage rows, the secagg threshold and the measured
    coordinator-plus-one-bank attack."""
    from fedcredit.protocols.horizontal import HorizontalJob, run_coordinator
    from simulations.generator import write_bank_files
    from simulations.horizontal_sim import make_local_federation

    files = write_bank_files(tmp_path / "gen", n_banks=3, rows_per_bank=600, test_rows=300, seed=5)
    train = {p: f for p, f in files.items() if p != "test"}
    fed = make_local_federation(train, {p: files["test"] for p in train}, tmp_path / "fed")
    job = HorizontalJob(run_id="pv", parties=sorted(train), rounds=2, newton_rounds=1)
    run_coordinator(fed.channel, job)
    for p in train:
        pv = json.loads((fed.envs[p].output_dir / "pv" / "report.json").read_text())["privacy"]
        assert pv["protocol"] == "horizontal" and pv["role"] == "bank"
        sent = {r["tag"]: r for r in pv["sent"]}
        assert {"h/setup", "h/install_key", "h/fit", "h/finalize"} <= set(sent), sent
        assert sent["h/fit"]["messages"] == job.total_rounds and sent["h/fit"]["bytes"] > 0
        assert all(r["form"] != "undeclared" for r in pv["sent"]) and sent["h/fit"]["form"] == "ciphertext"
        roles = {r["role"] for r in pv["leakage"]}
        assert roles == {"bank", "coordinator / relay"}
        assert pv["secagg"]["threshold"] == 2
        assert [e["attacker"] for e in pv["attacks"]["entries"]] == ["coordinator + one colluding bank (with the "
                                                                    "shared CKKS key)"]
        html = (fed.envs[p].output_dir / "pv" / "report.html").read_text()
        assert "Privacy report" in html and "h/install_key" in html
