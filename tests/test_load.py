"""The load harness (simulations/bench_load.py) in a tiny configuration, so it cannot rot.

Real parts as in the benchmark: both parties' scoring servers in their own processes over
mutual TLS with a signed, installed joint model; a real relay process and real
RelayTransport clients in other processes.  Only zero errors and non-zero traffic are
asserted here; the timing and memory figures belong to the benchmark (docs/fuzzing.md, "Load").
"""

from __future__ import annotations

from simulations.bench_load import relay_load, scoring_load


def test_scoring_service_holds_16_concurrent_clients_with_zero_errors() -> None:
    res = scoring_load(clients=16, seconds=2.0, n_fit=5000)
    assert res["errors"] == 0, res["error_kinds"]
    assert res["decisions"] > 16
    assert set(res["rss"]) == {"guest", "host"} and all(r["samples"] >= 2 for r in res["rss"].values())


def test_relay_carries_paired_streams_of_6_parties_with_zero_errors() -> None:
    res = relay_load(parties=6, seconds=2.0, client_procs=2, payload=4096, window=4)
    assert res["errors"] == 0, res["error_list"]
    assert res["frames"] >= 6 * 4  # every pair completed at least one window both ways
    assert res["rss"]["relay"]["peak_mb"] > 0
