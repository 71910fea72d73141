"""``coordinator.flower.flwr_cli``: a Flower CLI that hangs or fails becomes an error that says what happened."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from coordinator import flower
from fedcredit.errors import FedCreditError


def _stub(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "flwr"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def test_a_cli_that_never_answers_is_a_named_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flower, "find_executable", lambda name: _stub(tmp_path, "exec sleep 30"))
    with pytest.raises(FedCreditError, match=r"flwr supernode list did not answer within 1 s \(is the SuperLink up"):
        flower.flwr_cli(tmp_path, "supernode", "list", timeout=1.0)


def test_a_refusal_carries_flowers_own_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flower, "find_executable", lambda name: _stub(
        tmp_path, "echo 'warning line'; echo '{\"success\": false, \"error-message\": \"permission denied\"}'; exit 1"))
    with pytest.raises(FedCreditError, match="flwr ls failed: permission denied"):
        flower.flwr_cli(tmp_path, "ls")
    monkeypatch.setattr(flower, "find_executable", lambda name: _stub(tmp_path, "echo 'boom' >&2; exit 3"))
    with pytest.raises(FedCreditError, match="flwr ls failed: boom"):
        flower.flwr_cli(tmp_path, "ls")
    monkeypatch.setattr(flower, "find_executable", lambda name: _stub(tmp_path, "echo '{\"success\": true, \"runs\": []}'"))
    assert flower.flwr_cli(tmp_path, "ls") == {"success": True, "runs": []}
