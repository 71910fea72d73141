"""A party's relay stream stalls mid-job, behind a real TCP proxy, during a real vertical LR job.

A coordinator and two parties as processes on 127.0.0.1 (as in test_e2e_vertical.py); the
passive party "fintech" reaches the relay only through :class:`tcp_proxy.TcpProxy` (its
``[coordinator].relay_address`` points at the proxy; the bank and the coordinator are not
behind it).  The proxy pauses forwarding without closing anything, the way a black-holed
link behaves:

* 5 s: keepalive notices the stall at both ends, the relay holds the fintech's place,
  the fintech reconnects when the link is back, and the job finishes with the same model
  as the run without a pause.
* 60 s, default 30 s window: the job fails within about the window, naming the fintech.
* 60 s with ``reconnect_window_s = 90`` configured at the coordinator and both parties: survived.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tcp_proxy import TcpProxy

from simulations.deployment import LocalFederation, PartySpec

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# plaintext weights: the two runs' model files are compared field by field below; a shared-weights part (the
# default) holds fresh ciphertexts and keys every run (that mode's e2e run is tests/test_e2e_vertical.py)
MODEL = {"test_fraction": 0.25, "split_seed": 7, "max_epochs": 6, "passive_weights": "plaintext"}
# Vertical LR rather than SecureBoost: in this set-up SecureBoost's passive histogram sometimes fails
# with TenSEAL's "result ciphertext is transparent" (an all-zero mask plaintext in crypto/ckks_hist.py,
# depending on the PSI's row order), pause or not -- a protocol bug outside the data plane.


def _federation(root: Path, window: float | None = None) -> LocalFederation:
    """Bank + fintech; only the fintech reaches the relay through a TcpProxy (``federation.proxy``)."""
    data = root / "data"
    data.mkdir()
    guest = pd.read_csv(DATA / "default_credit_hetero_guest.csv")
    host = pd.read_csv(DATA / "default_credit_hetero_host.csv")
    ids = np.random.default_rng(5).permutation(guest["id"].to_numpy())[:3000]
    guest.set_index("id").loc[ids].reset_index().to_csv(data / "bank.csv", index=False)
    host.set_index("id").loc[ids].reset_index().to_csv(data / "fintech.csv", index=False)
    parties = [PartySpec("bank", {"train": {"path": data / "bank.csv", "label_column": "y"}}),
               PartySpec("fintech", {"train": {"path": data / "fintech.csv"}}, role="fintech")]
    federation = LocalFederation(root / "fed", parties).setup()
    proxy = TcpProxy(f"127.0.0.1:{federation.relay_port}")
    cfg = federation.root / "fintech.toml"
    text = cfg.read_text()
    relay_line = f'relay_address = "127.0.0.1:{federation.relay_port}"'
    assert relay_line in text
    cfg.write_text(text.replace(relay_line, f'relay_address = "{proxy.address}"'))  # only the fintech's link
    if window is not None:  # [coordinator].reconnect_window_s at the coordinator and at both parties
        for name in ("coordinator", "bank", "fintech"):
            path = federation.root / f"{name}.toml"
            path.write_text(path.read_text().replace("[coordinator]\n", f"[coordinator]\nreconnect_window_s = {window}\n", 1))
    federation.proxy = proxy  # type: ignore[attr-defined]
    return federation


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    federation = _federation(tmp_path_factory.mktemp("rfed"))
    federation.start()
    yield federation
    federation.stop()
    federation.proxy.close()  # type: ignore[attr-defined]


def _submit(fed: LocalFederation, name: str) -> str:
    job = {"job": {"name": name, "type": "vertical-lr", "parties": ["bank", "fintech"], "label_party": "bank",
                   "round_timeout_s": 300.0}, "model": MODEL}
    client = fed.client()
    try:
        return client.submit(fed.write_job(name, job))
    finally:
        client.close()


def _finish(fed: LocalFederation, run_id: str) -> Any:
    client = fed.client()
    try:
        for ev in client.watch(run_id):
            if ev.HasField("run"):
                break
        return client.get(run_id)
    finally:
        client.close()


def _models(fed: LocalFederation, run_id: str) -> dict[str, Any]:
    out = {}
    for party in ("bank", "fintech"):
        path = fed.root / "state" / party / "models" / run_id / f"vertical_lr_{party}_model.json"
        out[party] = json.loads(path.read_text())
    return out


def _same(a: Any, b: Any, path: str = "") -> None:
    """Equal JSON, floats to 2e-2 absolute.

    Why not exact: CKKS noise on every encrypted gradient differs from run to run (fresh
    randomness), paused or not; measured between a paused and an unpaused run here: max
    |delta w| 6e-5 (bank) and 4e-4 (fintech) on weights up to 0.57 with mini-batch epochs
    only; the full-batch phase that reaches the pooled optimum (issue 9) carries the noise
    further along the loss's flat directions: 5.3e-3 on a weight of 0.38 seen in one CI run.
    A message lost or delivered twice would not perturb the weights: the receiver fails
    the job on the seq (exactly), so this tolerance is about noise only.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=0.0, abs_tol=2e-2), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _pause_when_busy(fed: LocalFederation, seconds: float, started: threading.Event) -> None:
    """Pause the fintech's link once the job's data plane is under way (PSI done, training)."""
    proxy: TcpProxy = fed.proxy  # type: ignore[attr-defined]
    base = proxy.forwarded
    deadline = time.monotonic() + 240
    while proxy.forwarded - base < 10_000_000 and time.monotonic() < deadline:  # ~1/3 into training
        time.sleep(0.05)  # watching the proxy's byte counter, bounded
    proxy.pause()
    started.set()
    time.sleep(seconds)  # the stall itself: the duration is what is under test
    proxy.resume()


def test_five_second_stall_is_survived_with_the_same_model(fed: LocalFederation) -> None:
    proxy: TcpProxy = fed.proxy  # type: ignore[attr-defined]
    base_id = _submit(fed, "rc-base")
    base = _finish(fed, base_id)
    assert base.status == "finished", base.error

    accepted = proxy.accepted
    run_id = _submit(fed, "rc-pause5")
    paused = threading.Event()
    pauser = threading.Thread(target=_pause_when_busy, args=(fed, 5.0, paused))
    pauser.start()
    info = _finish(fed, run_id)
    pauser.join(timeout=300)
    assert paused.is_set(), "the job ended before the data plane was busy enough to pause"
    assert info.status == "finished", info.error
    assert proxy.accepted > accepted, "the fintech never reconnected: the stall was not noticed"
    _same(_models(fed, base_id), _models(fed, run_id))
    r0, r1 = json.loads(base.result_json), json.loads(info.result_json)
    assert r1["global"]["auc"] == pytest.approx(r0["global"]["auc"], abs=2e-3)
    print(f"5 s stall survived: {proxy.accepted - accepted} new connection(s) through the proxy; "
          f"AUC {r1['global']['auc']:.4f} both runs")


def test_sixty_second_stall_fails_the_job_within_the_window_naming_the_party(fed: LocalFederation) -> None:
    run_id = _submit(fed, "rc-pause60")
    paused = threading.Event()
    pauser = threading.Thread(target=_pause_when_busy, args=(fed, 60.0, paused), daemon=True)
    pauser.start()
    assert paused.wait(240)
    t = time.monotonic()
    info = _finish(fed, run_id)
    took = time.monotonic() - t
    # both parties kept their checkpoints, so the run is resumable rather than failed for good
    assert info.status == "interrupted", info.error
    assert "fintech" in info.error
    assert re.search(r"did not reconnect within 30 s|could not reconnect within 30 s", info.error), info.error
    assert took < 58, f"failed after {took:.0f} s: not within about the 30 s window"
    print(f"60 s stall: job stopped {took:.1f} s after the pause began: {info.error[:300]}")
    pauser.join(timeout=90)  # the link comes back: the operator resumes the run from the checkpoints
    client = fed.client()
    try:
        client.resume(run_id)
    finally:
        client.close()
    info = _finish(fed, run_id)
    assert (info.status, info.attempt) == ("finished", 2), info.error


def test_sixty_second_stall_is_survived_with_a_ninety_second_window(tmp_path: Path) -> None:
    """The window is the operator's choice: with 90 s configured, the same 60 s stall is survived."""
    federation = _federation(tmp_path, window=90.0)
    proxy: TcpProxy = federation.proxy  # type: ignore[attr-defined]
    try:
        federation.start()
        run_id = _submit(federation, "rc-pause60-w90")
        paused = threading.Event()
        pauser = threading.Thread(target=_pause_when_busy, args=(federation, 60.0, paused))
        pauser.start()
        info = _finish(federation, run_id)
        pauser.join(timeout=120)
        assert paused.is_set()
        assert info.status == "finished", info.error
        assert proxy.accepted >= 2
    finally:
        federation.stop()
        proxy.close()
