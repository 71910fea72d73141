"""The bad-input corpus: every case in ``tests/bad_inputs/cases.toml`` through the entry point a user hits.

Each case builds its input (a bad data file from ``tests/bad_inputs/data/``, a party /
coordinator / job / scenario config patched from a working one, a tampered artifact,
a bad credential), runs the public function the ``fedcredit`` command calls (or, with
``cli = true``, the command itself as a subprocess, so the printing path is covered)
and asserts

* the error is one of ours (the CLI prints it as one line, exit code 2, no traceback),
* its message holds every ``expect`` substring (file, ``[section].field``, row, party,
  what was expected),
* every directory involved — the federation's certificates, state and configs, the
  case's own inputs and the corpus data — is byte-for-byte unchanged (names, modes,
  contents hashed before and after).

Adding a case is one ``[[case]]`` entry; the keys are documented at the top of cases.toml.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from crypto import signing
from crypto.certs import init_ca, issue
from fedcredit import artifacts as A
from fedcredit.errors import FedCreditError
from simulations.deployment import LocalFederation, PartySpec, free_port, to_toml

HERE = Path(__file__).parent / "bad_inputs"
DATA = HERE / "data"
CASES: list[dict[str, Any]] = tomllib.loads((HERE / "cases.toml").read_text())["case"]
CATEGORIES = ("data", "party", "decision", "coordinator", "job", "params", "scenario", "artifact", "certificate")


# --------------------------------------------------------------------------- hashing


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under ``root`` (itself included) -> mode + sha256 of its bytes (or ``dir``/``link``)."""
    if not root.exists():
        return {".": "absent"}
    out: dict[str, str] = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        if p.is_symlink():
            kind = "link:" + os.readlink(p)
        elif p.is_dir():
            kind = "dir"
        else:
            kind = hashlib.sha256(p.read_bytes()).hexdigest()
        out[str(p.relative_to(root))] = f"{st.st_mode:o} {kind}"
    return out


def digests(dirs: list[Path]) -> dict[str, dict[str, str]]:
    return {str(d): tree_digest(d) for d in dirs}


# --------------------------------------------------------------------------- the federation the cases break


@dataclass
class Fed:
    root: Path
    fed: LocalFederation
    party: dict[str, Any]  # bank1.toml as a table
    coordinator: dict[str, Any]
    job: dict[str, Any]
    foreign_ca: Path

    @property
    def certs(self) -> Path:
        return self.fed.certs


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    root = tmp_path_factory.mktemp("corpus")
    shutil.copy(DATA / "good.csv", root / "good.csv")
    spec = {"train": {"path": str(root / "good.csv"), "label_column": "y"}}
    lf = LocalFederation(root / "federation", [PartySpec("bank1", spec), PartySpec("bank2", spec)]).setup()
    # state a party and the coordinator already hold (a run ledger, an installed model), so "unchanged" means something
    for name in ("bank1", "coordinator"):
        d = lf.root / "state" / name
        d.mkdir(parents=True, mode=0o700)
        (d / "kept.json").write_text('{"kept": true}\n')
        os.chmod(d / "kept.json", 0o600)
    from party.models import ModelStore

    art = _artifact(root / "good-artifact", lf.certs / "ca" / "federation-signing.key")
    ModelStore(lf.root / "state" / "bank1" / "models", party="bank1",
               federation_public_key=lf.certs / "bank1" / "federation-signing.pub").install(art, activate=True)
    foreign = init_ca(root / "foreign-ca", "evil-fed")
    job = {"job": {"name": "corpus", "type": "horizontal", "parties": ["bank1", "bank2"]},
           "model": {"rounds": 2}}
    return Fed(root, lf, tomllib.loads((lf.root / "bank1.toml").read_text()),
               tomllib.loads((lf.root / "coordinator.toml").read_text()), job, foreign)


def _artifact(out: Path, signing_key: Any, *, party: str = "bank1", sign: bool = True) -> Path:
    import numpy as np

    from fedcredit.models import LogisticModel, SavedModel

    m = LogisticModel(2)
    m.set_flat(np.array([0.5, -1.0, -1.2]))
    kind, files, schema = A.horizontal_parts(SavedModel(m, np.zeros(2), np.ones(2), ["x0", "x1"]))
    p = A.build_artifact(out, run_id="run-corpus", party=party, kind=kind, files=files, schema=schema,
                         metrics={"auc": 0.7}, created="2026-01-01T00:00:00Z")
    if sign:
        A.sign_artifact(p, signing_key)
    return p


# --------------------------------------------------------------------------- building a case's input


def _patched(base: dict[str, Any], case: dict[str, Any]) -> str:
    """``base`` with the case's ``set`` (dotted key -> value; digits index [[arrays]]) and ``unset``, + ``append``."""
    import copy

    data = copy.deepcopy(base)
    for dotted, value in case.get("set", {}).items():
        *path, last = dotted.split(".")
        node: Any = data
        for k in path:
            node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
        node[int(last) if last.isdigit() else last] = value
    for dotted in case.get("unset", []):
        *path, last = dotted.split(".")
        node = data
        for k in path:
            node = node[int(k)] if k.isdigit() else node[k]
        del node[int(last) if last.isdigit() else last]
    return to_toml(data) + "\n" + case.get("append", "")


def _write(case_dir: Path, name: str, text: str) -> Path:
    p = case_dir / name
    p.write_text(text)
    return p


def _copy_identity(fed: Fed, who: str, case_dir: Path) -> Path:
    d = case_dir / f"id-{who}"
    shutil.copytree(fed.certs / who, d)
    return d


def _resign(cert_pem: bytes, ca_dir: Path, *, not_after: dt.datetime) -> bytes:
    """The same certificate (subject, key, extensions) re-signed by the CA with another validity window."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    leaf = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    b = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(ca.subject).public_key(leaf.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(not_after - dt.timedelta(days=30))
         .not_valid_after(not_after))
    for ext in leaf.extensions:
        b = b.add_extension(ext.value, ext.critical)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def _cert_variant(fed: Fed, case: dict[str, Any], case_dir: Path) -> tuple[str, dict[str, Any]]:
    """(which config the case patches, the ``set`` it adds) for a ``cert = "..."`` case."""
    kind = case["cert"]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    if kind == "party-foreign-ca":  # a credential from another federation's CA, beside this federation's ca.crt
        d = case_dir / "id-bank1"
        issue(fed.foreign_ca, d, "bank1")
        shutil.copy(fed.certs / "bank1" / "ca.crt", d / "ca.crt")
        return "party", {"party.identity_dir": str(d)}
    if kind == "party-expired":
        d = _copy_identity(fed, "bank1", case_dir)
        (d / "bank1.crt").write_bytes(_resign((d / "bank1.crt").read_bytes(), fed.certs / "ca", not_after=past))
        return "party", {"party.identity_dir": str(d)}
    if kind == "party-key-mismatch":  # bank2's TLS key beside bank1's certificate
        d = _copy_identity(fed, "bank1", case_dir)
        (d / "bank1.key").write_bytes((fed.certs / "bank2" / "bank2.key").read_bytes())
        return "party", {"party.identity_dir": str(d)}
    if kind == "party-garbage-pem":
        d = _copy_identity(fed, "bank1", case_dir)
        (d / "bank1.crt").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
        return "party", {"party.identity_dir": str(d)}
    if kind == "party-missing-key":
        d = _copy_identity(fed, "bank1", case_dir)
        (d / "bank1.envelope.key").unlink()
        return "party", {"party.identity_dir": str(d)}
    if kind == "party-readable-key":
        d = _copy_identity(fed, "bank1", case_dir)
        os.chmod(d / "bank1.key", 0o644)
        return "party", {"party.identity_dir": str(d)}
    if kind == "party-wrong-role":  # the operator's credential used as a party's
        return "party", {"party.name": "operator", "party.identity_dir": str(fed.certs / "operator"),
                         "policy.partners": ["bank1", "bank2"]}
    if kind == "coordinator-wrong-role":
        return "coordinator", {"coordinator.name": "bank1", "coordinator.identity_dir": str(fed.certs / "bank1")}
    if kind == "listed-foreign-ca":
        d = case_dir / "foreign-bank2"
        issue(fed.foreign_ca, d, "bank2")
        return "coordinator", {"parties.1.certificate": str(d / "bank2.crt")}
    if kind == "listed-expired":
        p = case_dir / "bank2.crt"
        p.write_bytes(_resign((fed.certs / "bank2" / "bank2.crt").read_bytes(), fed.certs / "ca", not_after=past))
        return "coordinator", {"parties.1.certificate": str(p)}
    if kind == "listed-wrong-name":  # bank1's certificate listed for bank2
        return "coordinator", {"parties.1.certificate": str(fed.certs / "bank1" / "bank1.crt")}
    if kind == "listed-garbage-key":
        p = _write(case_dir, "bank2.flower.pub", "ssh-rsa not-a-key\n")
        return "coordinator", {"parties.1.flower_public_key": str(p)}
    raise AssertionError(f"unknown cert variant {kind!r}")


def _artifact_variant(fed: Fed, kind: str, case_dir: Path) -> Path:
    key = fed.certs / "ca" / "federation-signing.key"
    out = case_dir / "artifact"
    if kind == "unsigned":
        return _artifact(out, key, sign=False)
    if kind == "foreign-signer":
        return _artifact(out, fed.foreign_ca / "federation-signing.key")
    if kind == "other-party":
        return _artifact(out, key, party="bank2")
    p = _artifact(out, key)
    if kind == "tampered":  # one weight changed after signing
        f = p / "model.json"
        f.write_text(f.read_text().replace("0.5", "0.6", 1))
    elif kind == "extra-file":
        (p / "run.sh").write_text("#!/bin/sh\n")
    elif kind == "missing-file":
        (p / "model.json").unlink()
    elif kind == "wrong-kind":  # a kind no model store knows, signed by the federation (so only the kind is wrong)
        doc = json.loads((p / "manifest.json").read_text())
        doc = {k: v for k, v in doc.items() if k != "signature"}
        doc["kind"] = "horizontal-xgboost"
        signed = signing.sign_manifest(doc, signing.load_private(key))
        (p / "manifest.json").write_bytes(A.json_bytes(signed))
    elif kind == "manifest-not-json":
        (p / "manifest.json").write_text('{"format": ')
    elif kind == "truncated-tar":
        tar = A.pack_artifact(p, case_dir / "artifact.tar")
        tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
        shutil.rmtree(p)
        return tar
    elif kind == "not-an-artifact":
        empty = case_dir / "empty-dir"
        empty.mkdir()
        shutil.rmtree(p)
        return empty
    else:
        raise AssertionError(f"unknown artifact variant {kind!r}")
    return p


# --------------------------------------------------------------------------- the entry points


def _party_start(config: Path) -> None:
    from party.daemon import start

    handle = start(config)  # a bad input must fail before anything runs; a case that starts is a corpus bug
    handle.stop()
    raise AssertionError(f"party daemon started with {config}")


def _coordinator_start(config: Path) -> None:
    from coordinator.daemon import start

    handle = start(config, log=lambda m: None)
    handle.stop()
    raise AssertionError(f"coordinator started with {config}")


def _job(path: Path) -> None:
    from fedcredit.config import load_job_config

    load_job_config(path)  # what `fedcredit train` does before it connects


def _scenario(path: Path) -> None:
    from simulations.harness import load_scenario

    load_scenario(str(path))


def _decision_file(path: Path) -> None:
    from fedcredit.decision import load_decision_policy

    load_decision_policy(path)


def _peer_setup(schema: str, values: dict[str, Any]) -> None:
    from fedcredit import params

    getattr(params, schema).from_dict(values)  # a peer's setup message, as the receiving role validates it


@dataclass
class Prepared:
    run: Callable[[], None]
    argv: list[str]  # the fedcredit command a user would type for the same input
    dirs: list[Path]  # directories that must stay byte-for-byte unchanged


def prepare(fed: Fed, case: dict[str, Any], case_dir: Path) -> Prepared:
    cat = case["category"]
    state = [fed.fed.root, case_dir, DATA]
    if cat == "data":
        extra = {k: v.replace("{data}", str(DATA)) if isinstance(v, str) else v for k, v in case.get("dataset", {}).items()}
        ds = {"path": str(DATA / case["data"]), "label_column": "y", **extra}
        cfg = _write(case_dir, "bank1.toml", _patched(fed.party, {"set": {"datasets.train": ds}}))
        return Prepared(lambda: _party_start(cfg), ["party", "start", "--config", str(cfg)], state)
    if cat == "certificate":
        which, extra = _cert_variant(fed, case, case_dir)
        base = fed.party if which == "party" else fed.coordinator
        cfg = _write(case_dir, f"{which}.toml", _patched(base, {**case, "set": {**extra, **case.get("set", {})}}))
        if which == "party":
            return Prepared(lambda: _party_start(cfg), ["party", "start", "--config", str(cfg)], state)
        return Prepared(lambda: _coordinator_start(cfg), ["coordinator", "start", "--config", str(cfg)], state)
    if cat in ("party", "decision") and case.get("entry") == "decision-file":
        cfg = _write(case_dir, "decision.toml", case["append"])
        return Prepared(lambda: _decision_file(cfg), ["party", "models", "export", "--config", str(fed.fed.root / "bank1.toml"),
                                                      "--decision", str(cfg), "--out", str(case_dir / "export")], state)
    if cat in ("party", "decision"):
        cfg = _write(case_dir, "bank1.toml", _patched(fed.party, case))
        return Prepared(lambda: _party_start(cfg), ["party", "start", "--config", str(cfg)], state)
    if cat == "coordinator":
        cfg = _write(case_dir, "coordinator.toml", _patched(fed.coordinator, case))
        return Prepared(lambda: _coordinator_start(cfg), ["coordinator", "start", "--config", str(cfg)], state)
    if cat in ("job", "params") and case.get("entry") == "peer-setup":
        return Prepared(lambda: _peer_setup(case["schema"], case["values"]), [], state)
    if cat in ("job", "params"):
        job = _write(case_dir, "job.toml", _patched(fed.job, case))
        return Prepared(lambda: _job(job), ["train", str(job), "--control", "127.0.0.1:1", "--identity-dir",
                                            str(fed.certs / "operator")], state)
    if cat == "scenario":
        scn = _write(case_dir, "scenario.toml", case["append"])
        return Prepared(lambda: _scenario(scn), ["simulate", str(scn), "--out", str(case_dir / "out")], state)
    if cat == "artifact":
        art = _artifact_variant(fed, case["artifact"], case_dir)
        cfg = fed.fed.root / "bank1.toml"

        def install() -> None:
            from fedcredit.config import load_party_config
            from party.models import open_store

            open_store(load_party_config(cfg)).install(art)  # what `fedcredit party models install` does

        return Prepared(install, ["party", "models", "install", "--config", str(cfg), str(art)], state)
    raise AssertionError(f"unknown category {cat!r}")


def _expected(fed: Fed, case: dict[str, Any], case_dir: Path) -> list[str]:
    subst = {"{case}": str(case_dir), "{fed}": str(fed.fed.root), "{data}": str(DATA), "{certs}": str(fed.certs)}
    out = []
    for e in case["expect"]:
        for k, v in subst.items():
            e = e.replace(k, v)
        out.append(e)
    return out


# --------------------------------------------------------------------------- the corpus


def test_corpus_is_large_and_every_category_prints_through_the_cli() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 60
    for cat in CATEGORIES:
        mine = [c for c in CASES if c["category"] == cat]
        assert mine, f"no case for {cat}"
        assert any(c.get("cli") for c in mine if c.get("entry") != "peer-setup"), f"no CLI case for {cat}"
    for c in CASES:
        assert c["category"] in CATEGORIES and c["expect"], c["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case: dict[str, Any], fed: Fed, tmp_path: Path) -> None:
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    prepared = prepare(fed, case, case_dir)
    before = digests(prepared.dirs)
    if case.get("cli"):
        proc = subprocess.run([sys.executable, "-m", "fedcredit.cli", *prepared.argv], capture_output=True, text=True,
                              timeout=120, cwd=case_dir, env={**os.environ, "COLUMNS": "400"})
        message = proc.stderr
        assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        assert "Traceback" not in proc.stderr + proc.stdout
        assert "ready" not in proc.stdout
        message = " ".join(message.split())  # a terminal may wrap long lines
    else:
        with pytest.raises(FedCreditError) as err:  # ours: the CLI prints it as one line, no traceback
            prepared.run()
        message = str(err.value)
    if os.environ.get("CORPUS_SHOW"):  # CORPUS_SHOW=1 pytest -s: read every message the corpus produces
        print(f"\n[{case['id']}] {message}")
    for want in _expected(fed, case, case_dir):
        assert want in message, f"{want!r} not in the message:\n{message}"
    assert digests(prepared.dirs) == before, "a refused input changed a state directory"


# --------------------------------------------------------------------------- ports held by another process


@contextlib.contextmanager
def holding(kind: str) -> Iterator[int]:
    """A port on 127.0.0.1 held by another listener: a plain socket, or a gRPC server (which binds with
    SO_REUSEPORT, so a second gRPC server on the same port would silently share it)."""
    if kind == "socket":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            yield int(s.getsockname()[1])
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def _cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcredit.cli", *argv], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "COLUMNS": "400"})


@pytest.mark.parametrize("holder", ["socket", "grpc"])
def test_party_daemon_refuses_a_taken_scoring_port_before_ready(holder: str, fed: Fed, tmp_path: Path) -> None:
    """The issue's case: a party whose scoring port is taken reported "ready ... scoring on <port>"."""
    with holding(holder) as port:
        cfg = _write(tmp_path, "party.toml", _patched(fed.party, {"set": {"scoring.port": port}}))
        before = digests([fed.fed.root, tmp_path])
        proc = _cli(["party", "start", "--config", str(cfg)], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{cfg}: [scoring].port: port {port} on 127.0.0.1 is already in use" in " ".join(proc.stderr.split())
    assert "ready" not in proc.stdout and "Traceback" not in proc.stderr
    assert digests([fed.fed.root, tmp_path]) == before


def test_coordinator_daemon_refuses_a_taken_relay_port_before_ready(fed: Fed, tmp_path: Path) -> None:
    with holding("grpc") as port:
        cfg = _write(tmp_path, "coordinator.toml", _patched(fed.coordinator, {"set": {"coordinator.relay_port": port}}))
        before = digests([fed.fed.root, tmp_path])
        proc = _cli(["coordinator", "start", "--config", str(cfg)], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{cfg}: [coordinator].relay_port: port {port} on 127.0.0.1 is already in use" in " ".join(proc.stderr.split())
    assert "ready" not in proc.stdout and "Traceback" not in proc.stderr
    assert digests([fed.fed.root, tmp_path]) == before


@pytest.mark.parametrize("field", ["flower_port", "superlink_port"])
def test_coordinator_refuses_taken_flower_ports(field: str, fed: Fed, tmp_path: Path) -> None:
    from coordinator.daemon import start

    with holding("socket") as port:
        cfg = _write(tmp_path, "coordinator.toml", _patched(fed.coordinator, {"set": {f"coordinator.{field}": port}}))
        before = digests([fed.fed.root])
        with pytest.raises(FedCreditError) as err:
            start(cfg, log=lambda m: None)
    assert str(err.value) == f"{cfg}: [coordinator].{field}: port {port} on 127.0.0.1 is already in use"
    assert digests([fed.fed.root]) == before


def test_party_refuses_a_taken_runtime_port(fed: Fed, tmp_path: Path) -> None:
    from party.daemon import start

    with holding("socket") as port:
        cfg = _write(tmp_path, "party.toml", _patched(fed.party, {"set": {"party.runtime_port": port}}))
        with pytest.raises(FedCreditError) as err:
            start(cfg)
    assert str(err.value) == f"{cfg}: [party].runtime_port: port {port} on 127.0.0.1 is already in use"


def test_grpc_servers_do_not_share_a_taken_port(fed: Fed) -> None:
    """Without the probe, the servers themselves refuse a port a gRPC server holds (no SO_REUSEPORT sharing)."""
    from coordinator.relay import start_relay
    from crypto.certs import Identity

    ident = Identity.load(fed.certs / "coordinator", "coordinator")
    with holding("grpc") as port, pytest.raises(FedCreditError, match=f"relay cannot listen on '127.0.0.1:{port}'"):
        start_relay(ident, f"127.0.0.1:{port}", membership=lambda session: None).stop()


def test_a_free_port_passes_the_probe_and_stays_free(fed: Fed) -> None:
    from fedcredit.config import check_port_free, load_party_config

    cfg = load_party_config(fed.fed.root / "bank1.toml")
    port = free_port()
    check_port_free(cfg, "scoring", "port", "127.0.0.1", port)
    with socket.socket() as s:  # the probe let it go
        s.bind(("127.0.0.1", port))
