"""Decision layer (fedcredit/decision.py): points scale, thresholds, credit limits, reason codes, config."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from fedcredit.decision import (
    Contributions,
    DecisionPolicy,
    LimitPolicy,
    ScoreScale,
    Thresholds,
    decide,
    load_decision_policy,
    lr_contributions,
    pd_from_score,
    score_from_pd,
    tree_contributions,
)
from fedcredit.errors import ConfigError, DataError
from fedcredit.metrics import sigmoid

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"


@pytest.fixture(scope="module")
def doc_policy(tmp_path_factory: pytest.TempPathFactory) -> DecisionPolicy:
    """The example [decision] section from docs/deployment.md (so the documented example stays valid)."""
    text = DOC.read_text()
    m = re.search(r"<!-- decision-example.*?-->\s*```toml\n(.*?)```", text, re.S)
    assert m, "docs/deployment.md lost its decision-example TOML block"
    p = tmp_path_factory.mktemp("cfg") / "decision.toml"
    p.write_text(m.group(1))
    return load_decision_policy(p)


def test_points_scale_hand_numbers() -> None:
    s = ScoreScale(base_points=600, base_odds=50, pdo=20)
    assert score_from_pd(1 / 51, s) == pytest.approx(600.0)  # odds 50:1
    assert score_from_pd(1 / 101, s) == pytest.approx(620.0)  # odds doubled: +PDO
    assert score_from_pd(1 / 26, s) == pytest.approx(580.0)  # odds halved: -PDO
    assert score_from_pd(1 / 201, s) == pytest.approx(640.0)
    assert score_from_pd(0.5, s) == pytest.approx(600 - 20 * math.log2(50))  # 487.12
    assert s.factor == pytest.approx(28.8539, abs=1e-4) and s.offset == pytest.approx(487.1229, abs=1e-4)
    for score in (480.0, 560.0, 620.0):
        assert score_from_pd(pd_from_score(score, s), s) == pytest.approx(score)
    # other scales: 660 points at 72:1, PDO 40
    s2 = ScoreScale(base_points=660, base_odds=72, pdo=40)
    assert score_from_pd(1 / 145, s2) == pytest.approx(700.0)
    # PD 0 / 1 stay finite (clipped)
    assert math.isfinite(score_from_pd(0.0, s)) and math.isfinite(score_from_pd(1.0, s))


def test_documented_policy_decisions_and_limits(doc_policy: DecisionPolicy) -> None:
    p = doc_policy
    assert (p.scale.base_points, p.scale.base_odds, p.scale.pdo) == (600, 50, 20)
    cases = [
        # pd, exposure -> score, decision, limit, band
        (1 / 101, 6000, 620.0, "approve", 12000.0, 0),  # x2
        (1 / 51, 10000, 600.0, "approve", 15000.0, 0),  # 20000 capped at max_limit
        (1 / 13.5, 10250, 560.0, "approve", 10000.0, 1),  # exactly on the approve line; x1 rounded down to 500s
        (0.2, 1500, 527.12, "refer", 1000.0, 2),  # 750 -> 500 (round) -> 1000 (min_limit)
        (1 / (1 + 50 / 32), 10000, 500.0, "refer", 2500.0, 3),  # exactly on the decline line is not a decline
        (0.5, 10000, 487.12, "decline", 0.0, None),
    ]
    for pd, exposure, score, decision, limit, band in cases:
        d = decide(pd, None, exposure, p)
        assert d.score == pytest.approx(score, abs=0.005), pd
        assert (d.decision, d.credit_limit, d.limit_band) == (decision, limit, band), pd
        assert d.odds == pytest.approx((1 - pd) / pd)


def test_pd_thresholds_and_limit_edge_cases() -> None:
    lim = LimitPolicy(bands=[{"max_pd": 0.05, "multiplier": 1.0}, {"max_pd": 0.3, "multiplier": 0.0}],
                      exposure_feature="income", default_exposure=4000)
    p = DecisionPolicy(thresholds=Thresholds(on="pd", approve=0.1, decline=0.5), limit=lim)
    assert decide(0.1, None, 1000, p).decision == "approve"
    assert decide(0.1000001, None, 1000, p).decision == "refer"
    assert decide(0.5, None, 1000, p).decision == "refer"
    assert decide(0.51, None, 1000, p).decision == "decline"
    d = decide(0.04, None, None, p)  # no exposure in the request: the configured default, noted
    assert d.credit_limit == 4000.0 and "default_exposure" in d.notes[0]
    assert decide(0.2, None, 1000, p).credit_limit == 0.0  # band with multiplier 0
    d = decide(0.4, None, 1000, p)  # refer, but above every band
    assert d.decision == "refer" and d.credit_limit == 0.0 and "above every limit band" in d.notes[0]
    strict = DecisionPolicy(limit=LimitPolicy(bands=[{"max_pd": 0.5, "multiplier": 1}], exposure_feature="income"))
    with pytest.raises(DataError, match="needs the application's 'income' value"):
        decide(0.01, None, None, strict)
    with pytest.raises(DataError, match="finite non-negative"):
        decide(0.01, None, float("nan"), strict)
    assert decide(0.01, None, None, DecisionPolicy()).credit_limit is None  # no limit policy configured
    no_refer = DecisionPolicy(limit=LimitPolicy(bands=[{"max_pd": 1.0, "multiplier": 1}], limit_on_refer=False))
    assert decide(0.2, None, 100, no_refer).credit_limit == 0.0  # default thresholds: 0.2 -> refer


def test_bad_pd_is_refused() -> None:
    for bad in (float("nan"), -0.1, 1.5, "x", None):
        with pytest.raises(DataError, match="probability of default"):
            decide(bad, None, None, DecisionPolicy())


def test_reason_codes_top_k_and_party_aggregates(doc_policy: DecisionPolicy) -> None:
    c = Contributions(
        features={"PAY_0": 0.8, "LIMIT_BAL": -0.3, "AGE": 0.1, "BILL_AMT1": 0.25},
        parties={"fintech": 0.4, "ecom": -0.2},
        baseline=-1.3,
    )
    assert c.logit == pytest.approx(-0.25)
    d = decide(c.pd, c, 6000, doc_policy)
    assert [(r.name, r.source) for r in d.reasons] == [
        ("PAY_0", "feature"), ("BILL_AMT1", "feature"), ("fintech", "party"), ("ecom", "party")]
    name, contrib = d.reasons[0]  # unpacks as (feature-or-party, contribution)
    assert (name, contrib) == ("PAY_0", 0.8)
    assert d.reasons[0].code == "R01 recent repayment delay" and d.reasons[2].code.startswith("P01")
    assert d.reasons[1].code is None
    assert d.party_contributions == {"fintech": 0.4, "ecom": -0.2}
    out = d.to_dict()
    assert out["reasons"][2] == {"name": "fintech", "contribution": 0.4, "source": "party",
                                 "code": "P01 payment behaviour at partner"}
    mag = doc_policy.model_copy(update={"reasons": doc_policy.reasons.model_copy(update={"order": "magnitude"})})
    assert [r.name for r in decide(c.pd, c, 6000, mag).reasons][:2] == ["PAY_0", "LIMIT_BAL"]
    # a plain mapping = all local features (horizontal model)
    assert [r.name for r in decide(0.1, {"a": 0.1, "b": 0.3}, None, DecisionPolicy()).reasons] == ["b", "a"]


def test_lr_contributions_reproduce_the_logit() -> None:
    w, z = [0.5, -1.0, 0.2], [2.0, -0.5, 1.0]
    c = lr_contributions(w, z, ["a", "b", "c"], intercept=-1.3, passive_partials={"fintech": 0.35})
    assert c.features == {"a": 1.0, "b": 0.5, "c": 0.2}
    assert c.parties == {"fintech": 0.35}
    assert c.logit == pytest.approx(-1.3 + 1.0 + 0.5 + 0.2 + 0.35)
    assert c.pd == pytest.approx(sigmoid(0.75)) == pytest.approx(1 / (1 + math.exp(-0.75)))
    with pytest.raises(DataError, match="one weight and one value per feature"):
        lr_contributions(w, z[:2], ["a", "b", "c"])
    with pytest.raises(DataError, match=r"\['b'\] are missing or not finite"):
        lr_contributions(w, [1.0, float("nan"), 0.0], ["a", "b", "c"])


def test_tree_contributions_saabas_hand_example() -> None:
    # tree 1: root splits on PAY_0 (value 0.0) -> a fintech-owned split (0.2) -> leaf 0.5
    # tree 2: root splits on AGE (-0.1) -> leaf -0.3
    paths = [[("PAY_0", 0.0), ("fintech", 0.2), (None, 0.5)], [("AGE", -0.1), (None, -0.3)]]
    c = tree_contributions(paths, passive_parties=["fintech", "ecom"], base_score=-1.0)
    assert c.features == pytest.approx({"PAY_0": 0.2, "AGE": -0.2})
    assert c.parties == pytest.approx({"fintech": 0.3, "ecom": 0.0})  # every passive party reported
    assert c.baseline == pytest.approx(-1.1)
    assert c.logit == pytest.approx(-1.0 + 0.5 - 0.3)  # base score + leaf values
    with pytest.raises(DataError, match="empty decision path"):
        tree_contributions([[]])


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    def load(text: str) -> DecisionPolicy:
        p = tmp_path / "d.toml"
        p.write_text(text)
        return load_decision_policy(p)

    assert load("[party]\nname = 'bank'\n[decision]\n") == DecisionPolicy()  # defaults; other sections ignored
    with pytest.raises(ConfigError, match=r"d\.toml: \[decision\.thresholds\]: .*approve >= decline"):
        load("[decision.thresholds]\napprove = 500\ndecline = 600\n")
    with pytest.raises(ConfigError, match=r"\[decision\.scale\]\.pdo: .*greater than 0"):
        load("[decision.scale]\npdo = 0\n")
    with pytest.raises(ConfigError, match=r"\[decision\.scale\]\.base_point: unknown field"):
        load("[decision.scale]\nbase_point = 600\n")
    with pytest.raises(ConfigError, match="strictly increasing max_pd"):
        load("[decision.limit]\nbands = [{max_pd = 0.2, multiplier = 1}, {max_pd = 0.1, multiplier = 2}]\n")
    with pytest.raises(ConfigError, match="pd thresholds need"):
        load("[decision.thresholds]\non = 'pd'\napprove = 0.5\ndecline = 0.2\n")
    with pytest.raises(ConfigError, match="no \\[decision\\] section"):
        load("[party]\nname = 'x'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load("[decision\n")
    with pytest.raises(ConfigError, match="not found"):
        load_decision_policy(tmp_path / "missing.toml")


def test_decision_section_is_strict(tmp_path: Path) -> None:
    """The issue's cases: a typo in [decision.thresholds], an unknown subsection, a non-numeric threshold,
    in a dedicated file and inside a party config (where the party config's loader reads it)."""
    from fedcredit.config import load_party_config

    def load(text: str) -> str:
        p = tmp_path / "d.toml"
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_decision_policy(p)
        return str(e.value)

    assert load("[decision.thresholds]\naprove = 500\n").endswith("d.toml: [decision.thresholds].aprove: unknown field (typo?)")
    assert load("[decision.rules]\nx = 1\n").endswith("d.toml: [decision.rules]: unknown section (typo?)")
    assert load("[decision]\ncolour = 1\n").endswith("d.toml: [decision].colour: unknown field (typo?)")
    assert load("[decision.thresholds]\napprove = 'high'\n").endswith(
        "d.toml: [decision.thresholds].approve: expected a number, got 'high'")
    assert load("[decision.thresholds]\napprove = '560'\n").endswith(  # a quoted number is a mistake too
        "d.toml: [decision.thresholds].approve: expected a number, got '560'")
    assert "[other]: unknown section" in load("[decision]\n[other]\nx = 1\n")  # a dedicated file holds [decision] only

    party = tmp_path / "party.toml"
    party.write_text("[party]\nname = 'bank'\nidentity_dir = 'i'\nstate_dir = 's'\n"
                     "[coordinator]\nflower_address = 'h:1'\nrelay_address = 'h:2'\n"
                     "[decision.thresholds]\naprove = 500\n")
    with pytest.raises(ConfigError, match=r"party\.toml: \[decision\.thresholds\]\.aprove: unknown field"):
        load_party_config(party)


def test_documented_decision_example(doc_policy: DecisionPolicy) -> None:
    """The Decision.to_dict() example printed in docs/deployment.md."""
    c = Contributions(features={"PAY_0": 0.8, "LIMIT_BAL": -0.3, "AGE": 0.1, "BILL_AMT1": 0.25},
                      parties={"fintech": 0.4, "ecom": -0.2}, baseline=-2.6)
    d = decide(c.pd, c, 6000, doc_policy).to_dict()
    assert d["pd"] == pytest.approx(0.1751, abs=1e-4) and d["score"] == pytest.approx(531.85, abs=0.005)
    assert (d["decision"], d["credit_limit"], d["limit_band"]) == ("refer", 3000.0, 2)  # 0.5 x 6000
    assert [r["name"] for r in d["reasons"]] == ["PAY_0", "BILL_AMT1", "fintech", "ecom"]
