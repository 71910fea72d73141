"""The load harness (simulations/bench_load.py) in a tiny configuration, so it cannot rot.

Real parts as in the benchmark: both parties' scoring servers in their own processes over
mutual TLS with a signed, installed joint model; a real relay process and real
RelayTransport clients in other processes.  Only zero errors and non-zero traffic are
asserted here; the timing and memory figures belong to the benchmark (docs/fuzzing.md, "Load").
"""

from __future__ import annotations

import numpy as np

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


def test_poisson_schedule_has_the_rate_and_is_fixed_in_advance() -> None:
    from simulations.bench_load import poisson_schedule

    t = poisson_schedule(500.0, 20.0, seed=1)
    assert (np.diff(t) > 0).all() and t[-1] < 20.0
    assert abs(len(t) / 20.0 - 500.0) < 5 * np.sqrt(500.0 / 20.0)  # within 5 sigma of the Poisson count
    gaps = np.diff(t)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential gaps: coefficient of variation 1
    assert np.array_equal(t, poisson_schedule(500.0, 20.0, seed=1))


def test_open_loop_counts_queueing_a_closed_loop_hides(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A server that answers one request at a time in 20 ms, offered 100 requests/s: the open loop keeps
    sending on schedule and its latency (from the scheduled send) shows the queue growing; one closed-loop
    client only ever sees the 20 ms service time (it waits before sending: coordinated omission)."""
    import asyncio

    import grpc

    from crypto.certs import init_ca, issue
    from crypto.tls import server_credentials
    from protos import scoring_pb2 as pb
    from protos import scoring_pb2_grpc as pbg
    from simulations.bench_load import _open_loop, _score_load

    ca = init_ca(tmp_path / "ca", "load-test")
    server_id, client_id = issue(ca, tmp_path / "server", "server"), issue(ca, tmp_path / "client", "client")

    class OneAtATime(pbg.ScoringServicer):
        def __init__(self) -> None:
            self.lock = asyncio.Lock()

        async def Score(self, request, context):  # type: ignore[no-untyped-def]
            async with self.lock:
                await asyncio.sleep(0.02)
            return pb.ScoreReply(id=request.id, decision="approve")

    async def run() -> tuple[dict, dict]:
        server = grpc.aio.server()
        pbg.add_ScoringServicer_to_server(OneAtATime(), server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(server_id))
        await server.start()
        try:
            apps = [("1", {"x": 1.0})]
            opened = await _open_loop(f"localhost:{port}", client_id, apps, 100.0, 1.5, channels=1)
            closed = await _score_load(f"localhost:{port}", client_id, apps, 1, 1.0)
        finally:
            await server.stop(0)
        return opened, closed

    opened, closed = asyncio.run(run())
    assert opened["errors"] == 0 and closed["errors"] == 0
    assert closed["p99_ms"] < 200  # each request alone: ~20 ms
    # 150 requests due in 1.5 s, served at 50/s: the last waits ~1.5 s behind the queue
    assert opened["max_ms"] > 1000 and opened["p50_ms"] > 300
    assert opened["decisions_per_s"] < 70
