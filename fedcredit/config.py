"""TOML configs for the coordinator, a party daemon and a training job.

Validated with pydantic so a bad file fails at start-up with an error naming the
file and the field (``coordinator.toml: [coordinator].relay_port: expected an
integer``), instead of failing mid-job.  Relative paths are resolved against the
directory of the config file, so a federation folder can be moved as a whole.
"""

from __future__ import annotations

import errno
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from fedcredit.compute import WorkerPool
from fedcredit.decision import DecisionPolicy
from fedcredit.errors import ConfigError
from fedcredit.params import JOB_TYPES, ModelTable, StrictModel, validate
from fedcredit.params import read_toml as read_toml  # the one TOML reader (re-exported)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Strict(StrictModel):
    """Unknown keys are errors; numbers must be numbers (fedcredit.params.StrictModel)."""


class _File(_Strict):
    """A whole config file: remembers where it was read from, so later errors (a port in use) can name it."""

    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> str:
        return str(self._source) if self._source is not None else "config"

    def where(self, section: str, field: str) -> str:
        """``file: [section].field`` for a message about a value this file set."""
        return f"{self.source}: [{section}].{field}"


def _check_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError(f"'{v}' is not a valid party name (lower-case letters, digits, '-', '_'; max 63)")
    return v


# --------------------------------------------------------------------------- coordinator


class FederationSection(_Strict):
    name: str = "fedcredit"
    ca_dir: Path = Field(description="directory holding ca.crt (and ca.key on the CA host)")
    signing_key: Path | None = Field(
        None, description="federation Ed25519 signing key for model manifests (default <ca_dir>/federation-signing.key)"
    )


class CoordinatorSection(_Strict):
    name: str = "coordinator"
    identity_dir: Path
    state_dir: Path
    host: str = "127.0.0.1"
    flower_port: int = Field(9100, ge=1, le=65535, description="the public Flower port parties dial (the front door)")
    superlink_port: int = Field(
        0, ge=0, le=65535, description="127.0.0.1 port of the Flower SuperLink behind the front door (0 = pick at start)"
    )
    relay_port: int = Field(9200, ge=1, le=65535)
    min_parties: int = Field(2, ge=1)
    liveness_timeout_s: float = Field(
        10.0, gt=0, description="a party whose last heartbeat is older than this is not live; its running job fails"
    )
    party_wait_s: float = Field(
        30.0, ge=0, description="how long a new run waits for a party that is not live before failing naming it"
    )
    reconnect_window_s: float = Field(
        30.0, ge=0, le=3600,
        description="how long the relay holds a party's place after its data-plane stream drops (0 = fail at once)",
    )

    _n = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))


class PartyEntry(_Strict):
    name: str
    certificate: Path = Field(description="the party's federation certificate (public)")
    flower_public_key: Path = Field(description="the party's SuperNode public key (OpenSSH format)")

    _n = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))


class CoordinatorConfig(_File):
    federation: FederationSection
    coordinator: CoordinatorSection
    parties: list[PartyEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_parties(self) -> CoordinatorConfig:
        seen: set[str] = set()
        for p in self.parties:
            if p.name in seen:
                raise ValueError(f"party '{p.name}' is listed twice in [[parties]]")
            seen.add(p.name)
        return self

    @property
    def flower_address(self) -> str:
        return f"{self.coordinator.host}:{self.coordinator.flower_port}"

    @property
    def relay_address(self) -> str:
        return f"{self.coordinator.host}:{self.coordinator.relay_port}"


# --------------------------------------------------------------------------- party


ColumnKindName = Literal["numeric", "categorical", "ignore"]


class DatasetSection(_Strict):
    """``[datasets.<key>]``: one table of the party and how to read it (``fedcredit/data.py: load_dataset``).

    Why the column keys: a bank's extract has category text, blank cells and sentinels
    ("-999" = not recorded).  ``columns`` declares a feature's kind (``numeric``,
    ``categorical``, or ``ignore`` = not a feature); undeclared features are inferred by
    the loader (``fedcredit party schema`` prints and saves what it infers, for editing).
    ``missing_values`` are extra feature cells read as missing (empty cells and NaN always
    are); the id and label columns stay strict.  ``schema_file``: a saved schema (TOML with
    ``[columns]`` and ``missing_values``); this section's own keys take precedence over it.
    """

    path: Path
    id_column: str | None = "id"
    label_column: str | None = None
    feature_columns: list[str] | None = None
    columns: dict[str, ColumnKindName] = Field(default_factory=dict, description="feature -> numeric|categorical|ignore")
    missing_values: list[str] = Field(default_factory=list, description='sentinels read as missing, e.g. ["-999", "NA"]')
    schema_file: Path | None = Field(None, description="saved schema (fedcredit party schema --write) to start from")

    @model_validator(mode="after")
    def _columns_consistent(self) -> DatasetSection:
        for c in (self.id_column, self.label_column):
            if c and c in self.columns:
                raise ValueError(f"columns: '{c}' is the id/label column; its kind is fixed (remove it from columns)")
        if self.feature_columns is not None:
            ignored = [c for c in self.feature_columns if self.columns.get(c) == "ignore"]
            if ignored:
                raise ValueError(f"feature_columns lists {ignored}, which columns declares 'ignore'")
        if any(not v.strip() for v in self.missing_values):
            raise ValueError("missing_values: an empty sentinel (empty cells are always missing)")
        return self


class DatasetSchemaFile(_Strict):
    """A saved dataset schema (``fedcredit party schema --write``): what a ``schema_file`` points at."""

    columns: dict[str, ColumnKindName] = Field(default_factory=dict)
    missing_values: list[str] = Field(default_factory=list)


class PartySection(_Strict):
    name: str
    role: str = "bank"
    identity_dir: Path
    state_dir: Path
    runtime_port: int = Field(0, ge=0, le=65535, description="Flower SuperNode's local runtime API port (0 = pick)")

    _n = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))


class PartialRateSection(_Strict):
    """``[scoring.partial_rate]``: how many ids a passive party answers per caller (token bucket + daily quota).

    Why: each answer tells the label party something about a customer the passive party
    holds; the limits bound how fast and how much of that a caller can pull.  Size them
    to the expected application volume; a refusal is RESOURCE_EXHAUSTED (``RateLimited``).
    """

    ids_per_second: float = Field(100.0, gt=0, description="sustained ids per second per caller")
    burst: int = Field(1000, ge=1, description="bucket size: ids answerable at once; also the largest batch answered")
    ids_per_day: int = Field(100_000, ge=1, description="ids per caller per UTC day")


class ScoringSection(_Strict):
    """The party daemon's scoring service (``party/scoring.py``)."""

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 = pick a free port")
    dataset: str | None = Field(None, description="[datasets] key whose rows a passive party scores by id")
    peers: dict[str, str] = Field(default_factory=dict, description="passive party name -> its scoring host:port")
    deadline_ms: float = Field(500.0, gt=0, description="per-request deadline for every passive party's answer")
    fallback_version: str | None = Field(None, description="label-party-only model version used when a passive party fails")
    decision_log: Path | None = Field(None, description="JSONL audit log of decisions (default <state_dir>/decisions.jsonl)")
    workers: int = Field(16, ge=1, le=256)
    callers: list[str] = Field(
        default_factory=list,
        description="certificate names allowed to call Score/ScoreBatch (default: none; the coordinator's never)",
    )
    partial_rate: PartialRateSection = Field(default_factory=PartialRateSection)

    @field_validator("callers")
    @classmethod
    def _callers(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or name != name.strip():
                raise ValueError(f"caller {name!r} is not a certificate name")
        return list(dict.fromkeys(v))


class CoordinatorLink(_Strict):
    flower_address: str
    relay_address: str = Field(description="the relay this party dials (host:port; may be a proxy in front of it)")
    reconnect_window_s: float = Field(
        30.0, ge=0, le=3600,
        description="how long this party keeps trying to resume a dropped data-plane stream (0 = fail at once)",
    )
    heartbeat_interval_s: float = Field(
        2.0, gt=0, le=60, description="how often the daemon tells the coordinator it is alive (relay_address)"
    )


class DatasetPolicy(_Strict):
    """What a job may read from one dataset: every column it uses (id, label and features) must be listed."""

    columns: list[str] = Field(min_length=1, description="columns a job may use: id, label, features")

    @field_validator("columns")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a column is listed twice")
        return v


class PolicySection(_Strict):
    """``[policy]``: what this party's data may be used for (checked at the party for every job call).

    Deny by default: a partner, job type, dataset or column that is not listed is refused,
    and an absent ``[policy]`` allows nothing.  ``approval = "manual"`` (the default) makes
    every job wait for ``fedcredit party jobs approve``; ``"auto"`` lets these rules decide.
    """

    approval: Literal["manual", "auto"] = "manual"
    partners: list[str] = Field(default_factory=list, description="parties this party may run a job with")
    job_types: list[Literal["horizontal", "vertical-lr", "secureboost"]] = Field(default_factory=list)
    datasets: dict[str, DatasetPolicy] = Field(default_factory=dict, description="dataset key -> allowed columns")
    min_intersection: int = Field(100, ge=1, description="vertical jobs: refuse a PSI intersection smaller than this")
    approval_expiry_s: float = Field(86400.0, gt=0, le=30 * 86400,
                                     description="how long a job waits for a person's approval before it expires")
    run_lifetime_s: float = Field(2 * 86400.0, gt=0, le=30 * 86400,
                                  description="how long after acceptance a run's calls are still served")

    @field_validator("partners")
    @classmethod
    def _partners(cls, v: list[str]) -> list[str]:
        for p in v:
            _check_name(p)
        return v


class ComputeSection(_Strict):
    """[compute]: the cores a party gives its HE work (fedcredit.compute; docs/scale.md "Cores")."""

    workers: int = Field(0, ge=0, le=4096, description="worker processes (or Ray actors) for HE work; 0 = all cores")
    engine: Literal["inline", "processes", "ray"] = Field(
        "processes", description="inline (this process), processes (local workers) or ray (pip install 'fedcredit[ray]')")
    ray_address: str | None = Field(None, min_length=1,
                                    description="host:port of an existing Ray cluster to join (engine = 'ray')")

    @model_validator(mode="after")
    def _address_needs_ray(self) -> ComputeSection:
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError(f"ray_address is set but engine is '{self.engine}' (expected 'ray': only Ray joins a cluster)")
        return self

    def pool(self, party: str) -> WorkerPool:
        """The worker pool this section describes (errors name ``party``)."""
        return WorkerPool(self.workers, self.engine, ray_address=self.ray_address, party=party)


class PartyConfig(_File):
    party: PartySection
    coordinator: CoordinatorLink
    datasets: dict[str, DatasetSection] = Field(default_factory=dict)
    compute: ComputeSection = Field(default_factory=ComputeSection, description="[compute]: cores for HE work")
    scoring: ScoringSection | None = None
    decision: DecisionPolicy | None = Field(None, description="[decision] policy (fedcredit.decision)")
    policy: PolicySection = Field(default_factory=PolicySection, description="[policy]: what jobs may use this data")

    @model_validator(mode="after")
    def _policy_datasets(self) -> PartyConfig:
        unknown = sorted(set(self.policy.datasets) - set(self.datasets))
        if unknown:
            raise ValueError(f"[policy.datasets] names dataset(s) {unknown} that [datasets] does not define")
        if self.party.name in self.policy.partners:
            raise ValueError(f"[policy].partners lists this party itself ('{self.party.name}')")
        return self

    def dataset(self, key: str) -> DatasetSection:
        if key not in self.datasets:
            raise ConfigError(
                f"party '{self.party.name}': job asks for dataset '{key}', but its party config only "
                f"defines [datasets.{{{', '.join(sorted(self.datasets)) or ''}}}]"
            )
        return self.datasets[key]


# --------------------------------------------------------------------------- job


class JobSection(_Strict):
    name: str = "job"
    type: Literal["horizontal", "vertical-lr", "secureboost"] = "horizontal"
    parties: list[str]
    min_parties: int | None = Field(None, ge=1)
    train_dataset: str = "train"
    test_dataset: str | None = "test"
    label_party: str | None = None
    round_timeout_s: float = Field(600.0, gt=0)

    @field_validator("parties")
    @classmethod
    def _parties(cls, v: list[str]) -> list[str]:
        for p in v:
            _check_name(p)
        if len(set(v)) != len(v):
            raise ValueError("a party is listed twice")
        if len(v) < 2:
            raise ValueError("a federated job needs at least 2 parties")
        return v


class ControlSection(_Strict):
    address: str | None = None
    identity_dir: Path | None = None
    name: str = "operator"


class JobConfig(_File):
    """A job file.  ``[model]`` is validated by the schema of ``[job].type`` (:mod:`fedcredit.params`)."""

    job: JobSection
    model: ModelTable
    control: ControlSection = Field(default_factory=ControlSection)

    @model_validator(mode="before")
    @classmethod
    def _tag_model(cls, data: Any) -> Any:
        """Tag ``[model]`` with ``[job].type`` so the matching schema validates it (and only it)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        job = data.get("job") if isinstance(data.get("job"), dict) else {}
        jtype = job.get("type", "horizontal") if isinstance(job, dict) else "horizontal"
        model = data.get("model", {})
        if isinstance(model, dict):
            model = dict(model)
            if model.get("type", jtype) != jtype:
                raise ValueError(f"[model].type = {model['type']!r} disagrees with [job].type = {jtype!r}")
            if jtype in JOB_TYPES:
                model["type"] = jtype
        data["model"] = model
        return data

    @model_validator(mode="after")
    def _min(self) -> JobConfig:
        if self.job.min_parties is not None and self.job.min_parties > len(self.job.parties):
            raise ValueError(
                f"[job].min_parties = {self.job.min_parties} exceeds the {len(self.job.parties)} parties in [job].parties"
            )
        if self.job.type != "horizontal":
            if not self.job.label_party:
                raise ValueError(f"a {self.job.type} job needs [job].label_party")
            if self.job.label_party not in self.job.parties:
                raise ValueError(f"[job].label_party '{self.job.label_party}' is not in [job].parties {self.job.parties}")
        return self


# --------------------------------------------------------------------------- loading

T = TypeVar("T", bound=BaseModel)

_PATH_FIELDS = {"ca_dir", "identity_dir", "state_dir", "path", "flower_public_key", "certificate", "party_config",
                "signing_key", "decision_log", "schema_file"}


def _resolve_paths(obj: Any, base: Path) -> Any:
    if isinstance(obj, dict):
        return {
            k: (str((base / v).resolve()) if k in _PATH_FIELDS and isinstance(v, str)
                else v if k == "columns" else _resolve_paths(v, base))  # column names are data, not config keys
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_resolve_paths(v, base) for v in obj]
    return obj


def parse_config(data: dict[str, Any], model: type[T], source: Path) -> T:
    """Validate an already-parsed TOML table; errors name ``source`` and the ``[section].field``."""
    cfg = validate(model, _resolve_paths(data, source.parent), source)
    if isinstance(cfg, _File):
        cfg._source = source
    return cfg


def load_config(path: str | Path, model: type[T]) -> T:
    """Read and validate a TOML config file."""
    p = Path(path)
    return parse_config(read_toml(p), model, p.resolve())


def parse_job_text(text: str, source: str = "job.toml") -> JobConfig:
    """Validate a job file's text (as submitted to the coordinator)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse_config(data, JobConfig, Path(source))


def check_port_free(cfg: _File, section: str, field: str, host: str, port: int) -> None:
    """Refuse to start on a port another process holds: ``file: [section].field: port P on H is already in use``.

    Why a probe: gRPC servers bind with SO_REUSEPORT, so a second server on a taken port
    would "succeed" and share it; and a subprocess (the SuperLink, a SuperNode) would fail
    only later, in its own log.  The probe binds like a plain listener (SO_REUSEADDR, so a
    restart over TIME_WAIT connections is fine) and lets the port go at once.  Port 0 is
    never in use."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"{cfg.where(section, field)}: cannot listen on {host}:{port}: {e.strerror}") from None
    for family, kind, proto, _, addr in infos[:1]:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                why = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
                raise ConfigError(f"{cfg.where(section, field)}: port {port} on {host} {why}") from None


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    return load_config(path, CoordinatorConfig)


def load_party_config(path: str | Path) -> PartyConfig:
    return load_config(path, PartyConfig)


def load_job_config(path: str | Path) -> JobConfig:
    return load_config(path, JobConfig)
