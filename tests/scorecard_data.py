"""Scorecard test material from the real raw credit table (``../shared/data/UCI_Credit_Card.csv``).

A label party (``guest``: limit, age, repayment status, and sex / education / marriage as
categorical text) and a passive party (``host``: bill and payment amounts, a categorical
repayment status); about 9 % of one amount column per party is blanked (missing).  Bins
and WOE come from :mod:`fedcredit.binning` on the pooled rows (the federated protocol
reproduces them exactly: its own tests); the WOE LR is fitted in plaintext with
scikit-learn — the scorecard path does not care how the weights were found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedcredit import binning
from fedcredit.binning import FeatureBins
from fedcredit.data import Table
from fedcredit.params import ScorecardParams
from fedcredit.protocols import vertical_lr as vlr
from fedcredit.protocols.binning.transform import BinningTransform
from fedcredit.protocols.vertical_common import Standardizer
from fedcredit.scorecard import Transform

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "UCI_Credit_Card.csv"
N_FIT = 4000
GUEST = {"LIMIT_BAL": "numeric", "AGE": "numeric", "PAY_0": "numeric", "SEX": "categorical",
         "EDUCATION": "categorical", "MARRIAGE": "categorical"}
GUEST_NUMERIC = {"LIMIT_BAL": "numeric", "AGE": "numeric", "PAY_0": "numeric"}
HOST = {"BILL_AMT1": "numeric", "PAY_AMT1": "numeric", "PAY_AMT2": "numeric", "PAY_2": "categorical"}
MISSING = {"LIMIT_BAL", "BILL_AMT1"}


def _table(df: pd.DataFrame, party: str, cols: dict[str, str], y: np.ndarray | None, *,
           blank: bool) -> Table:
    X = np.empty((len(df), len(cols)))
    cats: dict[str, list[str]] = {}
    rng = np.random.default_rng(9)
    for j, (c, kind) in enumerate(cols.items()):
        v = df[c]
        if kind == "categorical":
            text = v.astype(str)
            cats[c] = sorted(text.unique())
            pos = {s: k for k, s in enumerate(cats[c])}
            X[:, j] = [pos[s] for s in text]
        else:
            X[:, j] = v.to_numpy(dtype=np.float64)
        if blank and c in MISSING:
            X[rng.random(len(df)) < 0.09, j] = np.nan
    return Table(party, f"{RAW.name} ({party} columns)", [str(i) for i in df["ID"]], X, list(cols), y,
                 kinds=list(cols.values()), categories=cats)  # type: ignore[arg-type]


@dataclass
class Fitted:
    """Both parties' tables (all rows), bins, WOE, the joint WOE LR and both model parts with scorecards."""

    guest: Table
    host: Table
    y: np.ndarray
    bins: dict[str, list[FeatureBins]]
    woes: dict[str, list[list[float]]]
    label: vlr.LabelModel
    passive: vlr.PassiveModel
    transform: Transform

    def lr_logit(self, rows: slice | np.ndarray) -> np.ndarray:
        """The joint LR's logit on the transformed columns (what the scorecard must reproduce)."""
        return (self.label.intercept
                + self.label.standardizer.transform(self.design_matrix("guest", rows)) @ self.label.weights
                + self.passive.standardizer.transform(self.design_matrix("host", rows)) @ self.passive.weights)

    def design_matrix(self, party: str, rows: slice | np.ndarray) -> np.ndarray:
        t = self.guest if party == "guest" else self.host
        X = t.X[rows]
        if self.transform == "woe":
            return binning.woe_matrix(self.bins[party], self.woes[party], X)
        return binning.indicator_matrix(self.bins[party], X)[0]


def fit(*, transform: Transform = "woe", guest_cols: dict[str, str] = GUEST,
        blank: tuple[str, ...] = ("guest", "host"), params: ScorecardParams | None = None) -> Fitted:
    """``blank``: the parties whose amount column gets ~9 % missing values."""
    df = pd.read_csv(RAW)
    y = df["default.payment.next.month"].to_numpy(dtype=np.float64)
    guest = _table(df, "guest", guest_cols, y, blank="guest" in blank)
    host = _table(df, "host", HOST, None, blank="host" in blank)
    fit_rows = slice(0, N_FIT)
    bins: dict[str, list[FeatureBins]] = {}
    woes: dict[str, list[list[float]]] = {}
    for name, t in (("guest", guest), ("host", host)):
        res = binning.fit_table(t.take(np.arange(N_FIT)), y[:N_FIT], method="optimal", max_bins=6,
                                min_bin_size=0.05)
        bins[name] = [b for b, _ in res]
        woes[name] = [list(tb.woe) for _, tb in res]
    f = Fitted(guest, host, y, bins, woes, None, None, transform)  # type: ignore[arg-type]
    Dg, Dh = f.design_matrix("guest", fit_rows), f.design_matrix("host", fit_rows)
    sg, sh = Standardizer.fit(Dg), Standardizer.fit(Dh)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(np.hstack([sg.transform(Dg), sh.transform(Dh)]), y[:N_FIT])
    w = clf.coef_.ravel()
    wg, wh, b = w[: Dg.shape[1]], w[Dg.shape[1]:], float(clf.intercept_[0])
    tf = {p: BinningTransform(transform, tuple(bins[p]),
                              tuple(tuple(w) for w in woes[p]) if transform == "woe" else ())
          for p in ("guest", "host")}
    f.label = vlr.LabelModel("guest", tf["guest"].output_names, sg, wg, b, ["host"])
    f.passive = vlr.PassiveModel("host", tf["host"].output_names, sh, wh, "guest")
    # each party from its own block (the passive party from its own weights and bins, at home)
    vlr.with_scorecard(f.label, tf["guest"], params)
    vlr.with_scorecard(f.passive, tf["host"], params)
    return f
