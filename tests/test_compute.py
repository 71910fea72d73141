"""fedcredit.compute: sessions and shards on every engine, dead workers named, no worker outlives its session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crypto import ckks, ckks_hist
from crypto.ckks_hist_pool import PooledHistogramEvaluator, shard_groups
from fedcredit import compute
from fedcredit.compute import ComputeError, WorkerPool
from fedcredit.errors import ConfigError, ProtocolError, SecurityError


def _init_offset(arg: int) -> dict[str, int]:
    return {"offset": arg, "pid": os.getpid()}


def _add(state: dict[str, int], x: np.ndarray) -> np.ndarray:
    return x + state["offset"]


def _shard_id(state: dict[str, int], _x: object) -> int:
    return state["offset"]


def _die_on_3(_state: object, x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, as a worker sees it
    return x


def _raise_on_2(_state: object, x: int) -> int:
    if x == 2:
        raise ValueError(f"bad item {x}")
    return x


def _bad_init(_arg: object) -> None:
    raise RuntimeError("cannot load the context")


def _noop(_state: None, x: None) -> None:
    return x


def _gone(pids: list[int], within_s: float = 10.0) -> bool:
    """True once no process of ``pids`` exists (a zombie counts as gone: it runs nothing)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = []
        for p in pids:
            try:
                with open(f"/proc/{p}/stat") as f:
                    if f.read().split(") ")[1][0] != "Z":
                        alive.append(p)
            except FileNotFoundError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def _children() -> set[int]:
    """Live (non-zombie) child processes of this process, from /proc."""
    me, out = os.getpid(), set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
            except (FileNotFoundError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[1]) == me:
                out.add(int(d))
    return out


@pytest.mark.parametrize("engine", ["inline", "processes"])
def test_session_maps_in_input_order_with_state_booted_once(engine: str) -> None:
    pool = WorkerPool(2, engine)  # type: ignore[arg-type]
    items = [np.full(3, i, dtype=np.int64) for i in range(20)]
    with pool.session(_init_offset, 100, what="adding") as s:
        out = list(s.map(_add, items, in_flight=3))
    assert [int(o[0]) for o in out] == [i + 100 for i in range(20)]


def test_processes_session_uses_other_processes_and_leaves_none_behind() -> None:
    s = WorkerPool(2, "processes").session(_init_offset, 0)
    list(s.map(_add, [np.zeros(1)] * 4))
    pids = s.pids()
    assert pids and os.getpid() not in pids
    s.close()
    assert _gone(pids), f"workers {pids} still running after close()"


def test_shards_give_each_worker_its_own_state_and_stop() -> None:
    with WorkerPool(2, "processes").shards(_init_offset, [10, 20, 30], what="shard test") as sh:
        assert sh.run(_shard_id, [None, None, None]) == [10, 20, 30]
        assert sh.broadcast(_shard_id, None) == [10, 20, 30]
        pids = sh.pids()
        assert len(pids) == 3
        with pytest.raises(ValueError, match="2 items for 3 shards"):
            sh.run(_shard_id, [None, None])
    assert _gone(pids)


def test_a_killed_worker_names_the_party_and_the_work() -> None:
    pool = WorkerPool(2, "processes", party="bank1")
    s = pool.session(_init_offset, 0, what="vertical LR products")
    with pytest.raises(ComputeError, match=r"party 'bank1': .* \(processes engine\) died .* during vertical LR "
                                           r"products at item \d.*worker \d+ killed by SIGKILL.*no traceback"):
        list(s.map(_die_on_3, range(8)))
    pids = [p for p in s._w.exs[0]._processes] if s._w.exs[0]._processes else []
    s.close()
    assert _gone(pids)


def test_an_exception_in_the_work_is_reraised_unchanged() -> None:
    with WorkerPool(2, "processes").session(_init_offset, 0) as s:
        with pytest.raises(ValueError, match="bad item 2"):
            list(s.map(_raise_on_2, range(5)))


def test_a_failing_init_names_the_party_and_the_work() -> None:
    # ... and says why: the worker's own traceback, captured in the session's failure file
    with pytest.raises(ComputeError, match=r"party 'fintech': .* during PSI blinding.*"
                                           r"it wrote: .*RuntimeError: cannot load the context"):
        with WorkerPool(2, "processes", party="fintech").session(_bad_init, None, what="PSI blinding") as s:
            list(s.map(_noop, [None]))
    with pytest.raises(RuntimeError, match="cannot load the context"):  # inline: the error itself
        WorkerPool(1, "inline").session(_bad_init, None)


def test_usage_counts_what_ran_on_worker_processes() -> None:
    pool = WorkerPool(2, "processes")
    assert pool.usage() == {"engine": "processes", "workers": 2, "pid": os.getpid(), "sessions": 0, "items": 0,
                            "worker_pids": []}
    with pool.session(_init_offset, 0) as s:
        list(s.map(_add, [np.zeros(1)] * 5))
        pids = s.pids()
    u = pool.usage()
    assert (u["sessions"], u["items"]) == (1, 5) and set(u["worker_pids"]) >= set(pids) and os.getpid() not in pids
    inline = WorkerPool(1, "processes")
    with inline.session(_init_offset, 0) as s:
        list(s.map(_add, [np.zeros(1)] * 5))
    assert (inline.usage()["sessions"], inline.usage()["items"], inline.usage()["worker_pids"]) == (0, 0, [])


UNGUARDED_MAIN = """
import sys
if __name__ != "__main__":  # each worker re-imports the program's unguarded __main__: it exits there
    sys.exit(3)
from fedcredit.compute import ComputeError, WorkerPool, _pid
try:
    with WorkerPool(2, "processes", party="bank1").session(len, "ab", what="PSI blinding") as s:
        list(s.map(_pid, range(4)))
except ComputeError as e:
    print(e)
"""


def test_a_program_whose_main_breaks_the_forkserver_gets_a_named_error(tmp_path: Path) -> None:
    """Not a raw BrokenPipeError: the party, the work, the engine and how the forkserver or worker ended."""
    script = tmp_path / "flwr-clientapp"
    script.write_text(UNGUARDED_MAIN)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    assert out.returncode == 0, out.stderr
    msg = out.stdout
    assert "party 'bank1': a compute worker (processes engine) died or failed to start during PSI blinding" in msg
    assert "exit code 1" in msg and "died before its session started" in msg, msg


def test_pool_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"\[compute\].workers"):
        WorkerPool(-1)
    with pytest.raises(ConfigError, match=r"\[compute\].engine: expected one of inline, processes, ray"):
        WorkerPool(2, "threads")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\[compute\].ray_address is set"):
        WorkerPool(2, "processes", ray_address="127.0.0.1:6379")
    assert WorkerPool(0).workers == (os.cpu_count() or 1)


def test_configure_sets_the_process_pool() -> None:
    before = compute.default_pool()
    assert before.engine == "inline"
    try:
        p = WorkerPool(2, "processes", party="bank1")
        compute.configure(p)
        assert compute.default_pool() is p
    finally:
        compute.configure(before)


# --- the Ray engine, on a local Ray instance ------------------------------------------------------------------

def _ray() -> Any:
    return pytest.importorskip("ray", reason="Ray is the optional extra fedcredit[ray]: pip install -e '.[ray]'")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # Ray's note on accelerator env vars (no GPUs here)
def test_ray_engine_runs_sessions_and_shards_as_actors_and_stops_them() -> None:
    ray = _ray()
    before = _children()
    pool = WorkerPool(2, "ray", party="bank1")
    try:
        with pool.session(_init_offset, 7, what="ray test") as s:
            out = list(s.map(_add, [np.full(2, i) for i in range(6)]))
            pids = s.pids()
        assert [int(o[0]) for o in out] == [i + 7 for i in range(6)]
        assert os.getpid() not in pids
        assert _gone(pids), f"Ray actors {pids} still running after close()"
        with pool.shards(_init_offset, [1, 2], what="ray shards") as sh:
            assert sh.broadcast(_shard_id, None) == [1, 2]
        s2 = pool.session(_init_offset, 0, what="vertical LR products")
        with pytest.raises(ComputeError, match=r"party 'bank1': .*ray engine.* during vertical LR products"):
            list(s2.map(_die_on_3, range(8)))
        s2.close()
    finally:
        pool.close()
    assert not ray.is_initialized()
    assert _gone(list(_children() - before)), "the local Ray instance (GCS, raylet) outlived pool.close()"


def test_ray_address_that_nobody_serves_is_a_named_error() -> None:
    _ray()
    pool = WorkerPool(1, "ray", ray_address="127.0.0.1:1", party="bank1")
    with pytest.raises(ComputeError, match=r"party 'bank1': cannot reach the Ray cluster at '127.0.0.1:1' \(\[compute\].ray_address\)"):
        pool.session(_init_offset, 0)
    pool.close()


# --- SecureBoost's histogram pass on shards (crypto/ckks_hist_pool.py) -----------------------------------------


def test_shard_groups_split_whole_groups_evenly() -> None:
    assert shard_groups(9, 4, 2) == [(0, 4), (4, 9)]  # 3 groups: 1 + 2
    assert shard_groups(9, 4, 8) == [(0, 4), (4, 8), (8, 9)]  # never more shards than groups
    assert shard_groups(0, 4, 2) == []
    assert shard_groups(64, 8, 2) == [(0, 32), (32, 64)]


@pytest.mark.parametrize("engine", ["inline", "processes"])
def test_pooled_histogram_pass_decrypts_to_the_same_histogram(engine: str) -> None:
    rng = np.random.default_rng(5)
    n, pack = 6000, 4  # two gradient chunks, 5 features x 3 cumulative candidates = 15 candidates, 4 groups
    Xb = rng.integers(0, 4, (n, 5)).astype(np.uint8)
    cand_f, cand_b = np.repeat(np.arange(5), 3), np.tile(np.arange(3), 5)
    perm = rng.permutation(15)
    cand_f, cand_b = cand_f[perm], cand_b[perm]
    keeper = ckks_hist.HistogramKeeper()
    pub = ckks.load_public(keeper.public_bytes)
    single = ckks_hist.HistogramEvaluator(pub, Xb, cand_f, cand_b, pack, 16)
    pooled = PooledHistogramEvaluator(pub, Xb, cand_f, cand_b, pack, 16, pool=WorkerPool(2, engine))  # type: ignore[arg-type]
    try:
        assert pooled.n_shards == 2
        assert (pooled.n_chunks, pooled.n_outputs) == (single.n_chunks, single.n_outputs) == (2, 4)
        nodes = [rng.random(n) < 0.5, np.ones(n, bool)]
        g, h = rng.uniform(-1, 1, n), rng.uniform(0, 0.25, n)
        enc = [keeper.encrypt_rows(np.where(m, g + 1j * h, 0)) for m in nodes]
        outs = pooled.histograms(enc, "label party 'guest'")
        for m, out, blobs in zip(nodes, outs, enc, strict=True):
            assert len(out) == single.n_outputs
            GL, HL = keeper.decrypt_candidates(out, 15, pack, "bank")
            G1, H1 = keeper.decrypt_candidates(single.histogram(blobs), 15, pack, "bank")
            left = (Xb[:, cand_f] <= cand_b) & m[:, None]
            np.testing.assert_allclose(GL, g @ left, atol=1e-4)
            np.testing.assert_allclose(HL, h @ left, atol=1e-4)
            np.testing.assert_allclose(GL, G1, atol=1e-4)
            np.testing.assert_allclose(HL, H1, atol=1e-4)
        assert pooled.stats["plain_mults"] > 0
        with pytest.raises(ProtocolError, match="2 gradient ciphertexts from label party 'guest', got 1"):
            pooled.histogram(enc[0][:1], "label party 'guest'")
    finally:
        pooled.close()
        single.close()
        keeper.close()


def test_pooled_histogram_refuses_a_secret_context_before_starting_workers() -> None:
    keeper = ckks_hist.HistogramKeeper()
    with pytest.raises(SecurityError, match="contains a secret key"):
        PooledHistogramEvaluator(
            keeper.ctx, np.zeros((4, 1), np.uint8), np.zeros(1, np.int64), np.zeros(1, np.int64), 4, 1,  # type: ignore[arg-type]
            pool=WorkerPool(2, "processes"), what="the context from 'guest'",
        )
    keeper.close()


def test_compute_section_builds_the_pool_the_party_asked_for() -> None:
    from fedcredit.config import ComputeSection

    pool = ComputeSection.model_validate({"workers": 3}).pool("bank1")
    assert (pool.workers, pool.engine, pool.party, pool.parallel) == (3, "processes", "bank1", True)
    assert ComputeSection().pool("bank1").workers == (os.cpu_count() or 1)  # default: all cores
    ray_pool = ComputeSection.model_validate({"engine": "ray", "ray_address": "127.0.0.1:6379"}).pool("fintech")
    assert (ray_pool.engine, ray_pool.ray_address) == ("ray", "127.0.0.1:6379")
