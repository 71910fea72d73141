"""Every protocol's hyper-parameters as one validated schema each (pydantic), and a job's ``[model]`` table.

Why one module of schemas, apart from the protocol code: the job file is validated
at the CLI, at the coordinator and again at every party, with the same
``file: [model].field: message`` errors — so the coordinator's config loader must know
each protocol's parameters without importing the protocols' numeric and crypto code
(FATE keeps its ``param`` classes apart for the same reason).  A protocol imports
its own schema from here and uses it as its config; there is no second validator
beside it.  Built from an untrusted mapping (``from_dict``: a peer's setup message),
a schema raises :class:`~fedcredit.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedcredit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "Params", "StrictModel", "format_errors", "read_toml", "validate", "FAMILY_DEFAULTS", "HorizontalParams", "HorizontalJob", "VerticalJobParams",
    "VerticalLRConfig", "SecureBoostConfig", "HorizontalModel", "VerticalLRModel", "SecureBoostModel", "ModelTable",
    "JOB_TYPES", "BinningParams", "ScorecardParams", "DPParams", "HorizontalDP", "LabelDP",
]


def _where(loc: Sequence[Any], data: Any, section: str | None) -> str:
    """``[a.b].c`` for an error location: the TOML tables it passes through (mappings in ``data``) go in the
    brackets, the rest is the field; a ``[[list]]`` entry and a list element are named by number.

    Without ``data`` the first element is the section (or ``section`` is, for a bare schema)."""
    loc = list(loc)
    if section is not None:
        return f"[{section}]" + ("." + ".".join(str(x) for x in loc if not isinstance(x, int)) if loc else "") \
            + _entry(loc)
    if not loc:
        return "(top level)"
    tables: list[str] = []
    array: str | None = None  # [[name]] of an array of tables
    entry: int | None = None
    node, i = data, 0
    while i < len(loc) and isinstance(node, Mapping) and isinstance(loc[i], str):
        nxt = node.get(loc[i])
        if isinstance(nxt, Mapping):
            tables.append(loc[i])
            node, i = nxt, i + 1
        elif (isinstance(nxt, list) and i + 1 < len(loc) and isinstance(loc[i + 1], int)
              and 0 <= loc[i + 1] < len(nxt) and isinstance(nxt[loc[i + 1]], Mapping)):
            array, entry = ".".join([*tables, loc[i]]), loc[i + 1]
            tables = []
            node, i = nxt[loc[i + 1]], i + 2
        else:
            break
    if array is None and not tables:  # a missing section or a top-level key
        tables, i = [str(loc[0])], 1
    rest = loc[i:]
    head = f"[[{array}]]" + (f" (entry {entry + 1})" if entry is not None else "") if array is not None else ""
    if tables:
        head = (head + "." if head else "") + f"[{'.'.join(tables)}]" if not array else head + "." + ".".join(tables)
    fields = [str(x) for x in rest if not isinstance(x, int)]
    return head + ("." + ".".join(fields) if fields else "") + _entry(rest)


def _entry(loc: Sequence[Any]) -> str:
    idx = [x for x in loc if isinstance(x, int)]
    return f" (entry {idx[0] + 1})" if idx else ""


def _message(e: Mapping[str, Any]) -> str:
    got = e.get("input")
    if e.get("type") == "extra_forbidden":
        return "unknown section (typo?)" if isinstance(got, Mapping) else "unknown field (typo?)"
    if e.get("type") == "missing":
        return "required, but missing"
    if isinstance(got, _NotANumber):
        return f"expected {got.kind}, got {got.value!r}"
    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
    if "got" not in msg and got is not None and not isinstance(got, Mapping | list | tuple) and str(got) not in msg:
        shown = repr(got)
        msg += f" (got {shown[:60] + '…' if len(shown) > 60 else shown})"
    return msg


def format_errors(err: ValidationError, source: str, section: str | None = None, data: Any = None) -> str:
    """``source: [section].field: message`` lines of a validation error (one per problem).

    ``data`` (the parsed TOML) lets nested tables be named as written: ``[decision.thresholds].aprove``."""
    lines = []
    for e in err.errors():
        loc = list(e.get("loc", ()))
        if len(loc) > 1 and loc[0] == "model" and loc[1] in JOB_TYPES:
            del loc[1]  # the discriminated union's tag (the job type), not a field
        where = _where(loc, data, section)  # a whole-file rule names its own sections in its message
        lines.append(f"{source}: {_message(e)}" if where == "(top level)" else f"{source}: {where}: {_message(e)}")
    return "\n".join(lines)


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is a ConfigError naming it.  The one TOML reader."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found" if not p.exists() else f"{p}: {what} is not a file")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not valid TOML: the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what}: {e.strerror}") from None


def validate(model: type[M], data: Any, source: str | Path) -> M:
    """The one strict validation of a parsed table: errors are ``source: [section].field: message`` lines."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, str(source), data=data)) from None


def _plain_number(annotation: Any) -> bool:
    """True for ``int``, ``float`` and their optional forms: fields that must be written as numbers."""
    args = [a for a in get_args(annotation) if a is not type(None)] if get_args(annotation) else [annotation]
    return bool(args) and all(a in (int, float) for a in args)


class StrictModel(BaseModel):
    """Every config table's base: unknown keys are errors, and a number must be written as a number.

    pydantic's lax mode would read ``approve = "560"`` or ``n_trees = true`` as numbers; a
    config that says that is more likely a mistake than an intent, so it is refused."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        """A text or boolean value for a number field is replaced by a marker that fails that field's own type
        check, so it is reported with every other problem of the file (and said as ``expected a number``)."""
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for name, f in cls.model_fields.items():
            key = f.alias or name
            v = out.get(key)
            if isinstance(v, bool | str) and _plain_number(f.annotation):
                out[key] = _NotANumber(v, "an integer" if _is_int(f.annotation) else "a number")
        return out


class _NotANumber:
    """What :class:`StrictModel` puts in place of ``"560"`` or ``true`` for a number field (see ``_message``)."""

    def __init__(self, value: Any, kind: str) -> None:
        self.value, self.kind = value, kind

    def __repr__(self) -> str:
        return repr(self.value)


def _is_int(annotation: Any) -> bool:
    return annotation is int or int in get_args(annotation)


class Params(StrictModel):
    """A protocol's parameters: unknown keys are errors, values are checked once, here."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: How errors from direct construction name their source (e.g. "secureboost config").
    what: ClassVar[str] = "parameters"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Self:
        """Build from an untrusted mapping (a peer's setup message, a hand-written table): a ConfigError
        names every bad field.  (Keyword construction raises pydantic's ValidationError, which names them too.)"""
        try:
            return cls.model_validate(dict(d or {}))
        except ValidationError as e:
            raise ConfigError(format_errors(e, cls.what, "model")) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def narrow(self, cls: type[Params]) -> Any:
        """This table's values for the fields of ``cls`` only (e.g. a protocol config from a job's [model])."""
        return cls(**{k: getattr(self, k) for k in cls.model_fields})



# --------------------------------------------------------------------------- [model.dp]: differential privacy


class DPParams(Params):
    """``[model.dp]``: the Gaussian mechanism's noise, as a noise multiplier or a target ε (docs/privacy.md).

    Exactly one of ``noise_multiplier`` (noise std / sensitivity) and ``epsilon`` (the noise
    is calibrated by the accountant, fedcredit/dp.py, so the planned releases spend at most
    this ε at ``delta``)."""

    what = "[model.dp]"

    noise_multiplier: float | None = Field(None, gt=0, le=10_000, allow_inf_nan=False)
    epsilon: float | None = Field(None, gt=0, le=10_000, allow_inf_nan=False)
    delta: float = Field(1e-5, gt=0, le=0.01, allow_inf_nan=False, description="well below 1/(rows or banks)")

    @model_validator(mode="after")
    def _one_noise(self) -> DPParams:
        if (self.noise_multiplier is None) == (self.epsilon is None):
            raise ValueError("set exactly one of [model.dp].noise_multiplier (noise std / sensitivity) and "
                             "[model.dp].epsilon (a target the noise is calibrated to)"
                             + (f"; got both ({self.noise_multiplier}, {self.epsilon})"
                                if self.epsilon is not None else "; got neither"))
        return self


class HorizontalDP(DPParams):
    """Client-level DP of a horizontal job: each bank clips its round update to L2 norm ``clip`` and adds noise."""

    clip: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False, description="L2 bound of one bank's round update")


class LabelDP(DPParams):
    """Label DP of a vertical job: noise on every label-derived per-row value the label party computes."""


# --------------------------------------------------------------------------- horizontal


def _poly_degree(v: int) -> int:
    if v not in (4096, 8192, 16384, 32768):
        raise ValueError(f"the CKKS polynomial degree must be 4096, 8192, 16384 or 32768, got {v}")
    return v


def _coeff_bits(v: list[int]) -> list[int]:
    if len(v) < 2 or any(not 10 <= b <= 60 for b in v):
        raise ValueError(f"CKKS coefficient moduli need at least 2 sizes, each 10..60 bits, got {v}")
    return v


FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "lr": {"lr": 1.0, "batch_size": 1024, "local_epochs": 3, "prox_mu": 0.1},
    "mlp": {"lr": 0.2, "batch_size": 128, "local_epochs": 2, "prox_mu": 0.01},
}


class HorizontalParams(Params):
    """Encrypted FedAvg / FedProx hyper-parameters (a horizontal job's ``[model]``)."""

    what = "horizontal job"

    key_holder: str | None = None  # default: the first party
    family: Literal["lr", "mlp"] = "lr"
    algorithm: Literal["fedavg", "fedprox"] = "fedavg"
    rounds: int = Field(10, ge=1, le=10_000)
    # family-dependent: unset or None takes FAMILY_DEFAULTS[family] (the declared defaults are the "lr" family's)
    local_epochs: int = Field(3, ge=1, le=1000)
    lr: float = Field(1.0, gt=0, le=100, allow_inf_nan=False)
    batch_size: int = Field(1024, ge=1, le=10_000_000)
    l2: float = Field(1e-4, ge=0, allow_inf_nan=False)  # objective: mean log-loss + l2/2·|w|² (intercept not penalized)
    # "lr" family: after the FedAvg rounds, this many Newton rounds on the pooled gradient, Hessian and loss (each
    # bank's sums at the same point, added under CKKS) reach the pooled optimum that FedAvg's fixed-step SGD stops
    # short of; a step that does not lower the pooled loss is retried with more damping (docs/horizontal.md)
    newton_rounds: int = Field(8, ge=0, le=1000)
    prox_mu: float = Field(0.1, ge=0, allow_inf_nan=False, description="FedProx proximal weight (fedprox only)")
    hidden: int = Field(16, ge=1, le=4096)  # mlp only
    seed: int = 0
    standardize: bool = True
    feature_columns: list[str] | None = None  # None: the party's configured / all non-id, non-label columns
    # Real tables (fedcredit.data.OneHotEncoding): agreed in the job so every bank encodes identically and no
    # bank reveals its own vocabulary.  A categorical feature needs its categories here (one-hot + a
    # "(missing)" column); a numeric feature that may be missing is listed in missing_indicators
    # (a 0/1 column "<f>:missing", and missing_fill in its place).
    categories: dict[str, list[str]] = Field(default_factory=dict, description="categorical feature -> agreed categories")
    missing_indicators: list[str] = Field(default_factory=list, description="numeric features that may be missing")
    missing_fill: float = Field(0.0, allow_inf_nan=False, description="value put in a missing numeric cell")
    hist_bins: int = Field(1000, ge=2, le=100_000)
    # Aggregation needs additions only (no multiplicative depth), so a small context is
    # enough: N=4096 with a 100-bit modulus is 128-bit secure, holds 2048 values per
    # ciphertext (81 KB instead of 332 KB at N=8192), and its ~1e-2 absolute noise on
    # sums of n_k-weighted parameters is ~1e-6 after dividing by the total weight.
    ckks_poly_modulus_degree: int = 4096  # a power of two, 4096..32768 (checked below)
    ckks_coeff_mod_bit_sizes: list[int] = Field(default_factory=lambda: [40, 20, 40])
    ckks_scale_bits: int = Field(20, ge=10, le=60)
    dp: HorizontalDP | None = None  # [model.dp]: client-level differential privacy (off without the table)
    # Secure aggregation (crypto/secagg.py): the coordinator with fewer than this many banks learns nothing about a
    # bank's vectors beyond their sum; also the survivors needed to unmask a round after a dropout.  None: ceil(n/2)
    secagg_threshold: int | None = Field(None, ge=1, le=255)

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        """Unset (or None) family-dependent values take the family's default."""
        if isinstance(data, dict):
            data = dict(data)
            for k, v in FAMILY_DEFAULTS.get(str(data.get("family", "lr")), {}).items():
                if data.get(k) is None:
                    data[k] = v
        return data

    @field_validator("ckks_poly_modulus_degree")
    @classmethod
    def _n(cls, v: int) -> int:
        return _poly_degree(v)

    @model_validator(mode="after")
    def _encoding(self) -> HorizontalParams:
        for f, cats in self.categories.items():
            if not cats or len(set(cats)) != len(cats):
                raise ValueError(f"categories.{f}: expected a non-empty list of distinct categories, got {cats}")
        both = sorted(set(self.categories) & set(self.missing_indicators))
        if both:
            raise ValueError(f"{both} are in both categories and missing_indicators (a categorical's missing "
                             "values get their own one-hot column already)")
        if self.dp is not None and self.newton:
            raise ValueError(f"[model.dp] needs [model].newton_rounds = 0 (got {self.newton_rounds}): Newton rounds "
                             "send each bank's exact gradient and Hessian sums, which are neither clipped nor noised")
        return self

    @field_validator("ckks_coeff_mod_bit_sizes")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        return _coeff_bits(v)

    @property
    def mu(self) -> float:
        return float(self.prox_mu) if self.algorithm == "fedprox" else 0.0

    @property
    def newton(self) -> int:
        """Newton rounds this job runs (the "lr" family only)."""
        return int(self.newton_rounds) if self.family == "lr" else 0

    @property
    def total_rounds(self) -> int:
        """FedAvg rounds, then Newton rounds: every one is a ``fit`` hop."""
        return int(self.rounds) + self.newton


class HorizontalJob(HorizontalParams):
    """Everything every party of a horizontal run must agree on; sent to each party in ``setup``."""

    run_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    parties: list[str] = Field(min_length=1)
    min_parties: int | None = Field(None, ge=1)  # None: every party must finish

    @model_validator(mode="after")
    def _consistent(self) -> HorizontalJob:
        if len(set(self.parties)) != len(self.parties):
            raise ValueError(f"parties must be distinct, got {self.parties}")
        if self.key_holder is not None and self.key_holder not in self.parties:
            raise ValueError(f"key_holder '{self.key_holder}' is not one of the parties {self.parties}")
        if self.min_parties is not None and self.min_parties > len(self.parties):
            raise ValueError(f"min_parties must be between 1 and {len(self.parties)}, got {self.min_parties}")
        if self.secagg_threshold is not None and self.secagg_threshold > len(self.parties):
            raise ValueError(f"secagg_threshold must be between 1 and {len(self.parties)} (the parties), "
                             f"got {self.secagg_threshold}")
        if self.min_parties is not None and self.min_parties < self.threshold:
            raise ValueError(f"min_parties ({self.min_parties}) is below the secure-aggregation threshold "
                             f"({self.threshold}): a round after that many dropouts could not be unmasked; "
                             "raise min_parties or lower secagg_threshold")
        if self.max_dropouts > 0 and self.required < self.view_quorum:
            raise ValueError(f"min_parties ({self.required}) is below the survivor-set consistency quorum "
                             f"({self.view_quorum} = max(secagg_threshold, a majority of the {len(self.parties)} "
                             "parties)): a round after that many dropouts could not be unmasked; raise min_parties")
        return self

    @property
    def view_quorum(self) -> int:
        """Banks that must attest one survivor set before any reveals a mask key share (docs/horizontal.md, 4a).

        A strict majority: two different sets attested by a majority each share an attester, and an
        honest bank attests one set per aggregation.  (Only t attesters would let a lying coordinator
        split the banks into two groups of t, e.g. 4 banks with t = 2.)"""
        return max(self.threshold, len(self.parties) // 2 + 1)

    @property
    def threshold(self) -> int:
        """Shamir threshold t of secure aggregation (default ceil(n/2))."""
        return self.secagg_threshold if self.secagg_threshold is not None else (len(self.parties) + 1) // 2

    @property
    def max_dropouts(self) -> int:
        """Banks that may drop out of the run (n - min_parties); 0 means no self-masks and no unmask hops."""
        return len(self.parties) - self.required

    @property
    def holder(self) -> str:
        return self.key_holder or self.parties[0]

    @property
    def required(self) -> int:
        return len(self.parties) if self.min_parties is None else int(self.min_parties)


# --------------------------------------------------------------------------- vertical


class VerticalJobParams(Params):
    """What every vertical job adds to its protocol's parameters: the train/test split and PSI."""

    test_fraction: float | None = Field(None, ge=0.0, lt=1.0, description="hash split; default 0.2 without test ids")
    split_seed: int | str = 0
    psi_min_size: int = Field(1, ge=1)
    psi_batch_size: int = Field(50_000, ge=1, le=10_000_000)  # = protocols.psi.DEFAULT_BATCH

    @field_validator("split_seed", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be an integer or a string")
        return v


class VerticalLRConfig(Params):
    """Vertical LR hyper-parameters (decided by the label party and sent to the passives) and local safety knobs."""

    what = "vertical LR"

    learning_rate: float = Field(0.25, gt=0, le=100, allow_inf_nan=False)
    momentum: float = Field(0.8, ge=0, lt=1)  # Nesterov
    precondition: bool = True  # scale each party's step by its own fixed Hessian bound (X^T X/4n + l2)^-1
    l2: float = Field(1e-3, ge=0, allow_inf_nan=False)  # objective: mean log-loss + l2/2 · |w|^2 (intercept not penalized)
    max_epochs: int = Field(10, ge=1, le=10_000)  # mini-batch epochs: the fast first phase (a warm start)
    # then full-batch steps (one per epoch) until the training loss settles: mini-batch noise and early stopping on the
    # validation loss stop short of the optimum, full-batch preconditioned Nesterov steps reach it (docs/vertical_lr.md)
    full_batch_steps: int = Field(300, ge=0, le=100_000)  # at most this many; 0 = mini-batch phase only (the old optimiser)
    full_batch_learning_rate: float = Field(1.0, gt=0, le=100, allow_inf_nan=False)  # divided by the number of parties
    full_batch_momentum: float = Field(0.9, ge=0, lt=1)  # Nesterov; each party restarts its own block (g·v > 0)
    tol: float = Field(1e-6, gt=0, lt=1, allow_inf_nan=False)  # stop when the training log-loss changes by < tol (relative)
    # in 3 successive full-batch steps; the validation loss is only a divergence guard there
    batch_size: int = Field(4096, ge=0)  # at most this many rows per step; 0 = full batch.  4096 = one ciphertext at N=8192
    steps_per_epoch: int = Field(6, ge=1, le=100_000)  # smaller sets get smaller batches (>= min_batch) so an epoch progresses
    validation_fraction: float = Field(0.1, ge=0, lt=0.5)
    patience: int = Field(2, ge=1, le=1000)  # epochs without validation-loss improvement before stopping; each one reverts
    # to the best weights and halves the learning rate (all parties, on the label party's instruction)
    seed: int = 0
    poly_modulus_degree: int = 8192  # a power of two, 4096..32768 (checked below)
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = Field(40, ge=10, le=60)
    min_batch: int = Field(512, ge=1)  # label party refuses smaller batches: a passive's gradient must aggregate many rows
    mask_bound: float = Field(2.0**30, gt=0, allow_inf_nan=False)  # passive: slot masks are uniform in [-mask_bound, mask_bound]
    tag_prefix: str = Field("vlr", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    timeout: float | None = Field(None, gt=0)  # per message; None = transport default
    dp: LabelDP | None = None  # [model.dp]: label DP, noise on every residual (off without the table)
    # "shared" (the default): each passive block's weights are additive shares (passive a_k + label party b_k), never
    # in plaintext at the passive; its final part is Enc(w_k) under the label party's key (docs/vertical_lr.md, "Shared
    # weights"). "plaintext": the passive holds its gradient and weights (half the time, a fifth of the bytes, but its
    # gradients and model part rank the labels: attack AUC 0.70 on the benchmark split, docs/attacks.md)
    passive_weights: Literal["plaintext", "shared"] = "shared"

    _n = field_validator("poly_modulus_degree")(classmethod(lambda cls, v: _poly_degree(v)))
    _bits = field_validator("coeff_mod_bit_sizes")(classmethod(lambda cls, v: tuple(_coeff_bits(list(v)))))

    @model_validator(mode="after")
    def _batch(self) -> VerticalLRConfig:
        if 0 < self.batch_size < self.min_batch:
            raise ValueError(
                f"batch_size {self.batch_size} is below min_batch {self.min_batch}; small batches let a "
                "passive party's plaintext gradient reveal individual residuals (labels)")
        if self.dp is not None and self.validation_fraction > 0:
            raise ValueError(f"[model.dp] needs [model].validation_fraction = 0 (got {self.validation_fraction}): "
                             "early stopping on validation labels would send label-derived decisions to the passive "
                             "parties outside the accountant; with label DP the run takes its full schedule")
        return self

    def dp_releases(self) -> int:
        """Times one label enters a released residual: once per mini-batch epoch (its batches are disjoint), once
        per full-batch step.  Label DP runs this fixed schedule (no early stop)."""
        return int(self.max_epochs) + int(self.full_batch_steps)

    def effective_batch(self, n_fit: int) -> int:
        """Rows per step for ``n_fit`` training rows: <= batch_size, >= min_batch, about steps_per_epoch steps."""
        if self.batch_size <= 0:
            return n_fit
        return int(min(self.batch_size, n_fit, max(self.min_batch, -(-n_fit // self.steps_per_epoch))))

    def public(self) -> dict[str, Any]:
        """The part the label party announces to passive parties."""
        keys = ("learning_rate", "momentum", "precondition", "l2", "max_epochs", "batch_size", "validation_fraction",
                "seed", "full_batch_steps", "full_batch_learning_rate", "full_batch_momentum", "passive_weights")
        return {k: getattr(self, k) for k in keys}


def _power_of_two(v: int) -> int:
    if v < 1 or v > 64 or (v & (v - 1)):
        raise ValueError("must be a power of two between 1 and 64 (it must divide the 4096 slots)")
    return v


class SecureBoostConfig(Params):
    """Hyper-parameters (same meaning as XGBoost's) and protocol knobs.

    ``reg_lambda`` defaults to 0 like scikit-learn's HistGradientBoosting ``l2_regularization``
    (5-fold CV on the benchmark's training rows ties it with the best of 0/0.1/1/10).

    ``pack`` is K, the number of split candidates returned per ciphertext (baby-step/giant-step
    slot rotations); 64 returns 7x fewer bytes than 8 for ~10 % more passive time per pass
    (docs/secureboost.md, "Traffic"); ``mask_cache_mb`` bounds the passive party's cache of
    pre-encoded masks (beyond it masks are encoded on the fly, ~4x slower).
    ``min_category_count``: rarer categories (and those beyond the ``n_bins`` most frequent)
    are grouped into one "other" bin, so a split never isolates a handful of rows.
    ``histogram_mode``: ``hide_membership`` (default) — gradients of each computed node are
    encrypted over all rows, so a passive party never learns which rows are in a node (one pass
    over all rows per computed node); ``per_level`` — the label party sends each level's nodes'
    rows once, compacted per node, so a level costs about one pass over at most half the rows
    whatever the number of nodes, and the passive party learns every node's rows (as in FATE and
    SecretFlow).  The default keeps the stronger privacy; docs/secureboost.md has both leakage rows.
    ``passive_splits``: ``hidden`` (default with ``hide_membership``) — the label party names a passive
    party's winning candidate only under encryption and the passive party returns the split's bits
    encrypted (crypto/ckks_select.py), so it never learns which of its candidates won nor the
    partition (its label inference falls to the no-information level, docs/attacks.md); ``revealed``
    (default with ``per_level``, whose node rows reveal the partitions anyway) — the passive party
    learns the winning candidate and answers with the bits in plaintext.
    """

    what = "secureboost config"

    n_trees: int = Field(30, ge=1, le=10_000)
    max_depth: int = Field(3, ge=1, le=16, description="each level doubles the nodes; 16 is already 65,536 leaves")
    n_bins: int = Field(32, ge=2, le=256, description="value bins per feature; missing values get one more bin")
    learning_rate: float = Field(0.3, gt=0, le=1, allow_inf_nan=False)
    reg_lambda: float = Field(0.0, ge=0, allow_inf_nan=False)
    min_child_weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="> 0: an empty child is never a split")
    min_split_gain: float = Field(0.0, ge=0, allow_inf_nan=False)
    min_category_count: int = Field(
        10, ge=1, le=1_000_000,
        description="a category seen in fewer training rows joins its feature's 'other' group (at its owner)")
    histogram_mode: Literal["hide_membership", "per_level"] = "hide_membership"
    passive_splits: Literal["hidden", "revealed"] = "hidden"
    pack: Annotated[int, Field(ge=1)] = 64
    mask_cache_mb: float = Field(1024.0, ge=0, allow_inf_nan=False)
    predict_batch: int = Field(4096, ge=1, le=1_000_000)
    timeout_s: float = Field(600.0, gt=0, allow_inf_nan=False)
    dp: LabelDP | None = None  # [model.dp]: label DP, noise on every gradient (off without the table)

    _pack = field_validator("pack")(classmethod(lambda cls, v: _power_of_two(v)))

    @model_validator(mode="before")
    @classmethod
    def _splits_follow_mode(cls, data: Any) -> Any:
        """Per-level mode shows the passive party every node's rows, and so every split's partition: a config that
        picks it and does not name ``passive_splits`` gets ``"revealed"``; naming ``"hidden"`` is an error below."""
        if isinstance(data, dict) and data.get("histogram_mode") == "per_level" and "passive_splits" not in data:
            return {**data, "passive_splits": "revealed"}
        return data

    @model_validator(mode="after")
    def _hidden_needs_hidden_membership(self) -> Self:
        if self.passive_splits == "hidden" and self.histogram_mode == "per_level":
            raise ValueError("passive_splits = \"hidden\" with histogram_mode = \"per_level\": per-level mode sends "
                             "the passive party every node's rows, which give away each split's partition; use "
                             "histogram_mode = \"hide_membership\" or passive_splits = \"revealed\"")
        return self


class BinningParams(Params):
    """``[model.binning]`` of a vertical LR job: federated binning, WOE/IV and IV selection before the model.

    docs/binning.md.  ``min_bin_size`` below 1 is a fraction of the training rows, from 1 a
    row count; every bin any party reports holds at least that many rows (and at least
    the passive party's own floor, ``protocols.binning.PASSIVE_MIN_BIN_ROWS``).
    ``transform``: ``indicators`` (default) — a passive party one-hot encodes its own bins
    and learns nothing label-derived; ``woe`` — it receives its bins' WOE values.
    """

    what = "binning"

    method: Literal["equal_freq", "optimal"] = "optimal"
    n_bins: int = Field(10, ge=2, le=100, description="equal_freq: value bins per feature")
    n_prebins: int = Field(20, ge=2, le=64, description="optimal: equal-frequency prebins merged from counts (an "
                           "exact O(prebins^3 * max_bins) merge, one ciphertext each)")
    max_bins: int = Field(8, ge=2, le=100, description="optimal: at most this many value bins per feature")
    min_bin_size: float = Field(0.05, gt=0, allow_inf_nan=False)
    monotonic: Literal["none", "ascending", "descending", "auto"] = "auto"
    transform: Literal["woe", "indicators"] = "indicators"
    min_iv: float = Field(0.02, ge=0, allow_inf_nan=False, description="features with a lower IV are dropped")
    only: bool = False  # a binning-only job: PSI, split, binning tables + selection, no model (read IV first)
    tag_prefix: str = Field("bin", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    timeout: float | None = Field(None, gt=0)  # per message; None = the job's round timeout


# --------------------------------------------------------------------------- a job's [model] table

JOB_TYPES = ("horizontal", "vertical-lr", "secureboost")


class HorizontalModel(HorizontalParams):
    type: Literal["horizontal"] = "horizontal"


class ScorecardParams(Params):
    """``[model.scorecard]`` of a binned vertical LR job: each party turns its own LR block into points per bin.

    The PDO scale of ``fedcredit.decision.ScoreScale`` (same defaults): ``base_points`` at
    ``base_odds``:1 good:bad, ``pdo`` more points each time the odds double.  docs/scorecard.md.
    """

    what = "scorecard"

    base_points: float = Field(600.0, allow_inf_nan=False)
    base_odds: float = Field(50.0, gt=0, allow_inf_nan=False)
    pdo: float = Field(20.0, gt=0, allow_inf_nan=False)


class VerticalLRModel(VerticalLRConfig, VerticalJobParams):
    type: Literal["vertical-lr"] = "vertical-lr"
    binning: BinningParams | None = None  # [model.binning]: bin, WOE/IV-select and transform before the LR
    scorecard: ScorecardParams | None = None  # [model.scorecard]: points per bin at each party (needs binning)

    @model_validator(mode="before")
    @classmethod
    def _scorecard_weights(cls, data: Any) -> Any:
        """A scorecard's points per bin at a passive party are its weights in plaintext: a job asking for one and not
        naming ``passive_weights`` gets ``"plaintext"`` (and the privacy report says so); naming ``"shared"`` is an
        error below."""
        if isinstance(data, dict) and data.get("scorecard") is not None and "passive_weights" not in data:
            return {**data, "passive_weights": "plaintext"}
        return data

    @model_validator(mode="after")
    def _scorecard_needs_bins(self) -> VerticalLRModel:
        if self.scorecard is not None and self.binning is None:
            raise ValueError("[model.scorecard] needs [model.binning]: a scorecard gives points per bin")
        if self.scorecard is not None and self.binning is not None and getattr(self.binning, "only", False):
            raise ValueError("[model.scorecard] with [model.binning].only = true: binning alone trains no LR, "
                             "so there are no points")
        if self.scorecard is not None and self.passive_weights == "shared":
            raise ValueError("[model.scorecard] with [model].passive_weights = \"shared\": a passive party's points per "
                             "bin are its plaintext weights, which shared mode never gives it; use "
                             "passive_weights = \"plaintext\" for a scorecard")
        return self


class SecureBoostModel(SecureBoostConfig, VerticalJobParams):
    type: Literal["secureboost"] = "secureboost"
    binning: BinningParams | None = None  # [model.binning]: IV selection before the trees (features stay raw)


#: A job's ``[model]``: which schema applies is decided by ``[job].type`` (fedcredit.config.JobConfig tags it).
ModelTable = Annotated[HorizontalModel | VerticalLRModel | SecureBoostModel, Field(discriminator="type")]

