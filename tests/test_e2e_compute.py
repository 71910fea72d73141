"""A deployed party's HE work runs on its worker processes (``[compute] workers = 2, engine = "processes"``).

Real processes on 127.0.0.1 (LocalFederation: Flower SuperLink/SuperNodes, the parties' app guard
as the ClientApp's ``__main__``, the mutual-TLS relay).  Inside Flower's ClientApp process the
pool's forkserver used to re-import that ``__main__`` and die with it (BrokenPipeError on the first
submit), so deployed runs kept their HE work inline.  Here each party's run report must show the
work went to worker processes — other pids than the ClientApp's, none left after the run — not
just that the job finished.  Small tables and few epochs/trees: this runs in CI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from simulations.deployment import LocalFederation, PartySpec

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
N_COMMON = 1200
POOL = {"workers": 2, "engine": "processes"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cfed")
    data = root / "data"
    data.mkdir()
    guest = pd.read_csv(DATA / "default_credit_hetero_guest.csv")
    host = pd.read_csv(DATA / "default_credit_hetero_host.csv")
    ids = np.random.default_rng(8).permutation(guest["id"].to_numpy())[:N_COMMON]
    guest.set_index("id").loc[ids].reset_index().to_csv(data / "bank.csv", index=False)
    host.set_index("id").loc[ids[::-1]].reset_index().to_csv(data / "fintech.csv", index=False)
    parties = [PartySpec("bank", {"train": {"path": data / "bank.csv", "label_column": "y"}}, compute=POOL),
               PartySpec("fintech", {"train": {"path": data / "fintech.csv"}}, role="fintech", compute=POOL)]
    federation = LocalFederation(root / "fed", parties).setup().start()
    yield federation
    federation.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _compute(fed: LocalFederation, party: str, run_id: str) -> dict[str, Any]:
    """The party's run report's ``compute`` section, checked against its log line; workers must be gone."""
    report = json.loads((fed.root / "state" / party / "models" / run_id / "report.json").read_text())
    c = report["compute"]
    assert c["engine"] == "processes" and c["workers"] == 2, (party, c)
    if c["items"]:  # what went to worker processes ran on other pids than the ClientApp process's own
        assert c["sessions"] >= 1 and c["worker_pids"] and c["pid"] not in c["worker_pids"], (party, c)
        assert not [p for p in c["worker_pids"] if _alive(p)], f"{party}: workers outlived the run: {c}"
    log = (fed.root / "state" / party / "supernode.log").read_text(errors="replace")
    assert f"party '{party}': run {run_id} HE work (processes engine, 2 workers): " in log, log[-3000:]
    assert "BrokenPipeError" not in log and "known limit" not in log
    return c


def test_vertical_lr_he_work_runs_on_the_parties_worker_processes(fed: LocalFederation) -> None:
    info = fed.run_job("c-vlr", {"job": {"name": "c-vlr", "type": "vertical-lr", "parties": ["bank", "fintech"],
                                         "label_party": "bank", "round_timeout_s": 120.0},
                                 "model": {"test_fraction": 0.25, "split_seed": 3, "max_epochs": 2,
                                           "full_batch_steps": 4}})
    assert info.status == "finished", info.error
    result = json.loads(info.result_json)
    assert result["global"]["auc"] > 0.6, result["global"]
    _compute(fed, "bank", info.run_id)  # 881 training rows: one residual ciphertext per step, encrypted inline
    c = _compute(fed, "fintech", info.run_id)
    # the passive party's gradient products, one run of columns per worker, every step: both workers took part
    assert c["items"] >= 4 and len(c["worker_pids"]) == 2, c


def test_secureboost_histograms_run_on_the_passive_party_workers(fed: LocalFederation) -> None:
    info = fed.run_job("c-sb", {"job": {"name": "c-sb", "type": "secureboost", "parties": ["bank", "fintech"],
                                        "label_party": "bank", "round_timeout_s": 120.0},
                                "model": {"n_trees": 1, "max_depth": 2, "n_bins": 16, "test_fraction": 0.25,
                                          "split_seed": 3}})
    assert info.status == "finished", info.error
    _compute(fed, "bank", info.run_id)
    c = _compute(fed, "fintech", info.run_id)
    # the histogram passes, sharded over the passive party's two workers (16 bins x 10 features: two candidate shards;
    # a table whose candidates fit one group of 64 has a single shard, which runs in the calling process)
    assert c["items"] >= 2 and len(c["worker_pids"]) == 2, c
