"""``fedcredit simulate``: a whole federation on this machine.

Two modes over the same protocol code:

* in-process (default): every role in one process over :class:`LocalChannel` /
  :class:`InMemoryHub` — seconds, for trying scenarios and partitions;
* ``--deployment``: real processes on 127.0.0.1 (coordinator = Flower SuperLink +
  relay, one SuperNode per party), real TLS and SuperNode authentication —
  exactly the code path of a real installation.

A scenario is a TOML file (built-ins live in ``fedcredit/scenarios/``): where the
data comes from (generated applications, or files), how it is split across banks,
and the job to run.  Results go to ``<out>/report.json`` plus PNG plots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from fedcredit.config import read_toml
from fedcredit.errors import ConfigError

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "fedcredit" / "scenarios"


def builtin_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str) -> tuple[dict[str, Any], Path]:
    p = Path(name_or_path)
    if not p.suffix:
        p = SCENARIO_DIR / f"{name_or_path}.toml"
        if not p.exists():
            raise ConfigError(
                f"unknown scenario '{name_or_path}'; built-in scenarios: {', '.join(builtin_scenarios())} "
                "(or pass a scenario .toml file)"
            )
    data = read_toml(p, "scenario")
    for section in ("scenario", "data", "job"):
        if section not in data:
            raise ConfigError(f"{p}: missing [{section}] section")
    return data, p


def prepare_data(data_cfg: dict[str, Any], out: Path, source: Path) -> dict[str, dict[str, Path]]:
    """Materialise per-bank train/test files; returns {bank: {"train": path, "test": path}}."""
    from simulations.generator import write_bank_files

    kind = data_cfg.get("source", "generated")
    if str(kind).startswith("vertical-"):  # {party: {dataset key: dataset table}} (see vertical_jobs)
        from fedcredit.protocols.vertical_jobs import prepare_vertical_data

        return prepare_vertical_data(data_cfg, out, source)  # type: ignore[return-value]
    if kind == "generated":
        paths = write_bank_files(
            out,
            int(data_cfg.get("banks", 3)),
            int(data_cfg.get("rows_per_bank", 4000)),
            int(data_cfg.get("test_rows", 3000)),
            seed=int(data_cfg.get("seed", 7)),
            split=str(data_cfg.get("split", "iid")),  # type: ignore[arg-type]
        )
        banks = [k for k in paths if k != "test"]
        test = pd.read_csv(paths["test"])
    elif kind == "files":
        banks_cfg = data_cfg.get("banks")
        if not isinstance(banks_cfg, dict) or "test" not in data_cfg:
            raise ConfigError(f"{source}: [data] with source='files' needs a [data.banks] table (name = path) and test = path")
        paths = {b: (source.parent / p).resolve() for b, p in banks_cfg.items()}
        for b, p in paths.items():
            if not p.exists():
                raise ConfigError(f"{source}: [data.banks].{b}: file {p} not found")
        banks = list(paths)
        test_path = (source.parent / str(data_cfg["test"])).resolve()
        if not test_path.exists():
            raise ConfigError(f"{source}: [data].test: file {test_path} not found")
        test = pd.read_csv(test_path)
    else:
        raise ConfigError(f"{source}: [data].source must be 'generated' or 'files', got '{kind}'")
    # each bank keeps its own held-out slice of the shared test population
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, dict[str, Path]] = {}
    n = len(banks)
    for i, b in enumerate(banks):
        tp = out / f"{b}_test.csv"
        test.iloc[i::n].to_csv(tp, index=False)
        result[b] = {"train": Path(paths[b]), "test": tp}
    return result


def _job_tables(scn: dict[str, Any], banks: list[str]) -> dict[str, Any]:
    job = dict(scn["job"])
    job.setdefault("name", scn["scenario"].get("name", "simulation"))
    job.setdefault("type", "horizontal")
    job["parties"] = banks
    return {"job": job, "model": dict(scn.get("model", {}))}


def simulate(scenario: str, *, deployment: bool = False, out_dir: Path | None = None,
             console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    scn, source = load_scenario(scenario)
    name = scn["scenario"].get("name", source.stem)
    out = (out_dir or Path("fedcredit-demo") / name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]{name}[/bold]: {scn['scenario'].get('description', '')}")
    console.print(f"mode: {'deployment (real processes, TLS, 127.0.0.1)' if deployment else 'in-process'}; output: {out}")
    banks = prepare_data(scn["data"], out / "data", source)
    tables = _job_tables(scn, list(banks))
    t0 = time.perf_counter()
    if deployment:
        report = _run_deployment(tables, banks, out, console)
    else:
        report = _run_inprocess(tables, banks, out, console)
    report["scenario"] = name
    report["mode"] = "deployment" if deployment else "in-process"
    report["wall_time_s"] = round(time.perf_counter() - t0, 2)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    _summary(report, console)
    console.print(f"report: {out / 'report.json'}")
    return report


def _run_inprocess(tables: dict[str, Any], banks: dict[str, dict[str, Path]], out: Path, console: Console) -> dict[str, Any]:
    from fedcredit.channel import LocalChannel
    from fedcredit.config import JobConfig
    from fedcredit.flowerapp.jobs import horizontal_job, horizontal_public_result
    from fedcredit.protocols.horizontal import run_coordinator
    from simulations.horizontal_sim import make_local_federation

    job = JobConfig.model_validate(tables)
    if job.job.type != "horizontal":  # every party's real party code, one thread each, over an InMemoryHub
        from simulations.vertical_sim import run_vertical_inprocess

        return run_vertical_inprocess(job, banks, out, console)  # type: ignore[arg-type]
    run_id = f"sim-{time.strftime('%Y%m%d-%H%M%S')}"
    hjob = horizontal_job(job, run_id)
    fed = make_local_federation({b: f["train"] for b, f in banks.items()}, {b: f["test"] for b, f in banks.items()}, out)
    assert isinstance(fed.channel, LocalChannel)
    with _progress(console) as show:
        result = run_coordinator(fed.channel, hjob, progress=show)
    report = horizontal_public_result(result)
    report.update(run_id=run_id, status="finished", models={b: str(e.output_dir / run_id) for b, e in fed.envs.items()})
    return report


def _run_deployment(tables: dict[str, Any], banks: dict[str, dict[str, Path]], out: Path, console: Console) -> dict[str, Any]:
    from fedcredit.cli import follow
    from simulations.deployment import LocalFederation, PartySpec

    parties = [
        PartySpec(b, f) if isinstance(f.get("train"), dict)  # vertical: dataset tables prepared per party
        else PartySpec(b, {"train": {"path": f["train"], "label_column": "y"}, "test": {"path": f["test"], "label_column": "y"}})
        for b, f in banks.items()
    ]
    fed = LocalFederation(out / "federation", parties).setup()
    with fed:
        console.print(f"starting coordinator and {len(parties)} parties (logs: {fed.root / 'logs'})")
        fed.start()
        job_path = fed.write_job("job", tables)
        client = fed.client()
        run_id = client.submit(job_path)
        console.print(f"run {run_id} submitted")
        info = follow(client, run_id)
        client.close()
    report: dict[str, Any] = {"run_id": run_id, "status": info.status, "error": info.error or None}
    if info.result_json:
        report.update(json.loads(info.result_json))
    return report


class _progress:
    """Rich progress for in-process runs, fed by the protocol's progress events."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.prog = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                             TimeElapsedColumn(), console=console)

    def __enter__(self):
        self.prog.__enter__()
        self.task = self.prog.add_task("setting up", total=None)

        def show(ev: dict[str, Any]) -> None:
            if "round" in ev and "rounds" in ev:
                self.prog.update(self.task, total=ev["rounds"], completed=ev["round"])
            desc = ev.get("message") or ev.get("event", "")
            if "round" in ev and "rounds" in ev:
                desc = f"round {ev['round']}/{ev['rounds']}"
            m = ev.get("metrics")
            if isinstance(m, dict):
                desc += "  " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float))
            self.prog.update(self.task, description=desc)

        return show

    def __exit__(self, *exc: object) -> None:
        self.prog.__exit__(*exc)


def _summary(report: dict[str, Any], console: Console) -> None:
    t = Table(title=f"summary ({report.get('mode')})")
    t.add_column("who")
    t.add_column("test AUC")
    t.add_column("test KS")
    t.add_column("n test")
    g = report.get("global") or {}
    for p, m in (report.get("parties") or {}).items():
        if isinstance(m, dict):
            t.add_row(p, _f(m.get("auc")), _f(m.get("ks")), str(m.get("n_test", "")))
    t.add_row("[bold]global (all banks' test rows)[/bold]", _f(g.get("auc")), _f(g.get("ks")), str(g.get("n_test", "")))
    console.print(t)
    status = report.get("status", "finished")
    console.print(f"status: {status}  wall time: {report.get('wall_time_s')} s" + (f"  error: {report['error']}" if report.get("error") else ""))


def _f(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"
