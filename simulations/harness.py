"""``fedcredit simulate``: a whole federation on this machine.

Two modes over the same protocol code:

* in-process (default): every role in one process over :class:`LocalChannel` /
  :class:`InMemoryHub` — seconds, for trying scenarios and partitions;
* ``--deployment``: real processes on 127.0.0.1 (coordinator = Flower SuperLink +
  relay, one SuperNode per party), real TLS and SuperNode authentication —
  exactly the code path of a real installation.

A scenario is a TOML file (built-ins live in ``simulations/scenarios/``): where the
data comes from (generated applications, or files), how it is split across banks,
and the job to run.  Results go to ``<out>/report.json`` plus PNG plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from rich.console import Console

from fedcredit.config import PolicySection, parse_config, read_toml
from fedcredit.errors import ConfigError
from fedcredit.params import JOB_TYPES, ModelTable, StrictModel, validate
from fedcredit.progress import LiveProgress, follow, print_summary, styled

#: Built-in scenarios ship inside this package (found with importlib.resources, so a wheel install has them).
SCENARIO_DIR = Path(str(resources.files("simulations") / "scenarios"))


def builtin_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def describe_scenarios() -> dict[str, str]:
    """Built-in scenario name -> its one-line ``[scenario].description`` (for ``fedcredit simulate --help``)."""
    out: dict[str, str] = {}
    for name in builtin_scenarios():
        try:
            out[name] = str(read_toml(SCENARIO_DIR / f"{name}.toml", "scenario").get("scenario", {}).get("description", ""))
        except ConfigError as e:  # a broken file must not break --help; it is reported when run
            out[name] = f"(unreadable: {e})"
    return out


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
    validate(_ScenarioFile, data, p)  # unknown sections and keys are errors, like every config
    jtype = data["job"].get("type", "horizontal")  # [model] now, by its job type's schema (the banks come later)
    if jtype in JOB_TYPES:  # an unknown type is reported as [job].type by the job schema
        validate(_ScenarioModel, {"model": {**data.get("model", {}), "type": jtype}}, p)
    return data, p


class _ScenarioSection(StrictModel):
    name: str | None = None
    description: str = ""


class _DataSection(StrictModel):
    """Every ``[data]`` key any source reads (simulations.scenario_data); a typo is an error, not a default."""

    source: Literal["generated", "files", "vertical-generated", "vertical-files"] = "generated"
    banks: int | dict[str, str] | None = None
    rows_per_bank: int | None = Field(None, ge=1)
    test_rows: int | None = Field(None, ge=1)
    split: str | None = None
    seed: int | None = None
    test: str | None = None
    label_party: str | None = None
    passive_party: str | None = None
    rows: int | None = Field(None, ge=1)
    overlap: float | None = None
    parties: dict[str, str] | None = None
    test_ids: str | None = None


class _ScenarioModel(StrictModel):
    model: ModelTable


class _ScenarioFile(StrictModel):
    """A scenario's shape; [job] and [model] are checked by the job schema once the banks are known."""

    scenario: _ScenarioSection
    data: _DataSection
    job: dict[str, Any]
    model: dict[str, Any] = Field(default_factory=dict)
    policy: PolicySection | None = None


def _job_tables(scn: dict[str, Any], banks: list[str]) -> dict[str, Any]:
    job = dict(scn["job"])
    job.setdefault("name", scn["scenario"].get("name", "simulation"))
    job.setdefault("type", "horizontal")
    job["parties"] = banks
    return {"job": job, "model": dict(scn.get("model", {}))}


def simulate(scenario: str, *, deployment: bool = False, out_dir: Path | None = None,
             console: Console | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Run a scenario; ``overrides`` replaces keys of its tables (e.g. ``{"model": {"n_trees": 2}}``), which is
    how the scenario tests run every shipped scenario quickly without a second copy of each file."""
    from simulations.scenario_data import prepare_data  # pandas: only when a scenario actually runs

    console = console or Console(markup=False, highlight=False)
    scn, source = load_scenario(scenario)
    for table, values in (overrides or {}).items():
        scn[table] = {**scn.get(table, {}), **values}
    name = scn["scenario"].get("name", source.stem)
    out = (out_dir or Path("fedcredit-demo") / name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console.print(styled((name, "bold"), f": {scn['scenario'].get('description', '')}"))
    console.print(f"mode: {'deployment (real processes, TLS, 127.0.0.1)' if deployment else 'in-process'}; output: {out}")
    banks = prepare_data(scn["data"], out / "data", source)
    tables = _job_tables(scn, list(banks))
    t0 = time.perf_counter()
    if deployment:
        report = _run_deployment(tables, banks, out, console, dict(scn.get("policy") or {}))
    else:
        report = _run_inprocess(tables, banks, out, console, source)
    report["scenario"] = name
    report["mode"] = "deployment" if deployment else "in-process"
    report["wall_time_s"] = round(time.perf_counter() - t0, 2)
    report["report_files"] = _report_files(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print_summary(report, console)
    console.print(f"report: {out / 'report.json'}")
    return report


def _report_files(report: Mapping[str, Any]) -> dict[str, str]:
    """Each party's HTML report on this machine, for the closing summary: a simulation knows every party's
    state dir (a coordinator does not, so its run view names ``<state_dir>/...``).  Only files that exist."""
    from fedcredit.report import REPORT_HTML

    found: dict[str, str] = {}
    models, states = report.get("models") or {}, report.get("state_dirs") or {}
    for party, m in (report.get("parties") or {}).items():
        if not isinstance(m, dict) or not isinstance(m.get("report"), str):
            continue
        if party in models:  # in-process: the run's model dir of that party
            path = Path(models[party]) / REPORT_HTML
        elif party in states:  # deployment: relative to the party daemon's state dir
            path = Path(states[party]) / m["report"]
        else:
            continue
        if path.is_file():
            found[party] = str(path)
    return found


def _run_inprocess(tables: dict[str, Any], banks: dict[str, dict[str, Path]], out: Path, console: Console,
                   source: Path) -> dict[str, Any]:
    from fedcredit.channel import LocalChannel
    from fedcredit.config import JobConfig
    from fedcredit.jobs import horizontal_job, horizontal_public_result
    from fedcredit.protocols.horizontal import run_coordinator
    from simulations.horizontal_sim import make_local_federation

    job = parse_config(tables, JobConfig, source)
    if job.job.type != "horizontal":  # every party's real party code, one thread each, over an InMemoryHub
        from simulations.vertical_sim import run_vertical_inprocess

        return run_vertical_inprocess(job, banks, out, console)  # type: ignore[arg-type]
    run_id = f"sim-{time.strftime('%Y%m%d-%H%M%S')}"
    hjob = horizontal_job(job, run_id)
    fed = make_local_federation({b: f["train"] for b, f in banks.items()}, {b: f["test"] for b, f in banks.items()}, out)
    assert isinstance(fed.channel, LocalChannel)
    with LiveProgress(console) as show:
        result = run_coordinator(fed.channel, hjob, progress=show)
    report = horizontal_public_result(result)
    report.update(run_id=run_id, status="finished", models={b: str(e.output_dir / run_id) for b, e in fed.envs.items()})
    return report


def _run_deployment(tables: dict[str, Any], banks: dict[str, dict[str, Path]], out: Path, console: Console,
                    policy: dict[str, Any]) -> dict[str, Any]:
    """Real processes; each party's [policy] is generated from its own files (simulations.deployment.local_policy)
    with the scenario's ``[policy]`` keys on top."""
    from simulations.deployment import LocalFederation, PartySpec

    parties = [
        PartySpec(b, f, policy=policy) if isinstance(f.get("train"), dict)  # type: ignore[arg-type]  # vertical: dataset tables prepared per party
        else PartySpec(b, {"train": {"path": f["train"], "label_column": "y"}, "test": {"path": f["test"], "label_column": "y"}},
                       policy=policy)
        for b, f in banks.items()
    ]
    fed = LocalFederation(out / "federation", parties).setup()
    with fed:
        console.print(f"starting coordinator and {len(parties)} parties (logs: {fed.root / 'logs'})")
        fed.start_coordinator()  # one line per daemon: start-up takes tens of seconds, and a log should show it
        console.print("coordinator ready")
        for p in parties:
            fed.start_party(p.name)
            console.print(f"party {p.name} ready")
        job_path = fed.write_job("job", tables)
        client = fed.client()
        run_id = client.submit(job_path)
        console.print(f"run {run_id} submitted")
        info = follow(client.watch(run_id), lambda: client.get(run_id), console)
        client.close()
    report: dict[str, Any] = {"run_id": run_id, "status": info.status, "error": info.error or None,
                              "state_dirs": {p.name: str(fed.state_dir(p.name)) for p in parties}}
    if info.result_json:
        report.update(json.loads(info.result_json))
    return report
