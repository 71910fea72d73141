"""A job file, as both runtimes read it: parsing, the protocol specs it names, its public result.

Why here: the coordinator (which drives a job), every party (which checks the job it
is asked to run) and the simulator (which runs it in-process) translate the same job
file into the same protocol specs; that translation lives once, below all three.
"""

from __future__ import annotations

from typing import Any

from fedcredit.config import JobConfig, parse_job_text
from fedcredit.errors import ConfigError
from fedcredit.params import HorizontalJob, HorizontalParams
from fedcredit.protocols import horizontal

__all__ = ["parse_job", "horizontal_job", "horizontal_public_result"]


def parse_job(job_toml: str, source: str = "job.toml") -> JobConfig:
    """Validate a submitted job's text (errors name ``source`` and the field)."""
    return parse_job_text(job_toml, source)


def horizontal_job(job: JobConfig, run_id: str) -> HorizontalJob:
    """The protocol's job spec from a job file: [job] names the parties, [model] (already validated) the rest."""
    if not isinstance(job.model, HorizontalParams):
        raise ConfigError(f"a {job.job.type} job is not a horizontal job")
    params = {k: getattr(job.model, k) for k in HorizontalParams.model_fields}
    return HorizontalJob.from_dict({**params, "run_id": run_id, "parties": list(job.job.parties),
                                    "min_parties": job.job.min_parties})


def horizontal_public_result(result: horizontal.HorizontalResult) -> dict[str, Any]:
    """The part of a horizontal result the coordinator's registry and reports keep."""
    return {
        "global": result.global_metrics or {},
        "parties": result.party_metrics,
        "dropped": result.dropped,
        "rounds": result.rounds,
        "features": result.feature_names,
        "history": result.history,
        "bytes_per_round": result.bytes_per_round(),
        "traffic": result.traffic,
        "protocol_wall_time_s": result.wall_time_s,
        **({"privacy": result.privacy} if result.privacy else {}),
        "secagg": result.secagg,  # threshold, max dropouts, which aggregations were unmasked after dropouts
    }
