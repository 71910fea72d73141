"""The in-memory transport and the one way a failed role stops its peers waiting (``Transport.abort``)."""

from __future__ import annotations

import threading

import pytest

from fedcredit.errors import DataError, PeerAborted, ProtocolError
from fedcredit.transport import CountingTransport, InMemoryHub
from simulations.inprocess import run_roles


def test_abort_ends_a_blocked_receive_with_the_reason() -> None:
    hub = InMemoryHub(default_timeout=60)
    a, b = hub.endpoint("a"), hub.endpoint("b")
    got: list[BaseException] = []

    def wait() -> None:
        try:
            a.recv("b", "never")  # would wait 60 s for a timeout
        except ProtocolError as e:
            got.append(e)

    t = threading.Thread(target=wait)
    t.start()
    b.send("a", "before", b"x")
    CountingTransport(b).abort("DataError: bad row 3")  # wrappers pass it on
    t.join(timeout=10)
    assert not t.is_alive() and isinstance(got[0], PeerAborted)
    assert "party 'b' aborted: DataError: bad row 3" in str(got[0])
    assert a.recv("b", "before") == b"x"  # sent before the abort: still delivered
    with pytest.raises(PeerAborted):
        a.recv("b", "later")  # and every later wait fails at once too


def test_run_roles_reports_the_first_failure_not_the_aborts_it_caused() -> None:
    def failing(t):  # type: ignore[no-untyped-def]
        raise DataError("bad table at row 9")

    def waiting(t):  # type: ignore[no-untyped-def]
        return t.recv("bank", "hello")  # stopped by bank's abort, not by a timeout

    with pytest.raises(DataError, match=r"party 'bank': bad table at row 9"):
        run_roles(InMemoryHub(default_timeout=60), {"bank": failing, "fintech": waiting}, join_timeout=10)


def test_run_roles_bounds_the_whole_run() -> None:
    def stuck(t):  # type: ignore[no-untyped-def]
        return t.recv("other", "never")

    with pytest.raises(PeerAborted, match="exceeded its 0.5 s bound"):
        run_roles(InMemoryHub(default_timeout=60), {"one": stuck, "other": stuck}, timeout_s=0.5, join_timeout=10)
