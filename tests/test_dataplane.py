"""The gRPC data plane end to end: real relay, real mutual TLS, real sealed envelopes.

Every test starts a relay on 127.0.0.1:0 with certificates from crypto.certs in a
temp dir and connects parties through party.dataplane.RelayTransport.  The relay's
``capture`` hook records what an honest-but-curious (or, when it mutates frames,
malicious) relay operator sees.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tcp_proxy import TcpProxy

from coordinator.relay import GRPC_OPTIONS, Frame, QueueCaps, RelayHandle, start_relay
from crypto.certs import Identity, init_ca, issue
from crypto.tls import channel_credentials
from fedcredit.errors import PeerAborted, ProtocolError, SecurityError
from party.audit import AuditLog
from party.dataplane import RelayTransport
from protos import dataplane_pb2 as pb
from protos import dataplane_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
JOB_PARTIES = frozenset({"alice", "bob", "carol", "crash"})


def members(session: str) -> frozenset[str] | None:
    """Every 'job-*' session is a run of the four test parties (the coordinator asks its run registry)."""
    return JOB_PARTIES if session.startswith("job-") else None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d / "ca", "testfed")
    ids = {"coord": issue(d / "ca", d / "coord", "coord", role="coordinator")}
    for name in ("alice", "bob", "carol", "crash"):
        ids[name] = issue(d / "ca", d / name, name)
    ids["op"] = issue(d / "ca", d / "op", "op", role="operator")
    init_ca(d / "evilca", "evilfed")
    ids["mallory"] = issue(d / "evilca", d / "mallory", "mallory")
    return ids


@pytest.fixture()
def captured() -> list[Frame]:
    return []


@pytest.fixture()
def relay(pki: dict[str, Identity], captured: list[Frame]) -> Iterator[RelayHandle]:
    h = start_relay(pki["coord"], membership=members, capture=lambda f: captured.append(_copy(f)))
    yield h
    h.stop(grace=0)


def _copy(f: Frame) -> Frame:
    c = Frame()
    c.CopyFrom(f)
    return c


def _pair(pki: dict[str, Identity], relay: RelayHandle, session: str = "job-1", **kw: object) -> tuple[RelayTransport, RelayTransport]:
    return (
        RelayTransport(pki["alice"], relay.address, session, **kw),  # type: ignore[arg-type]
        RelayTransport(pki["bob"], relay.address, session, **kw),  # type: ignore[arg-type]
    )


def test_roundtrip_and_ping_pong(pki: dict[str, Identity], relay: RelayHandle) -> None:
    a, b = _pair(pki, relay)
    with a, b:
        assert a.me == "alice" and b.me == "bob"
        a.send("bob", "hello", b"hi bob")
        a.send("bob", "hello", b"second")
        a.send("bob", "other", b"other tag")
        # per-tag queues: a later tag can be read first, order within a tag is kept
        assert b.recv("alice", "other", timeout=10) == b"other tag"
        assert b.recv("alice", "hello", timeout=10) == b"hi bob"
        assert b.recv("alice", "hello", timeout=10) == b"second"

        n = 200

        def echo() -> None:
            for _ in range(n):
                msg = b.recv("alice", "ping", timeout=20)
                b.send("alice", "pong", msg[::-1] + b"!")

        t = threading.Thread(target=echo)
        t.start()
        for i in range(n):
            payload = os.urandom(1 + (i * 37) % 2000)
            a.send("bob", "ping", payload)
            assert a.recv("bob", "pong", timeout=20) == payload[::-1] + b"!"
        t.join(timeout=20)
        assert not t.is_alive()
        assert relay.servicer.traffic("job-1")[("alice", "bob")][0] == n + 3
        assert relay.servicer.traffic("job-1")[("bob", "alice")][0] == n


def test_five_megabyte_payload(pki: dict[str, Identity], relay: RelayHandle) -> None:
    a, b = _pair(pki, relay)
    with a, b:
        big = os.urandom(5 * 1024 * 1024)
        a.send("bob", "ctx", big)
        got = b.recv("alice", "ctx", timeout=30)
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
        b.send("alice", "ack", got[:16])
        assert a.recv("bob", "ack", timeout=30) == big[:16]


def test_relay_sees_only_sealed_payloads(pki: dict[str, Identity], relay: RelayHandle, captured: list[Frame]) -> None:
    secret_a = b"LABEL-VECTOR:" + os.urandom(48).hex().encode()
    secret_b = b"GRADIENT:" + os.urandom(48).hex().encode()
    a, b = _pair(pki, relay)
    with a, b:
        a.send("bob", "labels", secret_a * 20)
        assert b.recv("alice", "labels", timeout=10) == secret_a * 20
        b.send("alice", "grads", secret_b)
        assert a.recv("bob", "grads", timeout=10) == secret_b
    data = [f for f in captured if f.kind == Frame.DATA]
    assert [(f.sender, f.receiver, f.tag) for f in data] == [("alice", "bob", "labels"), ("bob", "alice", "grads")]
    for f in data:
        wire = f.SerializeToString()
        for secret in (secret_a, secret_b, secret_a[:16], secret_b[:16]):
            assert secret not in wire
    # what the relay does learn: sizes (plaintext + fixed envelope overhead)
    assert len(data[0].payload) - len(secret_a * 20) == len(data[1].payload) - len(secret_b) > 0


def test_tampering_relay_is_detected(pki: dict[str, Identity], captured: list[Frame]) -> None:
    """A relay that edits a payload byte, a tag or a seq makes the receiver fail loudly."""

    def tamper(f: Frame) -> None:
        if f.tag == "flip":
            f.payload = f.payload[:-1] + bytes([f.payload[-1] ^ 1])
        elif f.tag == "relabel":
            f.tag = "other"

    with start_relay(pki["coord"], membership=members, capture=tamper) as h:
        a, b = _pair(pki, h)
        with a, b:
            a.send("bob", "flip", b"x" * 100)
            with pytest.raises(SecurityError, match="alice"):
                b.recv("alice", "flip", timeout=10)
        a, b = _pair(pki, h, session="job-2")
        with a, b:
            a.send("bob", "relabel", b"y")
            with pytest.raises(SecurityError, match="alice"):
                b.recv("alice", "other", timeout=10)


def test_foreign_ca_party_is_refused(pki: dict[str, Identity], relay: RelayHandle) -> None:
    mallory = pki["mallory"]
    with pytest.raises(SecurityError, match=r"TLS handshake with the relay at 127\.0\.0\.1:\d+ failed"):
        RelayTransport(mallory, relay.address, "job-1", connect_timeout=10)
    # Even trusting the federation CA (so it accepts the relay), its own cert is rejected by the relay.
    sneaky = Identity(mallory.name, mallory.role, mallory.cert_pem, mallory.key_pem, pki["alice"].ca_pem,
                      mallory.envelope_private, mallory.dir)
    with pytest.raises(SecurityError, match="rejected this party's certificate"):
        RelayTransport(sneaky, relay.address, "job-1", connect_timeout=10)
    assert relay.servicer.connected() == []


def test_non_party_role_is_refused(pki: dict[str, Identity], relay: RelayHandle) -> None:
    with pytest.raises(SecurityError, match="role 'operator'"):
        RelayTransport(pki["op"], relay.address, "job-1", connect_timeout=10)


def test_duplicate_stream_is_refused(pki: dict[str, Identity], relay: RelayHandle) -> None:
    with RelayTransport(pki["alice"], relay.address, "job-1"):
        with pytest.raises(ProtocolError, match="already connected to session 'job-1'"):
            RelayTransport(pki["alice"], relay.address, "job-1", connect_timeout=10)
        # another session is fine
        RelayTransport(pki["alice"], relay.address, "job-2").close()


def test_sender_cannot_be_spoofed(pki: dict[str, Identity], relay: RelayHandle, captured: list[Frame]) -> None:
    alice = pki["alice"]
    with RelayTransport(pki["carol"], relay.address, "job-1") as carol:
        channel = grpc.secure_channel(relay.address, channel_credentials(alice), options=list(GRPC_OPTIONS))
        outq: queue.Queue[Frame | None] = queue.Queue()
        outq.put(Frame(kind=Frame.HELLO, session="job-1", sender="bob"))
        call = pb_grpc.RelayStub(channel).Connect(iter(outq.get, None))
        ack = next(call)
        assert ack.kind == Frame.HELLO_ACK and ack.receiver == "alice"  # the relay knows who we are
        outq.put(Frame(kind=Frame.DATA, session="job-1", sender="bob", receiver="carol", tag="t", seq=1,
                       payload=b"\x01" + os.urandom(80)))
        with pytest.raises(SecurityError, match="from party 'alice'"):
            carol.recv("alice", "t", timeout=10)  # stamped as alice; junk payload fails to open
        with pytest.raises(ProtocolError, match="no message 't' from party 'bob'"):
            carol.recv("bob", "t", timeout=0.3)
        outq.put(None)
        call.cancel()
        channel.close()
    assert [(f.sender, f.receiver) for f in captured if f.kind == Frame.DATA] == [("alice", "carol")]


def test_orderly_close_fails_peer_recv_fast(pki: dict[str, Identity], relay: RelayHandle) -> None:
    a, b = _pair(pki, relay)
    with a:
        b.send("alice", "last", b"bye")
        b.close()
        # messages sent before leaving are still delivered ...
        assert a.recv("bob", "last", timeout=10) == b"bye"
        # ... then waiting for more fails at once, naming the party, instead of hanging
        t = time.monotonic()
        with pytest.raises(ProtocolError, match="party 'bob' closed its connection"):
            a.recv("bob", "never", timeout=30)
        assert time.monotonic() - t < 5
        with pytest.raises(ProtocolError, match="bob"):
            a.send("bob", "x", b"late")


def test_abort_tells_the_peer_why_over_the_relay(pki: dict[str, Identity], relay: RelayHandle,
                                                 captured: list[Frame]) -> None:
    """Transport.abort: the peer's pending receive ends with the reason (not a timeout, not a bare 'gone')."""
    a, b = _pair(pki, relay, peer_certs={"alice": pki["alice"].cert_pem, "bob": pki["bob"].cert_pem})
    with a, b:
        b.send("alice", "before", b"still delivered")
        b.abort("DataError: fintech.csv row 7 is bad")
        assert a.recv("bob", "before", timeout=10) == b"still delivered"  # sent before the abort: delivered first
        with pytest.raises(PeerAborted, match="party 'bob' aborted: DataError: fintech.csv row 7 is bad") as e:
            a.recv("bob", "never", timeout=30)  # a timeout would raise "no message ... within 30 s" instead
        assert e.value.party == "bob"
    # the abort crossed the relay sealed, like every payload (the relay sees only ciphertext)
    aborts = [f for f in captured if f.tag == "fc.abort"]
    assert aborts and all(b"fintech.csv" not in f.payload for f in aborts)


_CRASHER = """
import sys
from crypto.certs import Identity
from party.dataplane import RelayTransport
t = RelayTransport(Identity.load(sys.argv[1], "crash"), sys.argv[2], "job-1")
t.send("alice", "first", b"one")
print("sent", flush=True)
sys.stdin.read()  # block until killed
"""


def test_crashed_peer_fails_pending_recv(pki: dict[str, Identity]) -> None:
    """A SIGKILLed peer looks like a dropped stream: its place is held for the reconnect window
    (peers get a non-fatal notice), then a waiting recv fails naming it and the window."""
    with start_relay(pki["coord"], membership=members, reconnect_window_s=3.0) as relay, \
            RelayTransport(pki["alice"], relay.address, "job-1") as a:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CRASHER, str(pki["crash"].dir), relay.address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"sent"
            assert a.recv("crash", "first", timeout=20) == b"one"
            result: list[BaseException] = []

            def waiter() -> None:
                try:
                    a.recv("crash", "second", timeout=40)
                except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                    result.append(exc)

            w = threading.Thread(target=waiter)
            w.start()
            proc.kill()
            t = time.monotonic()
            w.join(timeout=20)
            assert not w.is_alive(), "recv kept waiting for a crashed peer"
            assert 2.5 < time.monotonic() - t < 10  # the window, then at once
            assert isinstance(result[0], ProtocolError)
            assert "party 'crash' lost its connection to the relay and did not reconnect within 3 s" in str(result[0])
            assert relay.servicer.suspended() == []
        finally:
            proc.kill()
            proc.wait()


def test_audit_log_records_every_send_without_content(pki: dict[str, Identity], relay: RelayHandle,
                                                     captured: list[Frame], tmp_path: Path) -> None:
    secret = b"ROW:" + os.urandom(32).hex().encode()
    log = AuditLog(tmp_path / "audit" / "alice.jsonl")
    a = RelayTransport(pki["alice"], relay.address, "job-1", audit=log)
    b = RelayTransport(pki["bob"], relay.address, "job-1")
    with a, b:
        for i in range(3):
            a.send("bob", f"step-{i}", secret * (i + 1))
            assert b.recv("alice", f"step-{i}", timeout=10) == secret * (i + 1)
        b.send("alice", "reply", b"r")  # received, not sent, by alice: not in her log
        assert a.recv("bob", "reply", timeout=10) == b"r"
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600
    recs = log.records()
    sent = [f for f in captured if f.kind == Frame.DATA and f.sender == "alice"]
    assert len(recs) == len(sent) == 3
    for rec, f in zip(recs, sent):
        assert (rec.session, rec.sender, rec.receiver, rec.tag, rec.seq) == ("job-1", "alice", "bob", f.tag, f.seq)
        assert rec.size == len(f.payload)
        assert rec.sha256 == hashlib.sha256(f.payload).hexdigest()
        assert rec.time.endswith("+00:00")
    raw = log.path.read_bytes()
    assert secret not in raw and secret[:12] not in raw
    log.close()
    # append-only across reopen
    log2 = AuditLog(log.path)
    log2.record_sent(session="s", sender="alice", receiver="bob", tag="t", seq=1, sealed=b"xyz")
    assert len(log2.records()) == 4 and log2.records()[:3] == recs
    log2.close()


def test_sessions_are_isolated(pki: dict[str, Identity], relay: RelayHandle, captured: list[Frame]) -> None:
    a1, b1 = _pair(pki, relay, session="job-1")
    a2, b2 = _pair(pki, relay, session="job-2")
    with a1, b1, a2, b2:
        a1.send("bob", "t", b"for job 1")
        a2.send("bob", "t", b"for job 2")
        assert b2.recv("alice", "t", timeout=10) == b"for job 2"
        assert b1.recv("alice", "t", timeout=10) == b"for job 1"
        with pytest.raises(ProtocolError, match="no message"):
            b2.recv("alice", "t", timeout=0.3)
        # leaving one session does not disturb the other
        b1.close()
        with pytest.raises(ProtocolError, match="closed its connection"):
            a1.recv("bob", "x", timeout=10)
        b2.send("alice", "u", b"still here")
        assert a2.recv("bob", "u", timeout=10) == b"still here"
    assert {f.session for f in captured} == {"job-1", "job-2"}


def test_frames_queue_until_receiver_connects(pki: dict[str, Identity]) -> None:
    with start_relay(pki["coord"], membership=members, directory_certs=[pki["bob"].cert_pem]) as h:
        with RelayTransport(pki["alice"], h.address, "job-1") as a:
            for i in range(5):
                a.send("bob", "early", str(i).encode())  # bob has not connected yet
            with RelayTransport(pki["bob"], h.address, "job-1") as b:
                assert [b.recv("alice", "early", timeout=10) for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
        # the sender may even leave before the receiver joins: frames still arrive, then "gone"
        with RelayTransport(pki["carol"], h.address, "job-2", peer_certs={"bob": pki["bob"].cert_pem}) as c:
            c.send("bob", "early", b"from carol")
        with RelayTransport(pki["bob"], h.address, "job-2") as b:
            assert b.recv("carol", "early", timeout=10) == b"from carol"
            with pytest.raises(ProtocolError, match="party 'carol' closed its connection"):
                b.recv("carol", "more", timeout=20)


def test_absent_receiver_errors(pki: dict[str, Identity]) -> None:
    certs = [pki["bob"].cert_pem, pki["carol"].cert_pem]
    with start_relay(pki["coord"], membership=members, directory_certs=certs, pending_timeout=0.5,
                     caps=QueueCaps(receiver_frames=2)) as h:
        with RelayTransport(pki["alice"], h.address, "job-1", peer_timeout=0.3) as a:
            a.send("bob", "t", b"1")
            t = time.monotonic()
            with pytest.raises(ProtocolError, match=r"party 'bob' did not connect to session 'job-1' within 0.5 s"):
                a.recv("bob", "reply", timeout=20)
            assert time.monotonic() - t < 10
            for _i in range(3):
                a.send("carol", "t", b"x")
            with pytest.raises(ProtocolError, match="relay: queue for party 'carol'.*is full"):
                a.recv("carol", "reply", timeout=10)
            with pytest.raises(ProtocolError, match="party 'ghost' has not registered with the relay"):
                a.send("ghost", "t", b"x")


def test_directory_serves_verifiable_certs(pki: dict[str, Identity], relay: RelayHandle) -> None:
    with RelayTransport(pki["alice"], relay.address, "job-1"):
        channel = grpc.secure_channel(relay.address, channel_credentials(pki["bob"]))
        reply = pb_grpc.RelayStub(channel).Directory(pb.DirectoryRequest(names=["alice", "nobody"]), timeout=10)
        channel.close()
    assert [(p.name, p.role) for p in reply.parties] == [("alice", "party")]
    assert reply.parties[0].cert_pem == pki["alice"].cert_pem
    assert list(reply.missing) == ["nobody"]


def test_relay_shutdown_fails_recv_fast(pki: dict[str, Identity]) -> None:
    h = start_relay(pki["coord"], membership=members)
    a = RelayTransport(pki["alice"], h.address, "job-1")
    try:
        result: list[BaseException] = []
        w = threading.Thread(target=lambda: _catch(result, lambda: a.recv("bob", "t", timeout=40)))
        w.start()
        h.stop(grace=0)
        w.join(timeout=20)
        assert not w.is_alive(), "recv kept waiting after the relay went down"
        assert isinstance(result[0], ProtocolError) and "relay at 127.0.0.1" in str(result[0])
        with pytest.raises(ProtocolError, match="relay"):
            a.send("bob", "t", b"x")
    finally:
        a.close()


def _catch(out: list[BaseException], fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
        out.append(exc)


def test_peer_certs_given_up_front_are_verified(pki: dict[str, Identity], relay: RelayHandle) -> None:
    # a preloaded certificate skips the directory (bob has not connected yet: frames queue)
    with RelayTransport(pki["alice"], relay.address, "job-1", peer_certs={"bob": pki["bob"].cert_pem}) as a:
        a.send("bob", "t", b"early")
        with RelayTransport(pki["bob"], relay.address, "job-1") as b:
            assert b.recv("alice", "t", timeout=10) == b"early"
    # a certificate under the wrong name, or from another CA, is refused before anything is sent
    with pytest.raises(SecurityError, match="'bob' was expected"):
        RelayTransport(pki["alice"], relay.address, "job-2", peer_certs={"bob": pki["carol"].cert_pem})
    with pytest.raises(SecurityError, match="not issued by federation CA"):
        RelayTransport(pki["alice"], relay.address, "job-2", peer_certs={"mallory": pki["mallory"].cert_pem})


# ----------------------------------------------------------------------- authorisation and queue caps (issue 8)


def _raw_stream(ident: Identity, address: str, session: str,
                hello: Frame | None = None) -> tuple[grpc.Channel, queue.Queue[Frame | None], object]:
    """A hand-made relay stream, as an attacker holding a party certificate would open one."""
    channel = grpc.secure_channel(address, channel_credentials(ident), options=list(GRPC_OPTIONS))
    outq: queue.Queue[Frame | None] = queue.Queue()
    outq.put(hello if hello is not None else Frame(kind=Frame.HELLO, session=session))
    return channel, outq, pb_grpc.RelayStub(channel).Connect(iter(outq.get, None))


def test_party_outside_the_job_cannot_join_its_session(pki: dict[str, Identity]) -> None:
    runs = {"run-7": frozenset({"alice", "bob"})}
    with start_relay(pki["coord"], membership=runs.get) as h:
        with pytest.raises(SecurityError, match=r"refused this party.*'carol' is not one of the parties of run 'run-7'"):
            RelayTransport(pki["carol"], h.address, "run-7", connect_timeout=10)
        with pytest.raises(SecurityError, match="session 'made-up' is not an active run"):
            RelayTransport(pki["carol"], h.address, "made-up", connect_timeout=10)
        # the same over a raw stream: PERMISSION_DENIED, and carol is never registered in the session
        channel, outq, call = _raw_stream(pki["carol"], h.address, "run-7")
        with pytest.raises(grpc.RpcError) as exc:
            next(call)  # type: ignore[call-overload]
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        outq.put(None)
        channel.close()
        assert h.servicer.connected() == [] and h.servicer.refused()["join"] == 3
        with RelayTransport(pki["alice"], h.address, "run-7"):  # a member joins as before
            assert h.servicer.connected() == [("run-7", "alice")]


def test_flood_to_made_up_receivers_is_refused_and_queues_nothing(pki: dict[str, Identity]) -> None:
    """The attack from issue 8: a party certificate holder floods frames for receivers that do not exist.
    Before, each made-up receiver got its own 512 MB queue (the coordinator grew 72 -> 478 MB); the relay's
    memory in a process of its own is measured by ``simulations/bench_dataplane.py --flood`` (docs/dataplane.md)."""
    caps = QueueCaps(sender_bytes=2 * 1024 * 1024, total_bytes=3 * 1024 * 1024)
    with start_relay(pki["coord"], membership=members, caps=caps) as h:
        channel, outq, call = _raw_stream(pki["alice"], h.address, "job-1")
        assert next(call).kind == Frame.HELLO_ACK  # type: ignore[call-overload]
        payload = os.urandom(64 * 1024)
        n = 800  # 50 MB of frames, each for a different made-up receiver
        for i in range(n):
            outq.put(Frame(kind=Frame.DATA, receiver=f"ghost-{i}", tag="t", seq=1, payload=payload))
        errors = [next(call) for _ in range(n)]  # type: ignore[call-overload]
        assert all(e.kind == Frame.ERROR and "not another party of run 'job-1'" in e.error for e in errors)
        assert h.servicer.queued()["pending_bytes"] == 0 and h.servicer.refused()["receiver"] == n
        # frames for a real member that has not connected: queued only up to the per-sender cap
        for seq in range(1, 61):  # 60 × 64 KB = 3.8 MB > 2 MB
            outq.put(Frame(kind=Frame.DATA, receiver="bob", tag="t", seq=seq, payload=payload))
        first = next(call)  # type: ignore[call-overload]
        assert first.kind == Frame.ERROR and "per sender" in first.error and "'alice'" in first.error
        assert h.servicer.queued()["pending_bytes"] <= caps.sender_bytes
        # a second member adds to the global cap, not beyond it
        with RelayTransport(pki["carol"], h.address, "job-2", peer_certs={"bob": pki["bob"].cert_pem}) as carol:
            with pytest.raises(ProtocolError, match=r"limits \d+ frames / 3145728 bytes in all"):
                for _ in range(40):
                    carol.send("bob", "t", payload)  # bob is in neither session yet
                carol.recv("bob", "reply", timeout=20)
            assert h.servicer.queued()["pending_bytes"] <= caps.total_bytes
        outq.put(None)
        channel.close()


def test_party_that_never_reads_its_stream_is_cut_off(pki: dict[str, Identity]) -> None:
    """Refusals are notices in the sender's own outbox; a sender that never reads them cannot grow it."""
    with start_relay(pki["coord"], membership=members, notice_bytes=64 * 1024) as h:
        channel, outq, call = _raw_stream(pki["alice"], h.address, "job-1")
        assert next(call).kind == Frame.HELLO_ACK  # type: ignore[call-overload]
        for i in range(50_000):  # never reading a reply
            outq.put(Frame(kind=Frame.DATA, receiver=f"ghost-{i}", tag="t", seq=1, payload=b"x"))
        deadline = time.monotonic() + 30
        while h.servicer.connected("job-1") and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the relay's state, bounded
        assert h.servicer.connected("job-1") == []
        assert h.servicer.queued()["outbox_bytes"] == 0
        with pytest.raises(grpc.RpcError) as exc:
            for _ in range(60_000):
                next(call)  # type: ignore[call-overload]
        assert exc.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)
        outq.put(None)
        channel.close()


def test_registry_membership_is_the_active_runs_job_parties(tmp_path: Path) -> None:
    from coordinator.registry import Registry

    reg = Registry(tmp_path / "registry.db")
    job = '[job]\nname = "v"\ntype = "vertical-lr"\nparties = ["bank", "fintech"]\nlabel_party = "bank"\n'
    run = reg.create_run("v", "vertical-lr", job)
    assert reg.job_parties(run) == {"bank", "fintech"}
    assert reg.job_parties("no-such-run") is None
    reg.finish(run, {})
    assert reg.job_parties(run) is None  # a finished run's session cannot be reopened


# ----------------------------------------------------------------------- surviving a dropped stream (issue 10)


def _wait_until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)  # polling transport/relay state, bounded


def test_cut_stream_resumes_mid_exchange_with_every_message_once_in_order(pki: dict[str, Identity],
                                                                          relay: RelayHandle) -> None:
    """alice's connection to the relay is reset three times during a 300-message ping-pong: she
    reconnects each time and both sides see every message exactly once, in order."""
    with TcpProxy(relay.address) as proxy:
        a = RelayTransport(pki["alice"], proxy.address, "job-1")
        b = RelayTransport(pki["bob"], relay.address, "job-1")
        with a, b:
            n = 300
            got_b: list[bytes] = []

            def echo() -> None:
                for _ in range(n):
                    msg = b.recv("alice", "ping", timeout=30)
                    got_b.append(msg)
                    b.send("alice", "pong", msg + b"!")

            t = threading.Thread(target=echo)
            t.start()
            got_a = []
            for i in range(n):
                a.send("bob", "ping", b"%d" % i)
                if i in (60, 150, 240):
                    proxy.cut()  # connection reset: whatever was in flight is lost
                got_a.append(a.recv("bob", "pong", timeout=30))
            t.join(timeout=30)
            assert not t.is_alive()
            assert got_b == [b"%d" % i for i in range(n)]
            assert got_a == [b"%d!" % i for i in range(n)]
            assert a.stats()["reconnects"] == 3 and proxy.accepted == 4
            assert relay.servicer.resumed == 3 and relay.servicer.suspended() == []


def test_frames_lost_in_flight_are_retransmitted_both_ways(pki: dict[str, Identity], relay: RelayHandle) -> None:
    """Frames both ways are stuck in a stalled link and then lost with it (reset): after alice
    reconnects, each side retransmits what the other did not get; nothing is delivered twice."""
    with TcpProxy(relay.address) as proxy:
        a = RelayTransport(pki["alice"], proxy.address, "job-1")
        b = RelayTransport(pki["bob"], relay.address, "job-1")
        with a, b:
            a.send("bob", "t", b"before")
            assert b.recv("alice", "t", timeout=10) == b"before"
            proxy.pause()
            for i in range(40):
                a.send("bob", "t", b"a%d" % i + os.urandom(2000))
                b.send("alice", "u", b"b%d" % i)
            time.sleep(0.3)  # let both streams push the frames into the stalled link (nothing to poll)
            proxy.cut()
            proxy.resume()
            got_b = [b.recv("alice", "t", timeout=30)[:4].rstrip(b"\x00") for _ in range(40)]
            got_a = [a.recv("bob", "u", timeout=30) for _ in range(40)]
            assert [g.decode(errors="replace")[: len(f"a{i}")] for i, g in enumerate(got_b)] == \
                [f"a{i}" for i in range(40)]
            assert got_a == [b"b%d" % i for i in range(40)]
            with pytest.raises(ProtocolError, match="no message"):
                b.recv("alice", "t", timeout=0.5)  # and nothing a second time
            with pytest.raises(ProtocolError, match="no message"):
                a.recv("bob", "u", timeout=0.5)
            assert a.stats()["retransmitted"] > 0 and b.stats()["retransmitted"] > 0
            _wait_until(lambda: a.stats()["retained_frames"] == 0 and b.stats()["retained_frames"] == 0, 10,
                        "both sides to trim what the other acknowledged")


def test_silent_stall_is_detected_by_keepalive_and_resumed(pki: dict[str, Identity], relay: RelayHandle) -> None:
    """A link that goes silent (nothing closed) for 7 s: keepalive notices within seconds at both
    ends, the relay holds alice's place (bob is told, not failed), alice resumes and the messages
    sent meanwhile arrive once."""
    with TcpProxy(relay.address) as proxy:
        a = RelayTransport(pki["alice"], proxy.address, "job-1", peer_certs={"bob": pki["bob"].cert_pem})
        b = RelayTransport(pki["bob"], relay.address, "job-1")
        with a, b:
            proxy.pause()
            t0 = time.monotonic()
            b.send("alice", "during", b"sent while alice is unreachable")
            _wait_until(lambda: relay.servicer.suspended("job-1") == [("job-1", "alice")], 10,
                        "the relay to notice the stall")
            assert time.monotonic() - t0 < 8
            a.send("bob", "during", b"sent by alice while cut off")
            time.sleep(7 - (time.monotonic() - t0))  # the stall lasts 7 s: the thing under test is a duration
            proxy.resume()
            assert a.recv("bob", "during", timeout=30) == b"sent while alice is unreachable"
            assert b.recv("alice", "during", timeout=30) == b"sent by alice while cut off"
            assert a.stats()["reconnects"] == 1 and relay.servicer.resumed == 1


def test_other_party_cannot_take_a_suspended_place(pki: dict[str, Identity], relay: RelayHandle,
                                                   tmp_path: Path) -> None:
    """While alice's place is held: carol (another member) asking to resume gets nothing of alice's; a
    second certificate for the name 'alice' from the same CA is refused; a fresh alice stream is
    refused; only the original certificate resumes and receives what was queued for it."""
    ca_dir = tmp_path / "ca-copy"
    # the pki fixture's CA directory: the certificates' parent 'ca'
    src_ca = pki["alice"].dir.parent / "ca"
    import shutil

    shutil.copytree(src_ca, ca_dir)
    alice2 = issue(ca_dir, tmp_path / "alice2", "alice")  # same CA, same name, other key
    with RelayTransport(pki["bob"], relay.address, "job-1", peer_certs={"alice": pki["alice"].cert_pem}) as b:
        channel, outq, call = _raw_stream(pki["alice"], relay.address, "job-1")
        assert next(call).kind == Frame.HELLO_ACK  # type: ignore[call-overload]
        call.cancel()  # type: ignore[attr-defined]
        channel.close()
        _wait_until(lambda: relay.servicer.suspended("job-1") == [("job-1", "alice")], 10, "alice's suspension")
        b.send("alice", "queued", b"for alice only")

        ch, q, c = _raw_stream(pki["carol"], relay.address, "job-1",
                               Frame(kind=Frame.HELLO, session="job-1", resume=True, acks={"bob": 0}))
        err = next(c)  # type: ignore[call-overload]
        assert err.kind == Frame.ERROR and "party 'carol' cannot resume session 'job-1'" in err.error
        q.put(None)
        ch.close()

        ch, q, c = _raw_stream(alice2, relay.address, "job-1",
                               Frame(kind=Frame.HELLO, session="job-1", resume=True))
        with pytest.raises(grpc.RpcError) as exc:
            next(c)  # type: ignore[call-overload]
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "different certificate" in exc.value.details()
        q.put(None)
        ch.close()

        ch, q, c = _raw_stream(pki["alice"], relay.address, "job-1")  # a fresh join, not a resume
        err = next(c)  # type: ignore[call-overload]
        assert err.kind == Frame.ERROR and "only a resuming stream" in err.error
        q.put(None)
        ch.close()
        assert relay.servicer.suspended("job-1") == [("job-1", "alice")]
        assert relay.servicer.refused()["resume"] == 1

        ch, q, c = _raw_stream(pki["alice"], relay.address, "job-1",
                               Frame(kind=Frame.HELLO, session="job-1", resume=True, acks={"bob": 0}))
        assert next(c).kind == Frame.HELLO_ACK  # type: ignore[call-overload]
        queued = next(c)  # type: ignore[call-overload]
        assert (queued.kind, queued.sender, queued.tag, queued.seq) == (Frame.DATA, "bob", "queued", 1)
        q.put(None)
        ch.close()
    # what the relay captured for alice's place never went to carol
    assert relay.servicer.resumed == 1


def test_window_expiry_fails_peers_naming_the_party(pki: dict[str, Identity]) -> None:
    """alice cannot reach the relay for longer than the window: bob's pending recv fails with the
    party and the window; alice fails too, and a late resume is refused."""
    with start_relay(pki["coord"], membership=members, reconnect_window_s=1.5) as relay, \
            TcpProxy(relay.address) as proxy:
        a = RelayTransport(pki["alice"], proxy.address, "job-1", reconnect_window_s=2.5)
        with a, RelayTransport(pki["bob"], relay.address, "job-1") as b:
            result: list[BaseException] = []
            w = threading.Thread(target=lambda: _catch(result, lambda: b.recv("alice", "never", timeout=40)))
            w.start()
            proxy.refuse = True
            proxy.cut()
            t = time.monotonic()
            w.join(timeout=20)
            assert not w.is_alive()
            assert 1.4 < time.monotonic() - t < 8
            assert isinstance(result[0], ProtocolError)
            assert "party 'alice' lost its connection to the relay and did not reconnect within 1.5 s" in str(result[0])
            proxy.refuse = False  # alice's next attempt gets through, but her place is gone
            with pytest.raises(ProtocolError, match=r"refused to resume session 'job-1'.*did not reconnect within 1.5 s"
                               r"|could not reconnect within 2.5 s"):
                a.recv("bob", "x", timeout=20)


def test_window_zero_keeps_the_old_fail_fast_behaviour(pki: dict[str, Identity]) -> None:
    with start_relay(pki["coord"], membership=members, reconnect_window_s=0) as relay, \
            TcpProxy(relay.address) as proxy:
        a = RelayTransport(pki["alice"], proxy.address, "job-1", reconnect_window_s=0)
        with a, RelayTransport(pki["bob"], relay.address, "job-1") as b:
            proxy.cut()
            with pytest.raises(ProtocolError, match="party 'alice' lost its connection to the relay"):
                b.recv("alice", "x", timeout=20)
            with pytest.raises(ProtocolError, match="lost the connection to the relay"):
                a.recv("bob", "x", timeout=20)


def test_replayed_frame_is_dropped_reordered_or_dropped_frames_still_fail(pki: dict[str, Identity]) -> None:
    """A relay that replays a frame gains nothing (the duplicate is dropped, content delivered once);
    the frame it withheld by doing so shows up as a gap at the next one, and a frame whose seq it
    edits (to reorder) fails authentication: both are still SecurityErrors at the receiver."""
    first: list[Frame] = []

    def attack(f: Frame) -> None:
        if f.kind != Frame.DATA:
            return
        if f.tag == "one":
            first.append(_copy(f))
        elif f.tag == "replay":  # replace this frame by a replay of the first one
            f.CopyFrom(first[0])
        elif f.tag == "swap":
            f.seq += 1

    with start_relay(pki["coord"], membership=members, capture=attack) as h:
        a, b = _pair(pki, h)
        with a, b:
            a.send("bob", "one", b"1")
            a.send("bob", "replay", b"2")
            assert b.recv("alice", "one", timeout=10) == b"1"
            with pytest.raises(ProtocolError, match="no message 'one'"):
                b.recv("alice", "one", timeout=0.5)  # the replay was not delivered again
            a.send("bob", "after", b"3")  # seq 3 when 2 (withheld by the replay) is expected
            with pytest.raises(SecurityError, match="message 3 from party 'alice' arrived when 2 was expected"):
                b.recv("alice", "after", timeout=10)
            assert b.stats()["duplicates_dropped"] == 1
        a, b = _pair(pki, h, session="job-3")
        with a, b:
            a.send("bob", "swap", b"x")  # seq edited: the sealed AAD no longer matches
            with pytest.raises(SecurityError, match="alice"):
                b.recv("alice", "swap", timeout=10)


def test_retained_frames_are_bounded_and_acknowledged(pki: dict[str, Identity], relay: RelayHandle) -> None:
    """What a sender keeps for retransmission is trimmed by the receiver's ACKs, and a receiver that
    is away holds the sender at the bound instead of growing it."""
    with TcpProxy(relay.address) as proxy:
        a = RelayTransport(pki["alice"], relay.address, "job-1", retain_frames=20, recv_timeout=1.5)
        b = RelayTransport(pki["bob"], proxy.address, "job-1")
        with a, b:
            for i in range(100):
                a.send("bob", "t", b"%d" % i)  # bob reads and ACKs: the buffer never reaches the bound
            assert [b.recv("alice", "t", timeout=10) for _ in range(100)] == [b"%d" % i for i in range(100)]
            _wait_until(lambda: a.stats()["retained_frames"] == 0, 10, "alice to trim on bob's ACKs")
            proxy.pause()  # bob goes silent: his ACKs stop
            _wait_until(lambda: relay.servicer.suspended("job-1") == [("job-1", "bob")], 10, "bob's suspension")
            for i in range(20):
                a.send("bob", "u", b"%d" % i)
            with pytest.raises(ProtocolError, match=r"party 'bob' has not acknowledged 20 frame\(s\)"):
                a.send("bob", "u", b"one too many")
            assert a.stats()["retained_frames"] == 20
            proxy.resume()
            assert [b.recv("alice", "u", timeout=30) for _ in range(20)] == [b"%d" % i for i in range(20)]


def test_reconnect_window_is_configured_in_both_configs(tmp_path: Path) -> None:
    from fedcredit.config import load_party_config
    from fedcredit.errors import ConfigError

    base = ('[party]\nname = "bank1"\nidentity_dir = "certs"\nstate_dir = "state"\n'
            '[coordinator]\nflower_address = "127.0.0.1:1"\nrelay_address = "127.0.0.1:2"\n')
    p = tmp_path / "party.toml"
    p.write_text(base)
    assert load_party_config(p).coordinator.reconnect_window_s == 30.0
    p.write_text(base + "reconnect_window_s = 90\n")
    assert load_party_config(p).coordinator.reconnect_window_s == 90.0
    p.write_text(base + "reconnect_window_s = -1\n")
    with pytest.raises(ConfigError, match=r"party.toml: \[coordinator\]\.reconnect_window_s"):
        load_party_config(p)
