"""Parquet in row groups: ids and features streamed as the loader reads them, PSI on streams equal to the in-memory path.

Memory staying bounded is a benchmark (simulations/bench_psi.py --parquet), not a test; these
tests pin that the streamed path gives the very results and errors of the whole-table path.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crypto.psi import PsiKey
from fedcredit import binning as B
from fedcredit.compute import WorkerPool
from fedcredit.data import IdColumn, iter_feature_batches, load_table, read_ids_stream
from fedcredit.errors import DataError, ProtocolError
from fedcredit.protocols.binning.roles import count_prebins
from fedcredit.protocols.psi import PsiResult, run_psi
from fedcredit.transport import InMemoryHub


def _write(path: Path, df: pd.DataFrame, rows_per_group: int) -> Path:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=rows_per_group)
    assert pq.ParquetFile(path).metadata.num_row_groups > 2
    return path


def _frame(n: int, lo: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = [f"cust-{i:06d}" for i in range(lo, lo + n)]
    random.Random(seed).shuffle(ids)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({"id": ids, "x": x, "k": rng.integers(0, 7, size=n).astype(np.int64)})


def test_streamed_ids_equal_the_loaders_across_row_groups(tmp_path: Path) -> None:
    f = _write(tmp_path / "a.parquet", _frame(1000, 0, 1), 300)
    s = read_ids_stream(f, party="bank", batch_rows=128)
    got = [i for b in s.batches() for i in b]
    assert len(s) == 1000 and got == load_table(f, party="bank").ids
    assert [i for b in s.batches() for i in b] == got  # re-iterable: every pass starts over
    # integer ids are normalized by the same rule as the loader's
    g = _write(tmp_path / "int.parquet", pd.DataFrame({"id": np.arange(10, 710, dtype=np.int64)}), 200)
    assert [i for b in read_ids_stream(g, party="p").batches() for i in b] == load_table(g, party="p").ids


def test_streamed_id_errors_name_file_column_and_the_files_row(tmp_path: Path) -> None:
    df = pd.DataFrame({"id": [f"c{i}" for i in range(700)]})
    df.loc[450, "id"] = None  # in the third row group, the 451st data row
    f = _write(tmp_path / "bad.parquet", df, 200)
    with pytest.raises(DataError) as e:
        list(read_ids_stream(f, party="bank", batch_rows=100).batches())
    assert str(e.value) == f"party 'bank', file {f}: row 451: id column 'id' is empty"
    with pytest.raises(DataError, match="missing column\\(s\\) \\['cid'\\]"):
        read_ids_stream(f, party="bank", id_col="cid")
    with pytest.raises(DataError, match="does not exist"):
        read_ids_stream(tmp_path / "nope.parquet", party="bank")
    (tmp_path / "t.csv").write_text("id\n1\n")
    with pytest.raises(DataError, match="streaming reads need a Parquet file"):
        read_ids_stream(tmp_path / "t.csv", party="bank")


def test_streamed_features_equal_the_loaders_and_errors_give_the_files_row(tmp_path: Path) -> None:
    df = _frame(1000, 0, 2)
    f = _write(tmp_path / "f.parquet", df, 300)
    t = load_table(f, party="p", feature_cols=["x", "k"], kinds={"k": "categorical"})
    blocks = list(iter_feature_batches(f, party="p", feature_cols=["x", "k"], kinds={"k": "categorical"},
                                       categories=t.categories, batch_rows=128))
    assert [r for r, _ in blocks] == list(range(0, 1000, 128))
    np.testing.assert_array_equal(np.vstack([X for _, X in blocks]), t.X)
    bad = df.assign(x=["" if np.isnan(v) else f"{v:.6f}" for v in df["x"]])  # a text column, parsed as numbers
    bad.loc[777, "x"] = "oops"
    g = _write(tmp_path / "g.parquet", bad, 300)
    with pytest.raises(DataError) as e:
        list(load_table(g, party="p", feature_cols=["x"], kinds={"x": "numeric"}).X)
    whole = str(e.value)
    with pytest.raises(DataError) as e:
        list(iter_feature_batches(g, party="p", feature_cols=["x"], kinds={"x": "numeric"}, batch_rows=128))
    assert "row 778" in whole and str(e.value).split(" (")[0] == whole.split(" (")[0]


def test_prebin_counts_from_row_groups_equal_the_whole_column(tmp_path: Path) -> None:
    df = _frame(2000, 0, 3)
    f = _write(tmp_path / "f.parquet", df, 300)
    t = load_table(f, party="p", feature_cols=["x", "k"], kinds={"k": "categorical"})
    pre = [B.prebin(c, t.X[:, j], kind=t.kinds[j], categories=t.categories.get(c, ()), n_bins=10, min_rows=50)
           for j, c in enumerate(t.feature_names)]
    whole = [int(v) for j, b in enumerate(pre) for v in np.bincount(b.assign(t.X[:, j]), minlength=b.n_bins)]
    streamed = count_prebins(pre, (X for _, X in iter_feature_batches(
        f, party="p", feature_cols=["x", "k"], kinds={"k": "categorical"}, categories=t.categories, batch_rows=256)),
        min_rows=50, me="p")
    assert streamed == whole and sum(streamed) == 2 * 2000
    with pytest.raises(DataError, match="would report a bin of"):
        count_prebins(pre, [t.X[:10]], min_rows=50, me="p")


def _psi(sets: dict[str, Any], keys: dict[str, PsiKey], monkeypatch: pytest.MonkeyPatch,
         **kw: Any) -> tuple[dict[str, PsiResult], dict[str, BaseException]]:
    who = threading.local()
    monkeypatch.setattr(PsiKey, "generate", staticmethod(lambda: keys[who.p]))
    hub = InMemoryHub(default_timeout=60)
    res: dict[str, PsiResult] = {}
    errs: dict[str, BaseException] = {}

    def go(p: str) -> None:
        who.p = p
        try:
            res[p] = run_psi(hub.endpoint(p), sets[p], list(sets), leader="bank", batch_size=250, **kw)
        except Exception as e:  # asserted by the test
            errs[p] = e

    ts = [threading.Thread(target=go, args=(p,)) for p in sets]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return res, errs


def test_psi_on_parquet_streams_equals_the_in_memory_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"bank": _write(tmp_path / "bank.parquet", _frame(1200, 0, 4), 300),
             "fintech": _write(tmp_path / "fintech.parquet", _frame(900, 700, 5), 200)}
    keys = {p: PsiKey.generate() for p in files}
    lists = {p: load_table(f, party=p).ids for p, f in files.items()}
    streams = {p: read_ids_stream(f, party=p, batch_rows=97) for p, f in files.items()}  # batches cut row groups
    ref, e1 = _psi(lists, keys, monkeypatch)
    got, e2 = _psi(streams, keys, monkeypatch)
    assert not e1 and not e2
    for p in files:
        assert isinstance(got[p].intersection_ids, IdColumn)
        assert got[p].intersection_ids == ref[p].intersection_ids  # same ids in the same common order
        assert list(got[p].intersection_ids) == list(ref[p].intersection_ids)
        np.testing.assert_array_equal(got[p].indices, ref[p].indices)
        assert got[p].pairwise_sizes == ref[p].pairwise_sizes and got[p].size == 500
        assert [lists[p][i] for i in got[p].indices] == list(got[p].intersection_ids)
    assert got["bank"].intersection_ids == got["fintech"].intersection_ids


def test_psi_blinding_on_worker_processes_equals_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(6)
    sets = {"bank": [f"c{i}" for i in range(0, 3000)], "fintech": [f"c{i}" for i in range(2000, 4000)]}
    for ids in sets.values():
        rng.shuffle(ids)
    keys = {p: PsiKey.generate() for p in sets}
    ref, e1 = _psi(sets, keys, monkeypatch, pool=WorkerPool(1, "inline"))
    got, e2 = _psi(sets, keys, monkeypatch, pool=WorkerPool(2, "processes"))
    assert not e1 and not e2
    assert got["bank"].intersection_ids == ref["bank"].intersection_ids == got["fintech"].intersection_ids
    assert got["bank"].size == 1000


def test_duplicate_across_row_groups_fails_at_the_owner_naming_file_and_rows(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    df = pd.DataFrame({"id": [f"c{i}" for i in range(800)]})
    df.loc[650, "id"] = "c12"  # row 651 repeats row 13, three row groups apart
    f = _write(tmp_path / "dup.parquet", df, 200)
    keys = {p: PsiKey.generate() for p in ("bank", "fintech")}
    _, errs = _psi({"bank": [f"c{i}" for i in range(100)], "fintech": read_ids_stream(f, party="fintech")}, keys,
                   monkeypatch)
    assert isinstance(errs["fintech"], DataError)
    assert str(errs["fintech"]) == (f"party 'fintech': duplicate id 'c12' in {f} (positions 13 and 651); "
                                    "PSI needs unique ids")
    assert isinstance(errs["bank"], ProtocolError)  # told at once, not left waiting


def test_worker_items_round_trip_and_refuse_malformed_buffers() -> None:
    from crypto.psi import OP_BLIND, OP_HASH_BLIND, blind_task, hash_to_point, pack_ids, unpack_ids

    ids = [b"a", b"", "\u00e9t\u00e9".encode(), b"x" * 300]
    assert unpack_ids(pack_ids(ids)) == ids
    for bad in (pack_ids(ids)[:-1], pack_ids(ids) + b"!", b"\xff\xff\xff\x00"):
        with pytest.raises(ProtocolError):
            unpack_ids(bad)
    k = PsiKey.generate()
    assert blind_task(k, bytes([OP_HASH_BLIND]) + pack_ids([b"7"])) == b"".join(k.blind([hash_to_point(b"7")]))
    pt = hash_to_point(b"8")
    assert blind_task(k, bytes([OP_BLIND, 16]) + pt) == k.blind([pt])[0][:16]
    with pytest.raises(ProtocolError, match="unknown PSI work item"):
        blind_task(k, b"\x09")
