"""Config validation errors name file and field; the run registry survives restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.registry import Registry
from fedcredit.config import load_coordinator_config, load_job_config, load_party_config
from fedcredit.errors import ConfigError


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_party_config(tmp_path / "nope.toml")


def test_malformed_toml_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path / "party.toml", "[party\nname = 'x'")
    with pytest.raises(ConfigError, match="party.toml: not valid TOML"):
        load_party_config(p)


def test_wrong_field_type_names_section_and_field(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "coordinator.toml",
        """
[federation]
ca_dir = "ca"
[coordinator]
identity_dir = "id"
state_dir = "state"
relay_port = "not-a-port"
""",
    )
    with pytest.raises(ConfigError) as e:
        load_coordinator_config(p)
    assert "coordinator.toml: [coordinator].relay_port" in str(e.value)


def test_unknown_field_is_reported_as_typo(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "party.toml",
        """
[party]
name = "bank1"
identity_dir = "certs/bank1"
state_dir = "state"
stat_dir = "typo"
[coordinator]
flower_address = "127.0.0.1:1"
relay_address = "127.0.0.1:2"
""",
    )
    with pytest.raises(ConfigError, match=r"\[party\]\.stat_dir: unknown field"):
        load_party_config(p)


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "party.toml",
        """
[party]
name = "bank1"
identity_dir = "certs/bank1"
state_dir = "state"
[coordinator]
flower_address = "127.0.0.1:1"
relay_address = "127.0.0.1:2"
[datasets.train]
path = "data/train.csv"
label_column = "y"
""",
    )
    cfg = load_party_config(p)
    assert cfg.datasets["train"].path == (tmp_path / "data" / "train.csv").resolve()
    with pytest.raises(ConfigError, match="party 'bank1': job asks for dataset 'test'"):
        cfg.dataset("test")


def test_job_requires_label_party_for_vertical(tmp_path: Path) -> None:
    p = _write(tmp_path / "job.toml", '[job]\ntype = "vertical-lr"\nparties = ["bank", "fintech"]\n')
    with pytest.raises(ConfigError, match="label_party"):
        load_job_config(p)
    p = _write(tmp_path / "job2.toml", '[job]\nparties = ["bank1", "bank1"]\n')
    with pytest.raises(ConfigError, match="listed twice"):
        load_job_config(p)
    p = _write(tmp_path / "job3.toml", '[job]\nparties = ["a", "b"]\nmin_parties = 3\n')
    with pytest.raises(ConfigError, match=r"\[job\]\.min_parties = 3 exceeds"):
        load_job_config(p)


def test_registry_persists_across_reopen_and_fails_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    reg = Registry(db)
    done = reg.create_run("a", "horizontal", "[job]")
    reg.mark_running(done)
    reg.add_event(done, {"round": 1, "rounds": 2})
    reg.add_event(done, {"round": 2, "rounds": 2})
    reg.finish(done, {"global": {"auc": 0.73}})
    active = reg.create_run("b", "horizontal", "[job]")
    reg.mark_running(active)

    reopened = Registry(db)  # a coordinator restart
    assert reopened.get(done).status == "finished"
    assert reopened.get(done).result == {"global": {"auc": 0.73}}
    assert [e[2]["round"] for e in reopened.events(done)] == [1, 2]
    assert reopened.fail_interrupted("coordinator restarted") == [active]
    rec = reopened.get(active)
    assert rec.status == "failed" and rec.error == "coordinator restarted"
    # a terminal run is never rewritten by a late writer
    reopened.fail(done, "late failure")
    assert reopened.get(done).status == "finished"
    assert {r.run_id for r in reopened.list()} == {done, active}
