"""The ``fedcredit`` command line: certificates, daemons, jobs, runs, simulation.

argparse (stdlib) for parsing, rich for progress and tables.  Every user-facing
failure is a :class:`fedcredit.errors.FedCreditError` printed as one clear line
with exit code 2 — no tracebacks for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from fedcredit import __version__
from fedcredit.errors import ConfigError, FedCreditError
from fedcredit.progress import console, err_console, fmt_time, follow, print_parties, print_run, styled

# --------------------------------------------------------------------------- certs


def cmd_certs_init(args: argparse.Namespace) -> int:
    from crypto.certs import init_ca

    d = init_ca(Path(args.ca_dir), args.federation, days=args.days, force=args.force)
    console.print(f"federation CA '{args.federation}' created in {d} (ca.crt, ca.key 0600, federation-signing.key 0600)")
    return 0


def cmd_certs_issue(args: argparse.Namespace) -> int:
    from crypto.certs import issue

    out = Path(args.out_dir) if args.out_dir else Path(args.ca_dir).parent / args.name
    hosts = [*(args.host or []), *args.dns, *args.ip]
    ident = issue(Path(args.ca_dir), out, args.name, role=args.role, hosts=hosts or ("127.0.0.1", "localhost"),
                  days=args.days, force=args.force)
    console.print(
        f"issued '{ident.name}' (role {ident.role}) in {out}: {ident.cert_path.name}, {ident.key_path.name} (0600), "
        f"{ident.envelope_key_path.name} (0600), {ident.flower_key_path.name} (0600), {ident.flower_pub_path.name}"
    )
    return 0


def cmd_certs_rekey_flower(args: argparse.Namespace) -> int:
    from crypto.certs import rekey_flower

    out = Path(args.out_dir) if args.out_dir else Path(args.ca_dir).parent / args.name
    pub = rekey_flower(out, args.name)
    console.print(f"new SuperNode key for '{args.name}' in {out} ({args.name}.flower.key 0600); send {pub} to the "
                  "coordinator operator: it goes at this party's [[parties]] flower_public_key, then restart the coordinator")
    return 0


# --------------------------------------------------------------------------- daemons


def cmd_coordinator_start(args: argparse.Namespace) -> int:
    from coordinator.daemon import serve_forever

    return serve_forever(Path(args.config))


def cmd_party_start(args: argparse.Namespace) -> int:
    from party.daemon import serve_forever

    return serve_forever(Path(args.config))


def cmd_party_schema(args: argparse.Namespace) -> int:
    """Load a dataset as the daemon would, print the kinds it has (declared or inferred), optionally save them.

    Why: a new table's kinds are inferred unless declared; the operator sees (and can
    edit and pin, via ``schema_file``) exactly what a job would train on.
    """
    from crypto.files import write_text
    from fedcredit.config import PartyConfig, load_config
    from fedcredit.data import load_dataset, schema_toml

    cfg = load_config(Path(args.config), PartyConfig)
    ds = cfg.dataset(args.dataset)
    if args.write and Path(args.write).exists() and not args.force:  # a saved schema is often hand-edited
        raise ConfigError(f"{args.write} already exists (a saved, perhaps edited, schema); "
                          "choose another file or pass --force to overwrite it")
    table = load_dataset(ds, party=cfg.party.name)
    text = schema_toml(table, ds, dataset=args.dataset)
    console.print(text, end="", markup=False, highlight=False)
    if args.write:
        out = Path(args.write)
        write_text(out, text)
        console.print(f"schema written to {out}; point [datasets.{args.dataset}].schema_file at it to pin the kinds",
                      markup=False)
    return 0


# --------------------------------------------------------------------------- control client


def _control_client(args: argparse.Namespace, job_control: Any = None):  # -> ControlClient
    """The Control client for an operator command: flags > FEDCREDIT_* env > job [control] > profile."""
    from coordinator.client import ControlClient
    from fedcredit.profile import resolve_connection

    conn = resolve_connection(args.control, args.identity_dir, args.name, job_control=job_control)
    return ControlClient.connect(conn.control, conn.identity_dir, conn.name)


def cmd_login(args: argparse.Namespace) -> int:
    """Store the coordinator address and operator credentials once (``fedcredit.profile``)."""
    from crypto.certs import Identity
    from fedcredit.profile import profile_path, save_profile

    ident_dir = Path(args.identity_dir).expanduser().resolve()
    ident = Identity.load(ident_dir, args.name)  # a wrong directory or name fails here, not at the next command
    if ident.role != "operator":
        raise FedCreditError(f"{ident.cert_path}: certificate '{ident.name}' has role '{ident.role}'; the Control "
                             "service admits only operator certificates (fedcredit certs issue NAME --role operator)")
    if not args.no_check:
        from coordinator.client import ControlClient

        client = ControlClient.connect(args.control, ident_dir, args.name)
        n = len(client.list(1))
        client.close()
        console.print(f"reached the coordinator at {args.control} as '{args.name}' ({'runs recorded' if n else 'no runs yet'})")
    path = save_profile(args.control, ident_dir, args.name, Path(args.profile) if args.profile else None)
    where = "" if not args.profile and path == profile_path() else " (pass it on with FEDCREDIT_PROFILE)"
    console.print(f"profile written to {path}{where}: fedcredit train | runs | status now use it")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fedcredit.config import load_job_config

    job = load_job_config(args.job)  # validate locally first: errors name the file and field
    client = _control_client(args, job.control)
    run_id = client.submit(Path(args.job))
    console.print(styled("submitted run ", (run_id, "bold"), f" ({job.job.type}, parties: {', '.join(job.job.parties)})"))
    if args.detach:
        return 0
    info = follow(client.watch(run_id), lambda: client.get(run_id))
    return 0 if info.status == "finished" else 1


def _info_dict(r: Any) -> dict[str, Any]:
    return {"run_id": r.run_id, "name": r.name, "type": r.type, "status": r.status, "created": r.created,
            "started": r.started or None, "ended": r.ended or None, "error": r.error or None,
            "result": json.loads(r.result_json) if r.result_json else None,
            "parties": {p.name: {"state": p.state, "last_seen": p.last_seen or None, "age_s": p.age_s}
                        for p in r.parties}}


def cmd_runs(args: argparse.Namespace) -> int:
    if args.action == "resume":
        from fedcredit import cli_jobs

        return cli_jobs.cmd_runs_resume(args, lambda: _control_client(args))
    client = _control_client(args)
    runs = client.list(args.limit)
    if args.json:
        print(json.dumps([_info_dict(r) for r in runs], indent=1))
        return 0
    t = Table(title="runs")
    t.add_column("run", no_wrap=True)
    for col in ("name", "type", "status", "created", "duration", "global AUC"):
        t.add_column(col)
    for r in runs:
        res = json.loads(r.result_json) if r.result_json else {}
        auc = (res.get("global") or {}).get("auc")
        dur = f"{r.ended - r.started:.1f} s" if r.ended and r.started else "-"
        t.add_row(r.run_id, r.name, r.type, r.status, fmt_time(r.created), dur, f"{auc:.4f}" if auc else "-")
    console.print(t)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _control_client(args)
    info = client.get(args.run_id)
    if args.follow and info.status in ("queued", "running"):
        info = follow(client.watch(args.run_id), lambda: client.get(args.run_id))
        return 0 if info.status == "finished" else 1
    if args.json:
        print(json.dumps(_info_dict(info), indent=1))
    else:
        print_run(info)
    return 0


def cmd_parties(args: argparse.Namespace) -> int:
    reply = _control_client(args).parties()
    if args.json:
        print(json.dumps({p.name: {"state": p.state, "last_seen": p.last_seen or None, "age_s": p.age_s,
                                   "interval_s": p.interval_s} for p in reply.parties}, indent=1))
    else:
        print_parties(reply)
    return 0


# --------------------------------------------------------------------------- simulation


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.harness import simulate

    report = simulate(args.scenario, deployment=args.deployment, out_dir=Path(args.out) if args.out else None,
                      console=console)
    return 0 if report.get("status", "finished") == "finished" else 1


def cmd_demo_data(args: argparse.Namespace) -> int:
    from simulations.scenario_data import write_demo_party_data

    files = write_demo_party_data(args.party, Path(args.out), seed=args.seed)
    console.print(f"demo data for '{args.party}' in {args.out}: {', '.join(f.name for f in files)} "
                  "(generated credit applications; a real party uses its own files)")
    return 0


# --------------------------------------------------------------------------- parser


def _add_control_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", help="coordinator control address host:port (default: $FEDCREDIT_CONTROL, the job "
                   "file's [control], then the profile of `fedcredit login`)")
    p.add_argument("--identity-dir", help="directory with your operator certificate and key (default: "
                   "$FEDCREDIT_IDENTITY_DIR, the job file's [control], then the profile)")
    p.add_argument("--name", help="your operator certificate name (default: $FEDCREDIT_NAME, the profile, operator)")


def _scenario_epilog() -> str:
    """The built-in scenarios with their one-line descriptions, for ``simulate --help``."""
    from simulations.harness import describe_scenarios

    rows = describe_scenarios()
    width = max((len(n) for n in rows), default=0)
    return "built-in scenarios:\n" + "\n".join(f"  {n:<{width}}  {d}" for n, d in rows.items())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedcredit", description="Privacy-preserving federated credit-risk modelling")
    ap.add_argument("--version", action="version", version=f"fedcredit {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    certs = sub.add_parser("certs", help="federation CA and party certificates").add_subparsers(dest="sub", required=True)
    p = certs.add_parser("init", help="create the federation certificate authority")
    p.add_argument("--ca-dir", default="certs/ca")
    p.add_argument("--federation", default="fedcredit")
    p.add_argument("--days", type=int, default=3650)
    p.add_argument("--force", action="store_true", help="overwrite an existing CA (never done silently)")
    p.set_defaults(func=cmd_certs_init)
    p = certs.add_parser("issue", help="issue a party/coordinator/operator certificate and keys")
    p.add_argument("name")
    p.add_argument("--role", choices=["party", "coordinator", "operator"], default="party")
    p.add_argument("--ca-dir", default="certs/ca")
    p.add_argument("--out-dir", help="default: <ca-dir>/../<name>")
    p.add_argument("--host", action="append", help="DNS name or IP the holder serves on (repeatable; same as --dns/--ip)")
    p.add_argument("--dns", action="append", default=[], help="a DNS name clients dial (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="an IP address clients dial (repeatable)")
    p.add_argument("--days", type=int, default=825)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_certs_issue)
    p = certs.add_parser("rekey-flower", help="replace a party's Flower SuperNode key (after its node was unregistered)")
    p.add_argument("name")
    p.add_argument("--ca-dir", default="certs/ca")
    p.add_argument("--out-dir", help="the party's credential directory (default: <ca-dir>/../<name>)")
    p.set_defaults(func=cmd_certs_rekey_flower)

    coord = sub.add_parser("coordinator", help="coordinator daemon").add_subparsers(dest="sub", required=True)
    p = coord.add_parser("start", help="run the SuperLink, relay and control service")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_coordinator_start)

    party = sub.add_parser("party", help="party daemon").add_subparsers(dest="sub", required=True)
    p = party.add_parser("start", help="run this institution's party daemon")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_party_start)
    p = party.add_parser("schema", help="print a dataset's column kinds (declared or inferred); --write saves them")
    p.add_argument("--config", required=True)
    p.add_argument("--dataset", default="train", help="[datasets] key (default train)")
    p.add_argument("--write", metavar="FILE", help="save the schema as editable TOML (a dataset's schema_file)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --write file (never done silently)")
    p.set_defaults(func=cmd_party_schema)
    from fedcredit import cli_jobs, cli_models  # job approvals; model store / scoring commands

    cli_jobs.register_party_commands(party)
    cli_models.register_party_commands(party)
    cli_models.register_top_level_commands(sub)

    p = sub.add_parser("login", help="store the coordinator address and your operator credentials (CLI profile)",
                       description="Write the CLI profile (default $XDG_CONFIG_HOME/fedcredit/profile.toml, i.e. "
                       "~/.config/fedcredit/profile.toml; $FEDCREDIT_PROFILE overrides the path) so train, runs and "
                       "status need no --control/--identity-dir.  Flags and FEDCREDIT_CONTROL / "
                       "FEDCREDIT_IDENTITY_DIR / FEDCREDIT_NAME still override it per call.")
    p.add_argument("--control", required=True, help="the coordinator's relay/control address host:port")
    p.add_argument("--identity-dir", required=True, help="directory with your operator certificate and key")
    p.add_argument("--name", default="operator", help="your operator certificate name (default: operator)")
    p.add_argument("--profile", help="write this file instead of the default profile path")
    p.add_argument("--no-check", action="store_true", help="do not connect to the coordinator first")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("train", help="submit a training job and follow it")
    p.add_argument("job")
    p.add_argument("--detach", action="store_true", help="submit and return without following")
    _add_control_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", help="list past runs; 'runs resume <id>' continues an interrupted one")
    cli_jobs.register_runs_resume(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_control_args(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("status", help="show one run")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--follow", action="store_true", help="a run still active: show its progress until it ends")
    _add_control_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("demo-data", help="write one party's demo files for the README's multi-host federation")
    p.add_argument("party", help="bank1, bank2 or fintech (the parties of examples/)")
    p.add_argument("--out", default="data", help="directory (default: data)")
    p.add_argument("--seed", type=int, default=7, help="every party must use the same seed (default: 7)")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("parties", help="the federation's parties and their liveness (heartbeats)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_control_args(p)
    p.set_defaults(func=cmd_parties)

    p = sub.add_parser("simulate", help="run a whole federation on this machine", epilog=_scenario_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", nargs="?", default="horizontal-demo",
                   help="a built-in scenario name or a scenario .toml file (default: horizontal-demo)")
    p.add_argument("--deployment", action="store_true",
                   help="real processes on 127.0.0.1 with TLS (the code path of a real installation)")
    p.add_argument("--out", help="output directory for reports (default: ./fedcredit-demo/<scenario>)")
    p.set_defaults(func=cmd_simulate)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FedCreditError as e:
        err_console.print(styled(("error:", "red"), " ", str(e)))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
