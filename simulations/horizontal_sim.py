"""In-process simulation of an encrypted horizontal federation (every role in one process).

The protocol code is exactly the deployment code (``fedcredit.protocols.horizontal``);
only the channel differs: :class:`~fedcredit.channel.LocalChannel` calls each bank's
handler directly and lets observers record every message (tag, size, hash) for the
report.  Each bank gets its own X25519 envelope key, state store, data files and
output directory, as it would on its own machine.

The harness itself is omniscient (it wrote the data), so after the run it also
checks that every bank saved the same global model and scores the full test file
with it for the ROC/KS plot.  Those checks are labelled as harness-side in the
report: no protocol role computes them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedcredit import metrics
from fedcredit.channel import LocalChannel, MemoryState
from fedcredit.data import load_table
from fedcredit.models import load_model
from fedcredit.protocols.horizontal import HorizontalJob, PartyEnv, party_handler, run_coordinator
from fedcredit.transport import WireRecord
from simulations.generator import write_bank_files
from simulations.partition import partition


@dataclass
class LocalFederation:
    """A federation wired in one process: the channel, each bank's env and state."""

    channel: LocalChannel
    envs: dict[str, PartyEnv]
    states: dict[str, MemoryState]


def make_local_federation(
    train_files: Mapping[str, Path],
    test_files: Mapping[str, Path | None],
    out_dir: Path,
    *,
    id_column: str | None = "id",
    label_column: str = "y",
    tap: Callable[[str, str, np.ndarray], None] | None = None,
    missing_values: Sequence[str] = (),
) -> LocalFederation:
    """One handler per bank over a LocalChannel; ``tap(party, what, vector)`` sees plaintext pre-encryption.

    Each bank's tables are loaded by its own role on first use (as in a deployment), so
    a bad file is that bank's failure inside the protocol, not the harness's.
    """
    keys = {p: X25519PrivateKey.generate() for p in train_files}
    envs: dict[str, PartyEnv] = {}
    for p, path in train_files.items():
        test = test_files.get(p)
        envs[p] = PartyEnv(
            name=p,
            envelope_private=keys[p],
            peers={q: k.public_key() for q, k in keys.items() if q != p},
            train=partial(load_table, Path(path), party=p, id_col=id_column, label_col=label_column,
                          missing_values=missing_values),
            test=partial(load_table, Path(test), party=p, id_col=id_column, label_col=label_column,
                         missing_values=missing_values) if test else None,
            output_dir=Path(out_dir) / "parties" / p,
            tap=partial(tap, p) if tap else None,
        )
    states = {p: MemoryState() for p in train_files}
    channel = LocalChannel({p: party_handler(e) for p, e in envs.items()}, states)
    return LocalFederation(channel, envs, states)


def _party_names(files: Sequence[Path]) -> list[str]:
    """Short party names from file stems: the common prefix is dropped (…_guest -> guest)."""
    stems = [Path(f).stem.lower() for f in files]
    if len(stems) > 1:
        pre = 0
        while all(len(s) > pre for s in stems) and len({s[pre] for s in stems}) == 1:
            pre += 1
        cut = max((stems[0].rfind("_", 0, pre + 1), stems[0].rfind("-", 0, pre + 1)))
        stems = [s[cut + 1 :] for s in stems]
    names = [re.sub(r"[^a-z0-9_-]", "_", s) or f"bank{i + 1}" for i, s in enumerate(stems)]
    if len(set(names)) != len(names):
        names = [f"bank{i + 1}" for i in range(len(files))]
    return names


def _split_test(test_file: Path, parties: list[str], out: Path, seed: int) -> dict[str, Path]:
    """Each bank holds its own test customers: the test file split IID across banks."""
    df = pd.read_csv(test_file, dtype={"id": str}) if test_file.suffix.lower() == ".csv" else pd.read_parquet(test_file)
    paths = {}
    for p, part in zip(parties, partition(df, len(parties), mode="iid", seed=seed + 7919)):
        path = out / f"test_{p}.csv"
        part.to_csv(path, index=False)
        paths[p] = path
    return paths


def run_inprocess(
    bank_files: Sequence[Path] | Mapping[str, Path] | None,
    test_file: Path | None,
    job: HorizontalJob | Mapping[str, Any] | None,
    out_dir: Path,
    *,
    split_test: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    generate: Mapping[str, Any] | None = None,
    id_column: str | None = "id",
    label_column: str = "y",
) -> dict[str, Any]:
    """Run the encrypted horizontal protocol over a LocalChannel and write a report.

    ``bank_files``: a list of CSV/Parquet paths (party names from the file stems), a
    ``{party: path}`` mapping, or ``None`` to generate synthetic banks (``generate``
    = keyword arguments for :func:`simulations.generator.write_bank_files`, default
    3 banks x 4000 rows + 3000 test rows).  ``job``: a full :class:`HorizontalJob`,
    or a mapping of its fields without ``run_id``/``parties`` (filled in), or None.
    With ``split_test`` every bank evaluates on its own slice of ``test_file``, so the
    global AUC (from summed encrypted histograms) covers the whole test file once.

    Writes ``out_dir/report.json``, ``out_dir/roc_ks.png``, ``out_dir/messages.jsonl``
    and each bank's saved model under ``out_dir/parties/<bank>/<run_id>/``.
    """
    out = Path(out_dir)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if bank_files is None:
        gen = {"n_banks": 3, "rows_per_bank": 4000, "test_rows": 3000, "seed": 0, "split": "iid", **(generate or {})}
        paths = write_bank_files(data_dir, **gen)
        test_file = paths.pop("test")
        train = dict(paths)
    elif isinstance(bank_files, Mapping):
        train = {str(k): Path(v) for k, v in bank_files.items()}
    else:
        files = [Path(f) for f in bank_files]
        train = dict(zip(_party_names(files), files))
    parties = list(train)

    if job is None or isinstance(job, Mapping):
        spec = dict(job or {})
        spec.setdefault("run_id", f"sim-{time.strftime('%Y%m%d-%H%M%S')}")
        spec.setdefault("parties", parties)
        job = HorizontalJob.from_dict(spec)
    if sorted(job.parties) != sorted(parties):
        raise ValueError(f"job parties {job.parties} do not match the bank files' parties {parties}")

    if test_file is None:
        tests: dict[str, Path | None] = {p: None for p in parties}
    elif split_test:
        tests = dict(_split_test(Path(test_file), parties, data_dir, job.seed))
    else:
        tests = {p: Path(test_file) for p in parties}

    fed = make_local_federation(train, tests, out, id_column=id_column, label_column=label_column)
    records: list[WireRecord] = []
    fed.channel.observers.append(records.append)
    events: list[dict[str, Any]] = []
    cpu_marks: dict[str, float] = {}

    def on_progress(ev: dict[str, Any]) -> None:
        events.append(ev)
        # process CPU time (all threads: every bank and the coordinator) is robust to other load
        cpu_marks[ev["event"]] = time.process_time()
        if progress is not None:
            progress(ev)

    t0, c0 = time.perf_counter(), time.process_time()
    result = run_coordinator(fed.channel, job, on_progress)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    with (out / "messages.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps({"from": r.sender, "to": r.receiver, "tag": r.tag, "bytes": r.size, "sha256": r.sha256}) + "\n")
    by_tag: dict[str, dict[str, int]] = {}
    for r in records:
        d = by_tag.setdefault(r.tag, {"count": 0, "bytes": 0})
        d["count"] += 1
        d["bytes"] += r.size

    report: dict[str, Any] = {
        "mode": "in-process",
        "job": job.to_dict(),
        "data": {p: {"train": str(train[p]), "test": str(tests[p]) if tests[p] else None} for p in parties},
        "result": result.to_dict(),
        "bytes_per_round": result.bytes_per_round(),
        "messages": {"count": len(records), "total_bytes": sum(r.size for r in records), "by_tag": by_tag},
        "wall_time_s": round(wall, 3),
        "cpu_time_s": round(cpu, 3),
        "rounds_cpu_s": round(cpu_marks.get("round", c0) - cpu_marks.get("keys", c0), 3),
    }

    # harness-side checks (the harness owns all the data; no protocol role does this)
    saved = {p: fed.envs[p].output_dir / job.run_id / "global_model.json" for p in result.parties}
    flats = {p: load_model(path).model.get_flat() for p, path in saved.items() if path.exists()}
    ref = next(iter(flats.values()), None)
    harness: dict[str, Any] = {
        "note": "computed by the simulation harness from the saved global model, not by any protocol role",
        "models_saved": {p: str(path) for p, path in saved.items()},
        "models_identical": bool(ref is not None and all(np.allclose(v, ref, atol=1e-9) for v in flats.values())),
    }
    if test_file is not None and flats:
        sm = load_model(next(iter(saved.values())))
        tt = load_table(Path(test_file), party="harness", id_col=id_column, label_col=label_column,
                        feature_cols=sm.feature_names)
        p_hat = sm.predict_proba(tt.X)
        assert tt.y is not None
        harness["full_test_auc"] = metrics.auc(tt.y, p_hat)
        harness["full_test_ks"] = metrics.ks(tt.y, p_hat)
        png = metrics.roc_ks_plot(tt.y, p_hat, out / "roc_ks.png",
                                  title=f"{job.algorithm} {job.family}, {len(result.parties)} banks, {job.rounds} rounds")
        report["plots"] = {"roc_ks": str(png)}
    report["harness_check"] = harness
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_jsonable))
    return report


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
