"""CLI subcommands for the party model store, scoring and monitoring (``fedcredit party models ...``,
``fedcredit party monitor``, ``fedcredit score ...``).  Kept apart from cli.py so the deployment/scoring code owns them."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from fedcredit.errors import ConfigError, DataError


def _store(args: argparse.Namespace) -> Any:
    from fedcredit.config import load_party_config
    from party.models import open_store

    cfg = load_party_config(args.config)
    return open_store(cfg, getattr(args, "federation_key", None))


def _print_versions(versions: list[Any], as_json: bool) -> None:
    from rich.table import Table

    from fedcredit.progress import console

    if as_json:
        print(json.dumps([v.to_dict() for v in versions], indent=1, sort_keys=True))
        return
    table = Table(title="installed model versions")
    for col in ("", "version", "run", "kind", "created", "installed", "metrics"):
        table.add_column(col)
    for v in versions:
        metrics = ", ".join(f"{k}={val:.4g}" if isinstance(val, float) else f"{k}={val}" for k, val in v.metrics.items())
        table.add_row("*" if v.active else "", v.version, v.run_id, v.kind, v.created, v.installed, metrics)
    console.print(table)


def cmd_models_list(args: argparse.Namespace) -> int:
    store = _store(args)
    versions = store.list()
    if not versions and not args.json:
        print(f"no model installed in {store.root}")
        return 0
    _print_versions(versions, args.json)
    return 0


def cmd_models_install(args: argparse.Namespace) -> int:
    store = _store(args)
    version = store.install(args.artifact, activate=args.activate)
    v = store.get(version)
    print(f"installed {version} ({v.kind}, run {v.run_id}, model hash {v.model_hash[:12]})"
          + ("; active" if v.active else f"; activate with: fedcredit party models activate --config {args.config} {version}"))
    return 0


def cmd_models_activate(args: argparse.Namespace) -> int:
    store = _store(args)
    version = args.version
    by_run = [x.version for x in store.list() if x.run_id == version]
    if by_run and version not in {x.version for x in store.list()}:
        if len(by_run) > 1:
            raise ConfigError(f"run '{version}' has several installed versions here ({', '.join(by_run)}); name one")
        version = by_run[0]  # a run id: its one version at this party
    v = store.activate(version)
    print(f"active: {v.version} ({v.kind}, run {v.run_id})")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    v = _store(args).rollback()
    print(f"rolled back; active: {v.version} ({v.kind}, run {v.run_id})")
    return 0


def cmd_models_export(args: argparse.Namespace) -> int:
    from fedcredit.decision import load_decision_policy
    from fedcredit.export import export_artifact

    store = _store(args)
    art = store.load(args.version)
    scale = load_decision_policy(args.decision).scale if args.decision else None
    out = export_artifact(art, args.out, scale=scale)
    for name, path in out.items():
        print(f"wrote {name}: {path}")
    return 0


def register_party_commands(party_sub: Any) -> None:
    """Add ``models`` (list/install/activate/rollback/export) and ``monitor`` under ``fedcredit party``."""
    models = party_sub.add_parser("models", help="installed model versions (signed artifacts)").add_subparsers(
        dest="models_cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="the party config (party.toml)")
        p.add_argument("--federation-key", help="federation-signing.pub (default: <identity_dir>/federation-signing.pub)")

    p = models.add_parser("list", help="versions side by side, the active one marked *")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("install", help="verify (signature + every hash) and install an artifact")
    common(p)
    p.add_argument("artifact", help="artifact directory or .tar/.tar.gz")
    p.add_argument("--activate", action="store_true")
    p.set_defaults(func=cmd_models_install)
    p = models.add_parser("activate", help="make an installed version the active one")
    common(p)
    p.add_argument("version", help="a version (see list) or the run id that produced it")
    p.set_defaults(func=cmd_models_activate)
    p = models.add_parser("rollback", help="re-activate the previously active version")
    common(p)
    p.set_defaults(func=cmd_models_rollback)
    p = models.add_parser("export", help="horizontal LR: scorecard CSV / linear JSON / PMML; vertical LR part with "
                                         "a scorecard: this party's scorecard CSV / ONNX")
    common(p)
    p.add_argument("version", nargs="?", help="default: the active version")
    p.add_argument("--out", required=True)
    p.add_argument("--decision", help="TOML with a [decision] section (score scale; horizontal LR only: a "
                                      "scorecard keeps the scale it was trained with)")
    p.set_defaults(func=cmd_models_export)

    p = party_sub.add_parser("monitor", help="population stability (PSI) of the score and this party's own "
                                             "features: decision log vs the training reference")
    p.add_argument("--config", required=True, help="the deciding party's config (party.toml)")
    p.add_argument("--run", help="the training run whose model scored (default: the run of the latest decision)")
    p.add_argument("--log", help="decision log (default: [scoring].decision_log or <state_dir>/decisions.jsonl)")
    p.add_argument("--reference", help="training reference (default: <state_dir>/models/<run>/reference.json)")
    p.add_argument("--out", help="HTML report (default: <state_dir>/models/<run>/monitor.html, JSON beside it)")
    p.add_argument("--json", action="store_true", help="print the PSI figures as JSON instead of a table")
    p.set_defaults(func=cmd_monitor)


# --------------------------------------------------------------------------- monitoring


def cmd_monitor(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedcredit.config import load_party_config
    from fedcredit.monitor import load_reference, population_stability
    from fedcredit.progress import console
    from fedcredit.report import ReportBuilder, write_report
    from party.audit import read_decisions

    cfg = load_party_config(args.config)
    state = Path(cfg.party.state_dir)
    sc = cfg.scoring
    log = Path(args.log) if args.log else (sc.decision_log if sc and sc.decision_log else state / "decisions.jsonl")
    lines = read_decisions(log)
    run = args.run or next((str(d["run_id"]) for d in reversed(lines) if d.get("run_id")), None)
    if run is None:
        raise ConfigError(f"decision log {log} has no decisions yet: nothing to monitor (name a run with --run)")
    lines = [d for d in lines if d.get("run_id") == run and not d.get("fallback")]
    if not lines:
        raise ConfigError(f"decision log {log} has no decision of run '{run}' (fallback answers are not counted)")
    model_dir = state / "models" / run
    if not model_dir.exists():  # horizontal runs keep their model dir under a file-system-safe name
        model_dir = state / "models" / re.sub(r"[^A-Za-z0-9_-]", "_", run)  # = protocols.horizontal._safe
    ref = load_reference(Path(args.reference) if args.reference else model_dir / "reference.json")
    res = population_stability(ref, lines)
    items = ([res["score"]] if "score" in res else []) + res["features"]
    b = ReportBuilder(party=cfg.party.name, role="monitor", run_id=run, job_type="population stability",
                      title=f"population stability of run {run} — party {cfg.party.name}")
    b.put("psi", res)
    out = Path(args.out) if args.out else model_dir / "monitor.html"
    html = write_report(b.to_dict(), out.parent, stem=out.stem)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    t = Table(title=f"PSI: {res['n_decisions']} decisions of run {run} vs its training reference")
    for col in ("what", "PSI", "band", "rows", "missing"):
        t.add_column(col)
    styles = {"stable": "green", "watch": "yellow", "act": "bold red"}
    for i in items:
        t.add_row(str(i["name"]), "-" if i["psi"] is None else f"{i['psi']:.4f}", i["band"], str(i["n"]),
                  str(i["missing"]), style=styles.get(i["band"]))
    console.print(t)
    console.print(res["convention"])
    console.print(f"report: {html}")
    return 0


# --------------------------------------------------------------------------- batch scoring


def _read_applications(path: Path, id_column: str, features: list[str], exposure: str | None,
                       categorical: frozenset[str] = frozenset()) -> list[Any]:
    """A CSV of applications as the online path takes them: numbers, category text (``categorical``), and an
    empty / NaN cell as missing (the model's scorer then applies its rule, as for an online request)."""
    from fedcredit.data import ALWAYS_MISSING
    from party.scoring import Application

    if not path.exists():
        raise ConfigError(f"{path}: input file not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if id_column not in cols:
            raise DataError(f"{path}: no id column {id_column!r} (columns: {', '.join(cols)})")
        missing = [f for f in features if f not in cols]
        if missing:
            raise DataError(f"{path}: the model needs feature column(s) {missing}, which the file lacks")
        wanted = list(dict.fromkeys(features + ([exposure] if exposure and exposure in cols else [])))
        apps = []
        for line, row in enumerate(reader, start=2):
            vals: dict[str, float | str | None] = {}
            bad = []
            for f in wanted:
                cell = (row.get(f) or "").strip()
                if cell in ALWAYS_MISSING:
                    vals[f] = None
                elif f in categorical:
                    vals[f] = cell
                elif _is_float(cell):
                    vals[f] = float(cell)
                else:
                    bad.append(f)
            if bad:
                raise DataError(f"{path}: line {line}: column(s) {bad} are not numbers (an empty cell is missing)")
            apps.append(Application(str(row[id_column]).strip(), vals))
    return apps


def _is_float(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def cmd_score(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fedcredit.config import load_party_config
    from party.scoring import service_from_config

    cfg = load_party_config(args.config)
    service = service_from_config(cfg)
    try:
        version = args.model or service.active_version()
        m = service.model(version)
        id_column = args.id_column or m.artifact.schema.get("id_column") or "id"
        lim = service.policy.limit
        schema = m.inputs  # the model's raw inputs: names and which are categories (text)
        apps = _read_applications(Path(args.input), id_column, list(schema.feature_names),
                                  lim.exposure_feature if lim else None,
                                  frozenset(f for f, k in zip(schema.feature_names, schema.kinds) if k == "categorical")
                                  | frozenset(m.encoding.categories if m.encoding is not None else ()))
        out = Path(args.output)
        if out.exists() and not args.force:
            raise ConfigError(f"refusing to overwrite {out} (pass --force)")
        tmp = out.with_name(f".{out.name}.tmp")
        counts: dict[str, int] = {}
        with open(tmp, "w", newline="") as fh, Progress(
            TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False
        ) as bar:
            w = csv.writer(fh)
            w.writerow(["id", "pd", "score", "decision", "credit_limit", "model_version", "fallback", "reasons",
                        "party_contributions", "notes", "points"])
            task = bar.add_task("score", total=len(apps))
            for start in range(0, len(apps), args.batch_size):
                batch = apps[start:start + args.batch_size]
                for r in service.score(batch, model_version=version):
                    counts[r["decision"]] = counts.get(r["decision"], 0) + 1
                    w.writerow([r["id"], f"{r['pd']:.10g}", f"{r['score']:.4f}", r["decision"],
                                "" if r["credit_limit"] is None else r["credit_limit"], r["model_version"],
                                int(r["fallback"]), json.dumps(r["reasons"]), json.dumps(r["party_contributions"]),
                                "; ".join(r.get("notes", [])),
                                "" if r.get("points") is None else json.dumps(r["points"])])
                bar.advance(task, len(batch))
        tmp.replace(out)
        print(f"scored {len(apps)} applications with {version} -> {out}: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    finally:
        service.close()
    return 0


def register_top_level_commands(sub: Any) -> None:
    """Add top-level commands (``score``)."""
    p = sub.add_parser("score", help="score a file of applications with an installed model (batch)")
    p.add_argument("--config", required=True, help="the deciding party's config (party.toml)")
    p.add_argument("--model", help="model version (default: the active one)")
    p.add_argument("--id-column", help="default: the model schema's id column")
    p.add_argument("--batch-size", type=int, default=256,
                   help="applications per joint round trip to the passive parties")
    p.add_argument("--force", action="store_true", help="overwrite the output file")
    p.add_argument("input", help="CSV with the id column and this party's feature columns")
    p.add_argument("output", help="CSV of decisions")
    p.set_defaults(func=cmd_score)


__all__ = ["register_party_commands", "register_top_level_commands"]
