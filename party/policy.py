"""A party's job policy: which datasets and columns a job would use, the rules that decide, the job digest.

Why at the party: the coordinator drives every job, so nothing it sends may decide what
this party's data is used for.  The party reads the job itself (the job text the
coordinator forwards, validated by :func:`fedcredit.jobs.parse_job`), works out which of
its datasets and columns the job would touch (:func:`plan_datasets`, from its own config
and the files' headers — no rows), and checks that against its ``[policy]``
(:func:`review_job`).  Every rule has a name; a refusal names the party and the rule.

The digest (:func:`job_digest`) is what an approval binds to: canonical JSON of the
validated job (defaults filled in, so two spellings of one job agree), the run id and
the SHA-256 fingerprints of the peers' certificates.  Any change to a job field, the run
id or a peer's certificate gives another digest, so it needs another approval.  The
``[control]`` table is left out: it only says how the operator's CLI reaches the
coordinator (and its ``identity_dir`` resolves against each reader's working directory).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcredit.config import DatasetSection, JobConfig, PartyConfig
from fedcredit.data import dataset_columns, dataset_schema
from fedcredit.errors import ConfigError, DataError, PolicyRefused
from fedcredit.params import HorizontalParams, SecureBoostModel, VerticalLRModel

__all__ = ["DatasetUse", "RuleResult", "Review", "RULES", "job_digest", "plan_datasets", "review_job",
           "effective_min_intersection"]

#: Every rule a review applies, in the order it reports them.
RULES = ("member", "job_types", "partners", "peers", "datasets", "columns", "min_intersection")


@dataclass(frozen=True)
class DatasetUse:
    """One dataset a job would read at this party, and exactly which of its columns."""

    key: str
    purpose: str  # "train", "test" or "test ids"
    id_column: str | None
    label_column: str | None  # None: the job gets no labels from this dataset
    features: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.id_column, self.label_column) if c] + list(self.features)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "purpose": self.purpose, "id_column": self.id_column,
                "label_column": self.label_column, "features": list(self.features)}


@dataclass(frozen=True)
class RuleResult:
    rule: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Review:
    """The outcome of checking one job (run id + spec + peers) against this party's policy."""

    party: str
    run_id: str
    digest: str
    job_type: str
    uses: tuple[DatasetUse, ...]
    results: tuple[RuleResult, ...]
    canonical: dict[str, Any] = field(default_factory=dict)  # what the digest was computed over

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failure(self) -> RuleResult | None:
        return next((r for r in self.results if not r.ok), None)

    def refusal(self) -> PolicyRefused:
        f = self.failure
        assert f is not None
        return PolicyRefused(self.party, f.rule, f.detail)

    def datasets(self) -> dict[str, list[str]]:
        """dataset key -> the columns the job would use (for audit lines and ``party jobs show``)."""
        return {u.key: u.columns for u in self.uses}


def canonical_job(job: JobConfig, run_id: str, peer_fingerprints: Mapping[str, str]) -> dict[str, Any]:
    return {"v": 1, "run_id": run_id, "job": job.model_dump(mode="json", exclude={"control"}),
            "peers": {p: peer_fingerprints[p] for p in sorted(peer_fingerprints)}}


def job_digest(job: JobConfig, run_id: str, peer_fingerprints: Mapping[str, str]) -> str:
    """SHA-256 (hex) of the canonical JSON of the validated job, the run id and the peers' certificate fingerprints."""
    doc = canonical_job(job, run_id, peer_fingerprints)
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    return hashlib.sha256(blob).hexdigest()


def _use(config: PartyConfig, key: str, purpose: str, *, label: bool, features: Sequence[str] | None) -> DatasetUse:
    ds: DatasetSection = config.dataset(key)
    if features is None:
        if ds.feature_columns is not None:
            features = list(ds.feature_columns)
        else:  # as fedcredit.data.load_dataset: every column but the id, the label and the ignored ones is a feature
            header = dataset_columns(ds, party=config.party.name)
            kinds, _ = dataset_schema(ds, party=config.party.name)
            features = [c for c in header if c not in (ds.id_column, ds.label_column) and kinds.get(c) != "ignore"]
    return DatasetUse(key, purpose, ds.id_column, ds.label_column if label else None, tuple(features))


def plan_datasets(config: PartyConfig, job: JobConfig) -> list[DatasetUse]:
    """Which of this party's datasets and columns ``job`` would read (ConfigError/DataError if it cannot run).

    horizontal: the train dataset (id, label, the job's ``feature_columns`` or the dataset's
    features) and the test dataset (same features); vertical: the train dataset (the label only
    at the label party) and, at the label party without ``test_fraction``, the test-id dataset
    (its id column only) if configured — exactly what ``fedcredit.protocols.vertical_jobs`` loads.
    """
    me, j = config.party.name, job.job
    if j.type == "horizontal":
        assert isinstance(job.model, HorizontalParams)
        train = _use(config, j.train_dataset, "train", label=True, features=job.model.feature_columns)
        uses = [train]
        if j.test_dataset:
            uses.append(_use(config, j.test_dataset, "test", label=True, features=train.features))
        return uses
    assert isinstance(job.model, (VerticalLRModel, SecureBoostModel))
    is_label = me == j.label_party
    uses = [_use(config, j.train_dataset, "train", label=is_label, features=None)]
    if is_label and job.model.test_fraction is None and j.test_dataset and j.test_dataset in config.datasets:
        uses.append(_use(config, j.test_dataset, "test ids", label=False, features=()))
    return uses


def effective_min_intersection(config: PartyConfig, job: JobConfig) -> tuple[int, str]:
    """(the smallest PSI intersection this party accepts for ``job``, the rule that sets it)."""
    pol = config.policy.min_intersection
    job_min = int(getattr(job.model, "psi_min_size", 1))
    if job_min > pol:
        return job_min, "[model].psi_min_size"
    return pol, "[policy].min_intersection"


def review_job(config: PartyConfig, job: JobConfig, run_id: str, peer_fingerprints: Mapping[str, str]) -> Review:
    """Check ``job`` (run ``run_id``, peers' certificate fingerprints) against this party's ``[policy]``."""
    me, pol, j = config.party.name, config.policy, job.job
    others = [p for p in j.parties if p != me]
    res: list[RuleResult] = []

    def add(rule: str, ok: bool, detail: str) -> None:
        res.append(RuleResult(rule, ok, detail))

    add("member", me in j.parties,
        f"'{me}' is one of the job's parties" if me in j.parties else f"'{me}' is not listed in [job].parties {j.parties}")
    add("job_types", j.type in pol.job_types,
        f"job type '{j.type}' " + ("is listed in [policy].job_types" if j.type in pol.job_types
                                   else f"is not listed in [policy].job_types {list(pol.job_types)}"))
    strangers = [p for p in others if p not in pol.partners]
    add("partners", not strangers,
        f"partners {others} are listed in [policy].partners" if not strangers
        else f"job part(ies) {strangers} are not listed in [policy].partners {list(pol.partners)}")
    unverified = [p for p in others if p not in peer_fingerprints]
    add("peers", not unverified,
        "every partner presented a certificate of the federation CA" if not unverified
        else f"no verified certificate for part(ies) {unverified}; the approval could not bind to them")

    uses: list[DatasetUse] = []
    try:
        uses = plan_datasets(config, job)
    except (ConfigError, DataError) as e:
        add("datasets", False, str(e))
    else:
        unlisted = [u.key for u in uses if u.key not in pol.datasets]
        add("datasets", not unlisted,
            f"datasets {[u.key for u in uses]} are listed in [policy.datasets]" if not unlisted
            else f"the job would use dataset(s) {unlisted}, not listed in [policy.datasets] "
                 f"(listed: {sorted(pol.datasets)})")
        bad = {u.key: [c for c in u.columns if c not in pol.datasets[u.key].columns]
               for u in uses if u.key in pol.datasets}
        bad = {k: v for k, v in bad.items() if v}
        add("columns", not bad and not unlisted,
            "every column the job would use is listed" if not bad and not unlisted
            else "; ".join(f"dataset '{k}': column(s) {v} not in [policy.datasets.{k}].columns" for k, v in bad.items())
            or "not checked: a dataset is not listed")
    if j.type != "horizontal":
        m, rule = effective_min_intersection(config, job)
        add("min_intersection", True, f"enforced at PSI: at least {m} common ids ({rule})")
    canon = canonical_job(job, run_id, peer_fingerprints)
    return Review(party=me, run_id=run_id, digest=job_digest(job, run_id, peer_fingerprints), job_type=j.type,
                  uses=tuple(uses), results=tuple(res), canonical=canon)
