"""Every decoder of another institution's bytes, fuzzed (bounded budget for every CI run).

The targets and the property live in ``simulations/fuzz_long.py`` (its long run is in
docs/fuzzing.md).  Property, per input: the decoder returns or raises a
``fedcredit.errors`` type, within ``TIME_LIMIT_S``, with a peak traced allocation
bounded by the input's size.  Inputs: arbitrary bytes and mutations (flip, set,
truncate, extend, splice, delete) of real valid encodings.  A fixed seed keeps a CI
run reproducible; ``FEDCREDIT_FUZZ_EXAMPLES`` raises the per-decoder budget.
"""

from __future__ import annotations

import os

import pytest

from simulations.fuzz_long import BUILDERS, Finding, Target, check, run_target

EXAMPLES = int(os.environ.get("FEDCREDIT_FUZZ_EXAMPLES", "400"))
# the CKKS parsers cost ~10-100 ms per input; the rest well under 1 ms
SLOW = {"ckks", "ckks_hist", "ckks_select", "artifacts", "scoring"}

_CACHE: dict[str, list[Target]] = {}


def _targets(group: str) -> list[Target]:
    if group not in _CACHE:
        _CACHE[group] = BUILDERS[group]()
    return _CACHE[group]


@pytest.mark.parametrize("group", sorted(BUILDERS))
def test_decoder_refuses_hostile_bytes_with_our_errors_in_bounded_time_and_memory(group: str) -> None:
    for t in _targets(group):
        run_target(t, max(5, EXAMPLES // 4) if group in SLOW else EXAMPLES)


def test_property_catches_a_foreign_exception_and_an_outsized_allocation() -> None:
    """The harness itself: a decoder that leaks a KeyError, or allocates 10^8 bytes for 3, is a finding."""
    import numpy as np

    def leaks(b: bytes) -> None:
        {}[b]

    def balloons(b: bytes) -> None:
        np.ones(10**8 // 8)

    with pytest.raises(Finding, match="KeyError"):
        check(Target("leaky", leaks, [b""]), b"abc")
    with pytest.raises(Finding, match="allocated"):
        check(Target("balloon", balloons, [b""]), b"abc")


def test_a_header_claiming_a_huge_array_is_refused_before_allocation() -> None:
    """The concrete attacks named in the issue: a codec header, an FCKK blob and a .npy header each claim
    ~2^40 elements in a tiny payload; each is refused with our error and no large allocation."""
    from simulations.fuzz_long import _artifacts, _ckks, _codec

    for group, name in ((_codec, "codec.unpack (FCW1)"), (_ckks, "ckks.decrypt_vector (FCKK blob)"),
                        (_artifacts, "artifacts.load_npz")):
        t = next(x for x in group() if x.name == name)
        for s in t.seeds:
            check(t, s)
        assert t.stats["refused"] >= 1, f"{name}: the lying seed was accepted"


# --------------------------------------------------------------------------- relay frames, end to end


@pytest.fixture(scope="module")
def relay_pair(tmp_path_factory: pytest.TempPathFactory):
    """A real relay (mutual TLS, federation certificates) with bob and alice connected as RelayTransports,
    and mallory: a party holding a valid certificate that speaks raw Frames on its own stream."""
    from coordinator.relay import start_relay
    from crypto.certs import Identity, init_ca, issue
    from party.dataplane import RelayTransport

    root = tmp_path_factory.mktemp("relay-fuzz")
    init_ca(root / "ca", "fuzz")
    issue(root / "ca", root / "coord", "coord", role="coordinator")
    for n in ("alice", "bob", "mallory"):
        issue(root / "ca", root / n, n)
    members = frozenset({"alice", "bob", "mallory"})
    relay = start_relay(Identity.load(root / "coord", "coord"), "127.0.0.1:0",
                        membership=lambda s: members if s == "fz" else None)
    bob = RelayTransport(Identity.load(root / "bob", "bob"), relay.address, "fz")
    alice = RelayTransport(Identity.load(root / "alice", "alice"), relay.address, "fz")
    yield relay, alice, bob, Identity.load(root / "mallory", "mallory")
    alice.close()
    bob.close()
    relay.stop(0)


def test_arbitrary_frame_fields_from_a_member_reach_bob_only_as_our_errors(relay_pair) -> None:
    """The attacker is a session member with a real certificate that writes Frames by hand: any kind
    (unknown ones too), receiver, tag, seq (0, 2^64-1, replays) and payload (random, or a valid
    envelope mutated).  Bob's receive side must reject each with our error types, keep its stream, and
    still talk to alice; mallory is then named in what bob raises (its first bad frame poisons mallory's
    direction at bob, by design: nothing later from it is trusted)."""
    import grpc
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from crypto.envelope import seal
    from crypto.tls import channel_credentials
    from fedcredit.dataplane import GRPC_OPTIONS, frame_aad
    from fedcredit.errors import FedCreditError
    from protos import dataplane_pb2_grpc as pbg
    from protos.dataplane_pb2 import Frame

    relay, alice, bob, mallory = relay_pair
    valid = seal(b"hello bob", alice._peer_key("bob"), mallory.envelope_private,
                 frame_aad("fz", "mallory", "bob", "t", 1))
    frames = st.builds(
        Frame,
        kind=st.sampled_from([0, 1, 2, 3, 4, 5, 7, 2**31 - 1]),
        session=st.sampled_from(["fz", "", "other", "fz\x00"]),
        sender=st.sampled_from(["", "alice", "bob", "mallory"]),
        receiver=st.sampled_from(["bob", "bob", "alice", "", "nobody", "b" * 300]),
        tag=st.one_of(st.sampled_from(["t", "psi.hello", ""]), st.text(max_size=40)),
        seq=st.one_of(st.sampled_from([0, 1, 2, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)),
        payload=st.one_of(st.binary(max_size=300), st.just(valid), st.just(valid[:-1] + bytes([valid[-1] ^ 1]))),
        error=st.text(max_size=40),
    )
    creds = channel_credentials(mallory)

    @settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(frames, min_size=5, max_size=40))
    def prop(batch: list) -> None:
        with grpc.secure_channel(relay.address, creds, options=GRPC_OPTIONS) as ch:
            stream = pbg.RelayStub(ch).Connect(iter([Frame(kind=Frame.HELLO, session="fz"), *batch]), timeout=5)
            try:
                for _ in stream:
                    pass
            except grpc.RpcError:
                pass  # the relay may close a misbehaving stream: its call, not bob's problem
        tag = f"ok-{len(batch)}-{batch[0].seq}"
        alice.send("bob", tag, b"still here")
        assert bob.recv("alice", tag, timeout=10) == b"still here"
        assert bob._reader.is_alive()

    prop()
    with pytest.raises(FedCreditError, match="mallory"):  # bob names who sent the garbage
        bob.recv("mallory", "never-sent", timeout=0.5)
