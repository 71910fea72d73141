"""Modelled WAN time of a protocol run, printed beside the measured LAN time in vertical benchmarks.

Why a model: the benchmarks run on 127.0.0.1, where bytes are nearly free; between two
institutions a job pays for its bytes at the link rate and one round-trip time per sequential
exchange.  The model is deliberately simple (no TCP slow start, no overlap of compute and
transfer), so it is an estimate of the *added* time: measured LAN time + wan_seconds(...).
"""

from __future__ import annotations

__all__ = ["WAN_MBIT_S", "WAN_RTT_MS", "wan_seconds", "wan_line"]

WAN_MBIT_S = 100.0  # a bank's inter-institution link
WAN_RTT_MS = 20.0  # round-trip time between two institutions' data centres


def wan_seconds(n_bytes: float, round_trips: int, *, mbit_s: float = WAN_MBIT_S, rtt_ms: float = WAN_RTT_MS) -> float:
    """Transfer time of ``n_bytes`` at ``mbit_s`` plus ``round_trips`` sequential exchanges at ``rtt_ms``."""
    if n_bytes < 0 or round_trips < 0:
        raise ValueError("bytes and round trips must be non-negative")
    return n_bytes * 8 / (mbit_s * 1e6) + round_trips * rtt_ms / 1e3


def wan_line(lan_s: float, n_bytes: float, round_trips: int) -> str:
    """One benchmark line: measured LAN time, bytes, and the modelled time over a 100 Mbit/s, 20 ms link."""
    extra = wan_seconds(n_bytes, round_trips)
    return (
        f"LAN {lan_s:.1f} s measured; {n_bytes / 1e6:.1f} MB, {round_trips} round trips; "
        f"modelled WAN ({WAN_MBIT_S:.0f} Mbit/s, {WAN_RTT_MS:.0f} ms RTT): {lan_s + extra:.1f} s"
    )
