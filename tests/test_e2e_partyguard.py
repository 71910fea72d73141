"""A party runs only its installed fedcredit app, and its daemon leaves no orphan (real processes).

The attacker here is a curious or compromised coordinator: it holds the SuperLink and
its loopback ``flwr`` CLI, and submits an app of its own whose bundle even ships a
``party/clientapp.py`` meant to shadow ours.  Every party must refuse it before any of
its code runs (no marker file), write an audit line naming the refused bundle, and the
run must fail promptly with each party's refusal — and the parties must go on serving
fedcredit's own jobs afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fed_data import bank_parties
from flower_apps import write_app_descriptor

from coordinator import flower
from coordinator.registry import Registry
from party.appguard import AUDIT_TAG, installed_app
from simulations.deployment import LocalFederation

pytestmark = pytest.mark.e2e

BANKS = {"bank1": "default_credit_homo_guest.csv", "bank2": "default_credit_homo_host_1.csv"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("guarded")
    parties = bank_parties(root / "data", BANKS, rows=1500, test_rows=500)
    federation = LocalFederation(root / "fed", parties).setup()
    federation.start()
    yield federation
    federation.stop()


def _coordinator_home(fed: LocalFederation) -> Path:
    return fed.root / "state" / "coordinator" / "flwr-home"


def _foreign_app(root: Path, marker_dir: Path, result: Path, n_nodes: int) -> Path:
    """An app of the coordinator's choosing that shadows ``party.clientapp`` and writes a marker if it ever runs."""
    app = root / "foreign-app"
    (app / "party").mkdir(parents=True)
    (app / "coordinator").mkdir()
    write_app_descriptor(app, name="fedcredit-job", version="0.1.0", publisher="fedcredit",  # our app's names
                         serverapp="coordinator.serverapp:server_app", clientapp="party.clientapp:client_app")
    (app / "party" / "__init__.py").write_text("")
    (app / "coordinator" / "__init__.py").write_text("")
    (app / "party" / "clientapp.py").write_text(textwrap.dedent(f"""\
        import os
        from pathlib import Path
        from flwr.app import ConfigRecord, Message, RecordDict
        from flwr.clientapp import ClientApp

        MARKERS = Path({str(marker_dir)!r})
        (MARKERS / f"imported-{{os.getpid()}}").write_text("foreign code imported at a party")
        client_app = ClientApp()

        @client_app.query()
        def steal(msg, context):
            (MARKERS / f"ran-{{context.node_id}}").write_text(str(dict(context.node_config)))
            return Message(RecordDict({{"loot": ConfigRecord({{"cfg": str(dict(context.node_config))}})}}), reply_to=msg)
        """))
    (app / "coordinator" / "serverapp.py").write_text(textwrap.dedent(f"""\
        import json, time
        from pathlib import Path
        from flwr.app import ConfigRecord, Message, RecordDict
        from flwr.serverapp import Grid, ServerApp

        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context) -> None:
            deadline = time.monotonic() + 60
            nodes = list(grid.get_node_ids())
            while len(nodes) < {n_nodes} and time.monotonic() < deadline:
                time.sleep(0.5)
                nodes = list(grid.get_node_ids())
            msgs = [Message(content=RecordDict({{"q": ConfigRecord({{"x": 1}})}}), message_type="query", dst_node_id=n)
                    for n in nodes]
            replies = list(grid.send_and_receive(msgs, timeout=120))
            out = {{str(r.metadata.src_node_id): (r.error.reason if r.has_error() else "ANSWERED") for r in replies}}
            Path({str(result)!r}).write_text(json.dumps(out))
            if any(v == "ANSWERED" for v in out.values()) or len(out) < len(nodes):
                return
            raise RuntimeError("every party refused: " + "; ".join(out.values()))
        """))
    return app


def _audit_lines(fed: LocalFederation, party: str) -> list[dict]:
    path = fed.root / "state" / party / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_foreign_app_from_the_coordinator_is_refused_at_every_party(fed: LocalFederation, tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    markers = tmp_path / "markers"
    markers.mkdir()
    result = tmp_path / "replies.json"
    app = _foreign_app(tmp_path, markers, result, n_nodes=len(BANKS))
    foreign_sha = hashlib.sha256(build_fab_from_disk(app)).hexdigest()
    expected = installed_app().sha256
    assert foreign_sha != expected

    home = _coordinator_home(fed)
    t0 = time.monotonic()
    run_id = flower.flwr_cli(home, "run", str(app), flower.FEDERATION_ALIAS)["run-id"]
    status = "unknown"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # polling Flower's own run status: the observable end of the run
        status = flower.run_status(home, str(run_id))
        if status.startswith("finished"):
            break
        time.sleep(1.0)
    elapsed = time.monotonic() - t0
    assert status.startswith("finished") and "completed" not in status, status
    assert elapsed < 180, f"the refused run took {elapsed:.0f} s: a party left the SuperNode waiting"

    assert list(markers.iterdir()) == [], "foreign code ran at a party"
    nodes = Registry(fed.root / "state" / "coordinator" / "registry.db").nodes()
    replies = json.loads(result.read_text())
    for party, node in nodes.items():
        reason = replies[str(node)]
        assert f"party '{party}' refused: app {foreign_sha} is not the installed fedcredit app {expected}" in reason
        assert "party/clientapp.py" in reason  # says what is foreign
        lines = [x for x in _audit_lines(fed, party) if x.get("event") == AUDIT_TAG and x["session"] == str(run_id)]
        assert len(lines) == 1, _audit_lines(fed, party)
        assert lines[0]["sha256"] == foreign_sha and lines[0]["expected_sha256"] == expected
        assert lines[0]["party"] == party


def test_own_jobs_still_run_after_a_refusal(fed: LocalFederation) -> None:
    """The refusal did not wedge any SuperNode: fedcredit's own app is accepted and a job finishes."""
    info = fed.run_job("guarded-lr", {"job": {"name": "guarded-lr", "type": "horizontal", "parties": list(BANKS),
                                              "round_timeout_s": 120.0},
                                      "model": {"family": "lr", "rounds": 1, "newton_rounds": 0}})
    assert info.status == "finished", info.error


def _alive(pid: int) -> bool:
    """Running and not a zombie (a reparented zombie waits for a reaper that may not exist in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_killed_party_daemon_leaves_no_supernode_and_unregistered_node_is_explained(fed: LocalFederation) -> None:
    party = "bank2"
    daemon = fed.procs[party]
    ready = json.loads((fed.root / "state" / party / "party.ready.json").read_text())
    assert ready["pid"] == daemon.pid
    supernode = ready["supernode_pid"]
    deadline = time.monotonic() + 30
    while not _children(supernode) and time.monotonic() < deadline:  # flower-superexec starts right after the SuperNode
        time.sleep(0.1)
    family = [supernode, *_children(supernode)]
    assert len(family) >= 2 and all(_alive(p) for p in family)

    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)
    fed.procs.pop(party)
    assert _wait_gone(family, timeout=15) == [], "orphaned Flower processes outlived the killed party daemon"

    # the coordinator operator unregisters the node; the restarted party says exactly what to do
    home = _coordinator_home(fed)
    node = Registry(fed.root / "state" / "coordinator" / "registry.db").nodes()[party]
    flower.flwr_cli(home, "supernode", "unregister", node, flower.FEDERATION_ALIAS)
    out = subprocess.run([sys.executable, "-m", "fedcredit.cli", "party", "start", "--config",
                          str(fed.root / f"{party}.toml")], capture_output=True, text=True, timeout=180)
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"fedcredit certs rekey-flower {party} --out-dir {fed.certs / party}" in out.stderr
    assert "refused this party's SuperNode key" in out.stderr and "[[parties]] flower_public_key" in out.stderr

    # the coordinator, restarted with the same (now unregistered) key, reports it instead of a raw Flower error
    fed.stop_process("coordinator")
    with pytest.raises(Exception, match="rekey-flower bank2"):
        fed.start_coordinator(timeout=90)
    fed.procs.pop("coordinator", None)
    log = " ".join((fed.root / "logs" / "coordinator.log").read_text().split())  # the console wraps long lines
    assert "already holds SuperNode key" in log and "never registers a key twice" in log

    # following the instructions brings the party back under a new node id
    subprocess.run([sys.executable, "-m", "fedcredit.cli", "certs", "rekey-flower", party, "--out-dir",
                    str(fed.certs / party)], check=True, capture_output=True, timeout=60)
    fed.start_coordinator(timeout=90)
    new_node = Registry(fed.root / "state" / "coordinator" / "registry.db").nodes()[party]
    assert new_node != node
    fed.start_party(party)
    deadline = time.monotonic() + 60
    while flower.registered_nodes(home).get(new_node) != "online" and time.monotonic() < deadline:
        time.sleep(1.0)
    assert flower.registered_nodes(home).get(new_node) == "online"
