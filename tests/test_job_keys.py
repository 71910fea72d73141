"""Job secret keys are deleted when the job ends (issue 8 item 6): no CKKS secret context stays in a
bank's state directory after a horizontal run, whether it succeeded, lost a party or failed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crypto import ckks
from fedcredit.channel import DirState, Handler, LocalChannel, StateStore
from fedcredit.errors import FedCreditError, ProtocolError
from fedcredit.protocols.horizontal import HorizontalJob, decode_message, run_coordinator
from simulations.generator import write_bank_files
from simulations.horizontal_sim import make_local_federation

PARTIES = ["bank1", "bank2", "bank3"]


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bank_files(tmp_path_factory.mktemp("gen"), n_banks=3, rows_per_bank=800, test_rows=600, seed=5)


def _secret_files(root: Path) -> list[Path]:
    """Every file under ``root`` that holds a CKKS context with its secret key."""
    found = []
    for p in root.rglob("*"):
        if p.is_file():
            try:
                ckks.load_secret(p.read_bytes())
            except FedCreditError:
                continue
            found.append(p)
    return found


def _federation(banks: dict[str, Path], tmp: Path, wrap: dict[str, Callable[[Handler], Handler]] | None = None):
    train = {p: banks[p] for p in PARTIES}
    fed = make_local_federation(train, {p: banks["test"] for p in PARTIES}, tmp / "out")
    handlers = dict(fed.channel._handlers)
    seen: dict[str, int] = {p: 0 for p in PARTIES}

    def watch(p: str, h: Handler) -> Handler:  # proves the key really was on disk during the run
        def handle(method: str, payload: bytes, state: StateStore) -> bytes:
            out = h(method, payload, state)
            seen[p] = max(seen[p], len(_secret_files(tmp / "state" / p)))
            return out

        return handle

    wrap = wrap or {}
    handlers = {p: watch(p, wrap[p](h) if p in wrap else h) for p, h in handlers.items()}
    states = {p: DirState(tmp / "state" / p / "runs" / "r" / "state") for p in PARTIES}
    return LocalChannel(handlers, states), seen


def test_no_secret_key_remains_after_a_successful_run(banks: dict[str, Path], tmp_path: Path) -> None:
    ch, seen = _federation(banks, tmp_path)
    res = run_coordinator(ch, HorizontalJob(run_id="ok", parties=PARTIES, rounds=2))
    assert res.global_metrics is not None and res.global_metrics["auc"] > 0.6
    assert seen == {p: 1 for p in PARTIES}  # each bank held the key on disk while the job ran
    assert _secret_files(tmp_path / "state") == []


def _fails_at_fit(round_idx: int) -> Callable[[Handler], Handler]:
    def wrap(h: Handler) -> Handler:
        def handle(m: str, payload: bytes, state: StateStore) -> bytes:
            if m == "fit" and decode_message(payload)[0].get("round") == round_idx:
                raise ConnectionError("simulated disconnect")
            return h(m, payload, state)

        return handle

    return wrap


def test_no_secret_key_remains_after_a_failed_run(banks: dict[str, Path], tmp_path: Path) -> None:
    ch, seen = _federation(banks, tmp_path, {"bank2": _fails_at_fit(2)})
    with pytest.raises(ProtocolError, match="simulated disconnect"):
        run_coordinator(ch, HorizontalJob(run_id="fail", parties=PARTIES, rounds=3))
    assert seen == {p: 1 for p in PARTIES}
    assert _secret_files(tmp_path / "state") == []  # the dropped bank2 included


def test_no_secret_key_remains_at_a_dropped_party(banks: dict[str, Path], tmp_path: Path) -> None:
    ch, _ = _federation(banks, tmp_path, {"bank2": _fails_at_fit(1)})
    res = run_coordinator(ch, HorizontalJob(run_id="drop", parties=PARTIES, rounds=2, min_parties=2))
    assert res.parties == ["bank1", "bank3"]
    assert _secret_files(tmp_path / "state") == []
