"""Slices of the shared UCI credit data as horizontal banks, for the e2e tests' federations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedcredit.data import Table
from fedcredit.transport import Transport
from simulations.deployment import PartySpec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def bank_parties(data_dir: Path, banks: Mapping[str, str], *, rows: int, test_rows: int) -> list[PartySpec]:
    """One PartySpec per bank: the first ``rows`` of its file as `train`, every len(banks)-th test row as `test`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    test = pd.read_csv(DATA / "default_credit_homo_test.csv")
    parties = []
    for i, (bank, fname) in enumerate(banks.items()):
        pd.read_csv(DATA / fname).iloc[:rows].to_csv(data_dir / f"{bank}.csv", index=False)
        test.iloc[i::len(banks)].iloc[:test_rows].to_csv(data_dir / f"{bank}_test.csv", index=False)
        parties.append(PartySpec(bank, {"train": {"path": data_dir / f"{bank}.csv", "label_column": "y"},
                                        "test": {"path": data_dir / f"{bank}_test.csv", "label_column": "y"}}))
    return parties


def messy_vertical_tables(n: int = 3000, seed: int = 7) -> tuple[Table, Table]:
    """Label party: one numeric column; passive: heavy-tailed amount with ~9 % missing, two categoricals."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(8, 1.2, n)
    purpose = rng.integers(0, 5, n).astype(np.float64)
    purpose[rng.random(n) < 0.01] = 5  # a rare category
    housing = rng.integers(0, 3, n).astype(np.float64)
    housing[rng.random(n) < 0.04] = np.nan
    own = rng.normal(size=n)
    z = -0.6 * (np.log(income) - 8) + 0.4 * (purpose == 2) - 0.3 * housing + 0.5 * own
    y = (rng.random(n) < 1 / (1 + np.exp(-(z - 1)))).astype(np.float64)
    income[rng.random(n) < 0.09] = np.nan
    ids = [f"c{i:05d}" for i in range(n)]
    label = Table("bank", "bank.csv", ids, own[:, None], ["score"], y)
    passive = Table("fintech", "fintech.csv", ids, np.column_stack([income, purpose, housing]),
                    ["amount", "purpose", "housing"], kinds=["numeric", "categorical", "categorical"],
                    categories={"purpose": ["car", "edu", "home", "other", "repair", "yacht"],
                                "housing": ["free", "own", "rent"]})
    return label, passive


@dataclass
class RecordingTransport:
    """A party's transport recording every payload it receives: what a curious party has in hand (transcript tests)."""

    inner: Transport
    received: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def me(self) -> str:
        return self.inner.me

    def send(self, to: str, tag: str, payload: bytes) -> None:
        self.inner.send(to, tag, payload)

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        b = self.inner.recv(frm, tag, timeout)
        self.received.append((tag, bytes(b)))
        return b

    def abort(self, reason: str) -> None:
        self.inner.abort(reason)
