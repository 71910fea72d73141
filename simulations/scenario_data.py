"""Scenario data for ``fedcredit simulate``: per-party files from a scenario's ``[data]`` table.

Why apart from the protocols: generating or splitting demo data is simulation work;
deployed code never imports it.  Horizontal scenarios get one train/test file pair
per bank (:func:`prepare_data`); vertical ones one table per party, split by columns
(:func:`prepare_vertical_data`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcredit.errors import ConfigError
from simulations.generator import generate_applications, write_bank_files

__all__ = ["prepare_data", "prepare_vertical_data", "write_demo_party_data", "DEMO_PARTIES"]


def prepare_data(data_cfg: dict[str, Any], out: Path, source: Path) -> dict[str, dict[str, Path]]:
    """Materialise per-bank train/test files; returns {bank: {"train": path, "test": path}}."""
    kind = data_cfg.get("source", "generated")
    if str(kind).startswith("vertical-"):  # {party: {dataset key: dataset table}}
        return prepare_vertical_data(data_cfg, out, source)  # type: ignore[return-value]
    if kind == "generated":
        try:
            paths = write_bank_files(
                out,
                int(data_cfg.get("banks", 3)),
                int(data_cfg.get("rows_per_bank", 4000)),
                int(data_cfg.get("test_rows", 3000)),
                seed=int(data_cfg.get("seed", 7)),
                split=str(data_cfg.get("split", "iid")),
            )
        except ValueError as e:  # a bad split name or size is the scenario file's error, not a traceback
            raise ConfigError(f"{source}: [data]: {e}") from None
        banks = [k for k in paths if k != "test"]
        test = pd.read_csv(paths["test"])
    elif kind == "files":
        banks_cfg = data_cfg.get("banks")
        if not isinstance(banks_cfg, dict) or "test" not in data_cfg:
            raise ConfigError(f"{source}: [data] with source='files' needs a [data.banks] table (name = path) and test = path")
        paths = {b: (source.parent / p).resolve() for b, p in banks_cfg.items()}
        for b, p in paths.items():
            if not p.exists():
                raise ConfigError(f"{source}: [data.banks].{b}: file {p} not found")
        banks = list(paths)
        test_path = (source.parent / str(data_cfg["test"])).resolve()
        if not test_path.exists():
            raise ConfigError(f"{source}: [data].test: file {test_path} not found")
        test = pd.read_csv(test_path)
    else:
        raise ConfigError(f"{source}: [data].source must be 'generated' or 'files', got '{kind}'")
    # each bank keeps its own held-out slice of the shared test population
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, dict[str, Path]] = {}
    n = len(banks)
    for i, b in enumerate(banks):
        tp = out / f"{b}_test.csv"
        test.iloc[i::n].to_csv(tp, index=False)
        result[b] = {"train": Path(paths[b]), "test": tp}
    return result



def prepare_vertical_data(data_cfg: Mapping[str, Any], out: Path, source: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-party dataset tables for a vertical scenario: ``{party: {dataset key: {path, label_column, ...}}}``.

    ``[data] source = "vertical-generated"``: generated applications
    (``simulations.generator.generate_applications``) split by columns between the
    label party (``label_party``, default "bank": id, y and the repayment history) and
    a passive party (``passive_party``, default "fintech": id and the rest), with
    ``overlap`` (default 0.8) of the customers shared.

    ``[data] source = "vertical-files"``: ``[data.parties]`` maps party name to a file
    (the label party's has the ``y`` column); optional ``test_ids`` = a file whose ids
    are the test customers (given to the label party as dataset "test").
    """
    kind = data_cfg.get("source")
    out.mkdir(parents=True, exist_ok=True)
    label = str(data_cfg.get("label_party", "bank"))
    if kind == "vertical-generated":
        passive = str(data_cfg.get("passive_party", "fintech"))
        n = int(data_cfg.get("rows", 8000))
        overlap = float(data_cfg.get("overlap", 0.8))
        if not 0 < overlap <= 1:
            raise ConfigError(f"{source}: [data].overlap must be in (0, 1], got {overlap}")
        df = generate_applications(n, seed=int(data_cfg.get("seed", 7)))
        feats = [c for c in df.columns if c not in ("id", "y")]
        # the bank: demographics, credit line and monthly statements; the fintech: repayment behaviour
        label_feats = [c for c in feats if not c.startswith("PAY")] if "PAY_0" in feats else feats[: len(feats) // 2]
        passive_feats = [c for c in feats if c not in label_feats]
        rng = np.random.default_rng(int(data_cfg.get("seed", 7)))
        order = rng.permutation(n)
        n_common = int(round(n * overlap))
        n_only = (n - n_common) // 2
        label_rows = np.sort(order[: n_common + n_only])
        passive_rows = np.sort(np.concatenate([order[:n_common], order[n_common + n_only :]]))
        lp, pp = out / f"{label}.csv", out / f"{passive}.csv"
        df.iloc[label_rows][["id", "y", *label_feats]].to_csv(lp, index=False)
        df.iloc[passive_rows][["id", *passive_feats]].to_csv(pp, index=False)
        return {label: {"train": {"path": lp, "label_column": "y"}}, passive: {"train": {"path": pp}}}
    if kind == "vertical-files":
        files = data_cfg.get("parties")
        if not isinstance(files, dict) or label not in files:
            raise ConfigError(
                f"{source}: [data] with source='vertical-files' needs [data.parties] (name = path) including the "
                f"label party '{label}'"
            )
        specs: dict[str, dict[str, dict[str, Any]]] = {}
        for p, f in files.items():
            path = (source.parent / str(f)).resolve()
            if not path.exists():
                raise ConfigError(f"{source}: [data.parties].{p}: file {path} not found")
            specs[p] = {"train": {"path": path, **({"label_column": "y"} if p == label else {})}}
        if data_cfg.get("test_ids"):
            tp = (source.parent / str(data_cfg["test_ids"])).resolve()
            if not tp.exists():
                raise ConfigError(f"{source}: [data].test_ids: file {tp} not found")
            # only its ids are used; the party daemon still validates it as a table at start-up
            specs[label]["test"] = {"path": tp}
        return specs
    raise ConfigError(f"{source}: [data].source for a vertical scenario must be 'vertical-generated' or 'vertical-files'")


#: The README's multi-host federation (examples/): two banks with the same schema, and a fintech
#: sharing customers with bank1.  Rows of one generated population, so the parties' files agree.
DEMO_PARTIES = ("bank1", "bank2", "fintech")
_DEMO_ROWS = {"horizontal": 3000, "test": 1000, "vertical": 4000}


def demo_vertical_features(columns: list[str]) -> tuple[list[str], list[str]]:
    """(label party's, passive party's) features: the bank keeps demographics, credit line and statements;
    the partner holds the repayment history and payment amounts (as in ``prepare_vertical_data``)."""
    feats = [c for c in columns if c not in ("id", "y")]
    label = [c for c in feats if not c.startswith("PAY")]
    return label, [c for c in feats if c not in label]


def write_demo_party_data(party: str, out: Path, seed: int = 7) -> list[Path]:
    """One institution's demo files for the README's federation (``fedcredit demo-data <party>``).

    bank1 / bank2: ``train.csv`` and ``test.csv`` (id, y, every feature; horizontal jobs).
    bank1 also: ``vertical.csv`` (id, y, its features) over customers it shares with the fintech,
    ``test_ids.csv`` (only ids: the agreed test customers) and ``applications.csv`` (ids and its
    features, no label: a batch to score).  fintech: ``vertical.csv`` (id, its features).
    3,000 of the 4,000 vertical customers are common to bank1 and the fintech.
    """
    if party not in DEMO_PARTIES:
        raise ConfigError(f"demo data exists for {', '.join(DEMO_PARTIES)}, not '{party}'")
    n_h, n_t, n_v = _DEMO_ROWS["horizontal"], _DEMO_ROWS["test"], _DEMO_ROWS["vertical"]
    df = generate_applications(2 * n_h + 2 * n_t + n_v, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(name: str, frame: pd.DataFrame) -> None:
        p = out / name
        frame.to_csv(p, index=False)
        written.append(p)

    if party in ("bank1", "bank2"):
        i = 0 if party == "bank1" else 1
        write("train.csv", df.iloc[i * n_h:(i + 1) * n_h])
        write("test.csv", df.iloc[2 * n_h + i * n_t:2 * n_h + (i + 1) * n_t])
    vert = df.iloc[2 * n_h + 2 * n_t:].reset_index(drop=True)
    label_feats, passive_feats = demo_vertical_features(list(vert.columns))
    only = n_v // 8  # 500 customers only at bank1, 500 only at the fintech, 3,000 common
    common = vert.iloc[only:n_v - only]
    if party == "bank1":
        write("vertical.csv", vert.iloc[:n_v - only][["id", "y", *label_feats]])
        write("test_ids.csv", common.iloc[::5][["id"]])  # every 5th common customer: 600 test ids
        write("applications.csv", common.iloc[:200][["id", *label_feats]])
    elif party == "fintech":
        write("vertical.csv", vert.iloc[only:][["id", *passive_feats]])
    return written
