"""Slices of the shared UCI credit data as horizontal banks, for the e2e tests' federations."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

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
