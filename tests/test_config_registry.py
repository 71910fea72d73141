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


def test_every_error_names_the_section_as_written_and_all_are_reported(tmp_path: Path) -> None:
    """Nested tables in brackets, [[arrays]] by entry, a whole-file rule by its message; every problem at once."""
    p = _write(tmp_path / "party.toml", """
[party]
name = "bank1"
identity_dir = "i"
state_dir = "s"
colour = "blue"
[coordinator]
flower_address = "h:1"
relay_address = "h:2"
[scoring]
port = true
[scoring.partial_rate]
burst = "lots"
[decision.thresholds]
aprove = 1
[[decision.limit.bands]]
max_pd = 0.1
multiplier = 1.0
[[decision.limit.bands]]
max_pd = 2.0
multiplier = 1.0
""")
    with pytest.raises(ConfigError) as e:
        load_party_config(p)
    assert str(e.value).splitlines() == [
        f"{p}: [party].colour: unknown field (typo?)",
        f"{p}: [scoring].port: expected an integer, got True",
        f"{p}: [scoring.partial_rate].burst: expected an integer, got 'lots'",
        f"{p}: [decision.thresholds].aprove: unknown field (typo?)",
        f"{p}: [[decision.limit.bands]] (entry 2).max_pd: Input should be less than or equal to 1 (got 2.0)",
    ]


def test_numbers_must_be_written_as_numbers_but_ints_are_floats(tmp_path: Path) -> None:
    """``lr = 1`` is a float 1.0; ``rounds = "3"``, ``rounds = true`` and ``lr = "0.1"`` are refused."""
    base = '[job]\nparties = ["a", "b"]\n[model]\n'
    assert load_job_config(_write(tmp_path / "ok.toml", base + "lr = 1\nrounds = 3\n")).model.lr == 1.0
    for bad, msg in (('rounds = "3"', "[model].rounds: expected an integer, got '3'"),
                     ("rounds = true", "[model].rounds: expected an integer, got True"),
                     ('lr = "0.1"', "[model].lr: expected a number, got '0.1'")):
        with pytest.raises(ConfigError) as e:
            load_job_config(_write(tmp_path / "job.toml", base + bad + "\n"))
        assert str(e.value) == f"{tmp_path / 'job.toml'}: {msg}"


def test_port_probe_names_file_field_port_and_host(tmp_path: Path) -> None:
    import socket

    from fedcredit.config import check_port_free, load_coordinator_config

    p = _write(tmp_path / "coordinator.toml", '[federation]\nca_dir = "ca"\n[coordinator]\nidentity_dir = "i"\n'
                                              'state_dir = "s"\n')
    cfg = load_coordinator_config(p)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError) as e:
            check_port_free(cfg, "coordinator", "relay_port", "127.0.0.1", port)
    assert str(e.value) == f"{p}: [coordinator].relay_port: port {port} on 127.0.0.1 is already in use"
    check_port_free(cfg, "coordinator", "relay_port", "127.0.0.1", port)  # released: free again
    check_port_free(cfg, "coordinator", "superlink_port", "127.0.0.1", 0)  # 0 = pick one: never in use
