"""Differential privacy options (fedcredit/dp.py, [model.dp]): the accountant, clipping, noise, reports, bad params."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from rich.console import Console
from scipy.optimize import brentq
from scipy.stats import norm

from fedcredit import dp
from fedcredit.config import JobConfig, parse_job_text
from fedcredit.errors import ConfigError
from fedcredit.jobs import horizontal_public_result
from fedcredit.params import HorizontalDP, HorizontalJob, LabelDP, SecureBoostConfig, VerticalLRConfig
from fedcredit.protocols import secureboost as sb
from fedcredit.protocols.horizontal import run_coordinator
from fedcredit.transport import WireRecord
from simulations.generator import write_bank_files
from simulations.horizontal_sim import make_local_federation
from simulations.inprocess import run_secureboost_inprocess, run_vertical_lr_inprocess
from simulations.scenario_data import prepare_vertical_data
from simulations.vertical_sim import run_vertical_inprocess

# --------------------------------------------------------------------------- the accountant


def _exact_gaussian_epsilon(z: float, releases: int, delta: float) -> float:
    """ε of ``releases`` Gaussian mechanisms of noise multiplier z, exactly: their composition is one Gaussian
    mechanism of noise multiplier z/√releases (μ-GDP, μ = √releases/z), and δ(ε) of a Gaussian is Balle & Wang's."""
    mu = math.sqrt(releases) / z

    def d(eps: float) -> float:
        return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2))) - delta

    return float(brentq(d, 0.0, 5000.0))


@pytest.mark.parametrize(("z", "releases", "delta"), [(1.0, 1, 1e-5), (1.1, 10, 1e-5), (3.0, 30, 1e-6), (0.8, 300, 1e-5)])
def test_epsilon_is_the_librarys_rdp_figure_and_bounds_the_exact_one(z: float, releases: int, delta: float) -> None:
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z), releases)
    eps = dp.epsilon(z, releases, delta)
    assert eps == pytest.approx(acc.get_epsilon(delta), rel=1e-12)
    exact = _exact_gaussian_epsilon(z, releases, delta)
    # RDP is an upper bound of the true ε (never an under-report), and a tight one for the Gaussian
    assert exact <= eps <= 1.35 * exact + 0.2
    # the classical RDP → (ε, δ) conversion (Mironov 2017, Prop. 3) bounds the library's improved one
    classical = min(releases * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in np.linspace(1.01, 500, 50_000))
    assert eps <= classical + 1e-9


def test_calibration_reaches_the_target_without_overspending() -> None:
    for target, releases in [(1.0, 10), (8.0, 30), (64.0, 25)]:
        z = dp.calibrate(target, releases, 1e-5)
        assert dp.epsilon(z, releases, 1e-5) <= target
        assert dp.epsilon(z * 0.999, releases, 1e-5) > target  # the smallest such noise, to 0.1 %
    assert dp.epsilon(1.0, 0, 1e-5) == 0.0
    with pytest.raises(ConfigError, match=r"\[model.dp\].epsilon = 1e-06.*cannot be reached"):
        dp.calibrate(1e-6, 10_000, 1e-9)


# --------------------------------------------------------------------------- clipping and noise


def _plan(z: float, clip: float) -> dp.GaussianPlan:
    return dp.GaussianPlan("test", z, clip, 10, 1e-5, None, "u", "r", "p")


def test_clipping_bounds_one_banks_influence_on_the_sum_whatever_its_update() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=25)
    updates = [g + rng.normal(scale=s, size=25) for s in (0.01, 3.0, 1e6)]
    noiseless = _plan(1e-300, 0.5)  # the noise is tested below: here only the clipped part of the reply
    replies = [dp.private_update(u, g, noiseless, 3, rng) for u in updates]
    for u, r in zip(updates, replies):
        assert np.linalg.norm(r - g) <= 0.5 + 1e-12
        if np.linalg.norm(u - g) <= 0.5:
            np.testing.assert_allclose(r, u)  # short updates pass unchanged
        else:  # long ones keep their direction
            assert np.dot(r - g, u - g) / (np.linalg.norm(r - g) * np.linalg.norm(u - g)) == pytest.approx(1.0)
    # the attacker's best: replace one bank's update by anything at all -> the sum moves by at most 2*clip (replace)
    # and by at most clip when a bank is added or removed (the unit the accountant uses)
    for evil in (np.full(25, 1e9), -updates[1], rng.normal(size=25) * 1e4):
        other = replies[:2] + [dp.private_update(evil, g, noiseless, 3, rng)]
        assert np.linalg.norm(sum(other) - sum(replies)) <= 2 * 0.5 + 1e-9
    assert np.linalg.norm(sum(replies[:2]) - sum(replies) + g) <= 0.5 + 1e-9


def test_noise_std_is_as_calibrated() -> None:
    rng = np.random.default_rng(42)
    z, clip, banks, n = 2.5, 0.4, 3, 200_000
    plan = _plan(z, clip)
    g = np.zeros(n)
    per_bank = [dp.private_update(g, g, plan, banks, rng) for _ in range(banks)]  # zero updates: pure noise
    for r in per_bank:
        assert np.std(r) == pytest.approx(z * clip / math.sqrt(banks), rel=0.01)
        assert abs(np.mean(r)) < 5 * z * clip / math.sqrt(banks * n)
    assert np.std(sum(per_bank)) == pytest.approx(z * clip, rel=0.01)  # the sum carries the calibrated σ
    assert abs(np.corrcoef(per_bank[0], per_bank[1])[0, 1]) < 0.01  # independent shares
    lab = dp.LabelNoise(dp.label_plan(LabelDP(noise_multiplier=1.7), 5, "vertical-lr"), np.random.default_rng(1))
    v = np.where(np.arange(n) % 2 == 0, 0.3, -0.7)
    noisy = lab.noisy(v)
    assert np.std(noisy - v) == pytest.approx(1.7, rel=0.01)  # sensitivity 1: std = noise multiplier
    assert abs(np.mean(noisy - v)) < 5 * 1.7 / math.sqrt(n)
    # by default the noise is fresh from the OS, not from any seed a peer could know
    a = dp.LabelNoise(lab.plan).noisy(np.zeros(8))
    b = dp.LabelNoise(lab.plan).noisy(np.zeros(8))
    assert not np.array_equal(a, b)


# --------------------------------------------------------------------------- runs report ε


@pytest.fixture(scope="module")
def small_banks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bank_files(tmp_path_factory.mktemp("gen"), n_banks=3, rows_per_bank=1200, test_rows=900, seed=11)


def test_horizontal_job_with_client_dp_clips_noises_and_reports_epsilon(small_banks: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    train = {p: small_banks[p] for p in small_banks if p != "test"}
    seen: dict[str, list[tuple[str, np.ndarray]]] = {p: [] for p in train}
    fed = make_local_federation(train, {p: small_banks["test"] for p in train}, tmp_path,
                                tap=lambda party, what, v: seen[party].append((what, v)))
    job = HorizontalJob(run_id="dp1", parties=list(train), rounds=4, newton_rounds=0,
                        dp=HorizontalDP(epsilon=6.0, delta=1e-5, clip=0.3))
    res = run_coordinator(fed.channel, job)
    d = res.privacy["dp"]
    z = dp.calibrate(6.0, 4, 1e-5)
    assert d["noise_multiplier"] == pytest.approx(z) and d["epsilon"] <= 6.0
    assert d["epsilon"] == pytest.approx(dp.epsilon(z, 4, 1e-5), abs=1e-6) and d["releases"] == 4
    assert d["delta"] == 1e-5 and d["clip"] == 0.3 and d["noise_std"] == pytest.approx(0.3 * z)
    assert d["noise_std_per_bank"] == pytest.approx(0.3 * z / math.sqrt(3))
    assert d["epsilon_if_update_seen"] > d["epsilon"]  # one bank's own share is less noise than the sum's
    assert horizontal_public_result(res)["privacy"] == res.privacy  # the coordinator's run record keeps it
    # what each bank encrypted: weight 1 (not its sample count), and updates within clip + noise of each other
    for p in train:
        ups = [v for w, v in seen[p] if w == "update"]
        assert len(ups) == 4 and all(u[-1] == 1.0 for u in ups)
    saved = json.loads(next((tmp_path).rglob("global_model.json")).read_text())
    assert saved["meta"]["privacy"]["dp"]["epsilon"] == d["epsilon"]  # each bank's own run JSON
    assert res.global_metrics is not None and res.global_metrics["auc"] is not None


@pytest.fixture(scope="module")
def vertical_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("vdata")
    return prepare_vertical_data({"source": "vertical-generated", "rows": 1500, "seed": 5}, tmp / "data",
                                 tmp / "scenario.toml")


def _tables(data: dict):  # type: ignore[no-untyped-def]
    from fedcredit.data import load_table

    g = load_table(data["bank"]["train"]["path"], party="bank", label_col=data["bank"]["train"].get("label_column", "y"))
    h = load_table(data["fintech"]["train"]["path"], party="fintech")
    return g, h


def test_vertical_lr_label_dp_noises_every_step_runs_a_fixed_schedule_and_reports_epsilon(
        vertical_data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    g, h = _tables(vertical_data)
    calls: list[int] = []
    real = dp.LabelNoise.noisy
    monkeypatch.setattr(dp.LabelNoise, "noisy", lambda self, v: (calls.append(len(v)), real(self, v))[1])
    cfg = VerticalLRConfig(max_epochs=3, full_batch_steps=4, validation_fraction=0.0, tol=0.5, min_batch=256,
                           batch_size=512, dp=LabelDP(noise_multiplier=2.0, delta=1e-6))
    wire: list[WireRecord] = []
    res = run_vertical_lr_inprocess(g, {"fintech": h}, cfg, observers=[wire.append])
    lab = res.label
    # every residual that the label party encrypts went through the noise (one call per step, batch rows each)
    assert len(calls) == lab.steps and sum(calls[-4:]) == 4 * calls[-1]
    # the whole schedule ran (tol = 0.5 would have stopped it at once without DP): no control bit came from a label
    assert lab.epochs_run == 3 + 4
    ctl = [json.loads(r.payload) for r in wire if r.tag.startswith(f"{cfg.tag_prefix}/ctl") or "/ctl" in r.tag]
    assert len(ctl) == 7 and all(c["improved"] for c in ctl) and [c["stop"] for c in ctl] == [False] * 6 + [True]
    d = lab.privacy["dp"]
    assert d["releases"] == 7 and d["noise_multiplier"] == 2.0 and d["sensitivity"] == 1.0
    assert d["epsilon"] == pytest.approx(dp.epsilon(2.0, 7, 1e-6), abs=1e-6) and d["delta"] == 1e-6


def test_secureboost_label_dp_reports_epsilon_and_starts_from_no_label(vertical_data: dict) -> None:
    import pandas as pd

    gdf = pd.read_csv(vertical_data["bank"]["train"]["path"], dtype={"id": str})
    hdf = pd.read_csv(vertical_data["fintech"]["train"]["path"], dtype={"id": str})
    cfg = SecureBoostConfig(n_trees=3, max_depth=2, dp=LabelDP(epsilon=10.0))
    r = run_secureboost_inprocess(gdf, {"fintech": hdf}, cfg)
    d = r.label.report["privacy"]["dp"]
    z = dp.calibrate(10.0, 3, 1e-5)
    assert d["releases"] == 3 and d["noise_multiplier"] == pytest.approx(z) and d["epsilon"] <= 10.0
    assert r.label.model.base_score == 0.0  # the base score would be a function of the labels' mean
    no_dp = run_secureboost_inprocess(gdf, {"fintech": hdf}, SecureBoostConfig(n_trees=3, max_depth=2))
    assert no_dp.label.model.base_score != 0.0 and "privacy" not in no_dp.label.report


def test_federated_secureboost_with_label_dp_is_the_reference_given_the_same_noise(
        vertical_data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_dp's SecureBoost curve is the plaintext reference with the hook: with the same noise draws the real
    federated run (CKKS histograms) scores exactly as that reference does."""
    import pandas as pd

    from simulations.bench_dp import _sb_reference

    gdf = pd.read_csv(vertical_data["bank"]["train"]["path"], dtype={"id": str})
    hdf = pd.read_csv(vertical_data["fintech"]["train"]["path"], dtype={"id": str})
    common = sorted(set(gdf["id"]) & set(hdf["id"]))
    test = set(common[::5])
    cfg = SecureBoostConfig(n_trees=4, max_depth=3, dp=LabelDP(noise_multiplier=2.0))
    init = dp.LabelNoise.__init__
    monkeypatch.setattr(dp.LabelNoise, "__init__", lambda self, plan_, rng=None: init(self, plan_,
                                                                                      np.random.default_rng(123)))
    fed = run_secureboost_inprocess(gdf, {"fintech": hdf}, cfg, test_ids=test)
    ref = _sb_reference(gdf[gdf["id"].isin(common)], hdf, test, cfg, dp.LabelNoise(dp.label_plan(cfg.dp, 4, "secureboost")))
    assert fed.label.test_auc == pytest.approx(ref, abs=1e-9)
    plain = _sb_reference(gdf[gdf["id"].isin(common)], hdf, test, cfg.model_copy(update={"dp": None}), None)
    assert abs(plain - ref) > 1e-4  # the noise did change the model


def test_vertical_job_with_dp_reports_epsilon_at_both_parties(vertical_data: dict, tmp_path: Path) -> None:
    """The real party code path (vertical_jobs, PSI, split) of a [model.dp] job: ε in both run JSONs."""
    job = JobConfig.model_validate({"job": {"type": "vertical-lr", "parties": ["bank", "fintech"],
                                            "label_party": "bank", "round_timeout_s": 300.0},
                                    "model": {"test_fraction": 0.2, "max_epochs": 2, "full_batch_steps": 2,
                                              "validation_fraction": 0.0, "dp": {"epsilon": 4.0}}})
    rep = run_vertical_inprocess(job, vertical_data, tmp_path / "out", Console(quiet=True))
    z = dp.calibrate(4.0, 4, 1e-5)
    for p in ("bank", "fintech"):
        d = rep["parties"][p]["privacy"]["dp"]
        assert d["releases"] == 4 and d["noise_multiplier"] == pytest.approx(z) and d["epsilon"] <= 4.0
    saved = json.loads((Path(rep["models"]["bank"]) / "vertical_job.json").read_text())
    assert saved["privacy"]["dp"]["epsilon"] == rep["parties"]["bank"]["privacy"]["dp"]["epsilon"]


# --------------------------------------------------------------------------- bad parameters


JOB = """[job]
type = "{type}"
parties = ["a", "b"]
{label}
[model]
{model}
[model.dp]
{dp}
"""


@pytest.mark.parametrize(("jtype", "model", "dp_table", "message"), [
    ("horizontal", "newton_rounds = 0", "epsilon = 1.0\nclip = -1",
     r"job.toml: \[model.dp\].clip: Input should be greater than 0"),
    ("horizontal", "", "epsilon = 1.0", r"job.toml: \[model\]: \[model.dp\] needs \[model\].newton_rounds = 0 \(got 8\)"),
    ("horizontal", "newton_rounds = 0", "epsilon = 1.0\nnoise_multiplier = 2.0",
     r"\[model.dp\]: set exactly one of \[model.dp\].noise_multiplier .* got both"),
    ("horizontal", "newton_rounds = 0", "clip = 1.0", r"\[model.dp\]: set exactly one of .* got neither"),
    ("horizontal", "newton_rounds = 0", "epsilon = 1.0\ndelta = 0.5",
     r"\[model.dp\].delta: Input should be less than or equal to 0.01"),
    ("horizontal", "newton_rounds = 0", "epsilon = 0", r"\[model.dp\].epsilon: Input should be greater than 0"),
    ("horizontal", "newton_rounds = 0", "epsilon = 1.0\nsigma = 2", r"\[model.dp\].sigma: unknown field \(typo\?\)"),
    ("vertical-lr", "", "epsilon = 1.0", r"\[model\]: \[model.dp\] needs \[model\].validation_fraction = 0"),
    ("vertical-lr", "validation_fraction = 0", "epsilon = 1.0\nclip = 1", r"\[model.dp\].clip: unknown field"),
    ("secureboost", "", 'noise_multiplier = "2"', r"\[model.dp\].noise_multiplier: expected a number, got '2'"),
    ("secureboost", "", "noise_multiplier = inf", r"\[model.dp\].noise_multiplier: Input should be a finite number"),
])
def test_bad_dp_parameters_are_errors_naming_the_key(jtype: str, model: str, dp_table: str, message: str) -> None:
    text = JOB.format(type=jtype, label='label_party = "a"' if jtype != "horizontal" else "", model=model, dp=dp_table)
    with pytest.raises(ConfigError, match=message):
        parse_job_text(text, "job.toml")


def test_dp_is_off_by_default_and_on_with_the_table() -> None:
    for jtype in ("horizontal", "vertical-lr", "secureboost"):
        text = JOB.format(type=jtype, label='label_party = "a"' if jtype != "horizontal" else "", model="",
                          dp="").replace("[model.dp]\n", "")
        assert parse_job_text(text, "job.toml").model.dp is None
    on = parse_job_text(JOB.format(type="secureboost", label='label_party = "a"', model="", dp="epsilon = 2.0"),
                        "job.toml")
    assert on.model.dp == LabelDP(epsilon=2.0) and sb.SecureBoostConfig().dp is None
