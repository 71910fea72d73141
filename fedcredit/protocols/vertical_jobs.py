"""A vertical job at one party over the real deployment path: PSI, alignment, split, model role, evaluation.

Why this module: the coordinator launches a vertical job with ONE Flower message per
party ("vertical.run"); everything else — PSI and the whole training conversation —
runs party-to-party over the data plane (``party.dataplane.RelayTransport``: mutual
TLS to the coordinator's relay, every payload sealed end-to-end to its receiver).
Flower costs seconds per hop; vertical protocols need hundreds of exchanges.

The party code itself (:func:`run_vertical_party_core`) needs only a :class:`Transport`
and a :class:`VerticalParty`; ``party.clientapp.run_vertical_party`` is the deployment
wrapper that builds the RelayTransport, and ``simulations.vertical_sim`` runs the same
core for every party in one process over ``fedcredit.transport.InMemoryHub``.

What the coordinator gets back is the *public* reply of :func:`run_vertical_party_core`:
sizes, public test metrics (label party only), wall times and byte counts — never
ids, rows, labels, gradients, scores or model parameters.

Test split (decided by ids, so every party cuts the same aligned rows):

* ``[model].test_fraction = f`` (default 0.2 when no test-id list is configured):
  a row is a test row iff ``SHA-256("<split_seed>:<id>")`` read as a fraction of
  2^64 is below ``f``.  Every party computes it alone; the label party also sends
  its bitmask and a passive party refuses a mismatch.
* otherwise, if the label party's config has the dataset named by ``[job].test_dataset``
  (e.g. the agreed list of test customers), its ids are the test ids.  Only the label
  party needs that file: it sends each passive party a bitmask over the common PSI
  order (``vjob/split``), which tells the passive only which of the shared customers
  are held out.

Job-level keys of ``[model]`` (everything else goes to the model's config):
``test_fraction``, ``split_seed``, ``psi_min_size``, ``psi_batch_size``.

Files, under the party's ``state_dir``:

* ``runs/<run_id>/intersection.txt`` — the aligned intersection (owner-only);
* ``models/<run_id>/`` — this party's own model part only (its features' weights or
  split table), and at the label party the evaluation report JSON + ROC/KS PNG and
  ``vertical_job.json`` (the public result);
* ``checkpoints/<run_id>/`` — this party's own state during PSI (``psi_key``, ``psi_batch``: its
  scalar and per batch round its values, dropped once PSI is done), after PSI (stage ``psi``), after each
  SecureBoost tree (``sb``) or vertical LR epoch (``vlr``), at most two per stage
  (:mod:`fedcredit.checkpoint`); deleted when the job ends for good.  With
  ``VerticalParty.resume`` the job agrees with its peers where to continue instead of
  starting over (docs/resume.md).
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from crypto.files import write_text
from fedcredit.checkpoint import CheckpointStore, NoCheckpoint, agree_step
from fedcredit.codec import loads_json
from fedcredit.compute import default_pool
from fedcredit.config import JobConfig
from fedcredit.data import Table, require_numbers
from fedcredit.errors import ConfigError, DataError, PeerAborted, PolicyRefused, ProtocolError
from fedcredit.params import SecureBoostConfig, SecureBoostModel, VerticalLRConfig, VerticalLRModel
from fedcredit.protocols.vertical_common import ids_digest
from fedcredit.transport import CountingTransport, Transport

__all__ = [
    "SplitSpec",
    "Tags",
    "VerticalParty",
    "hash_test_mask",
    "split_spec",
    "model_config",
    "run_vertical_party_core",
    "is_final_failure",
    "resumable_state",
    "PSI_STAGE",
]

DEFAULT_TEST_FRACTION = 0.2


class Tags:
    """The vertical job core's own messages; PSI and the model protocols declare theirs
    (``psi.Tags("psi")``, ``vertical_lr.Tags(tag_prefix)``, ``secureboost.messages.tags``)."""

    SPLIT: Final = "vjob/split"  # label party -> each passive: test-row bitmask over the PSI order + the rule


# --------------------------------------------------------------------------- the party's view


@dataclass(frozen=True)
class VerticalParty:
    """What one party's vertical job needs besides a transport: its name, the job, its own tables, its state dir.

    Why not the deployment's ``PartyRuntime``: the same party code also runs in-process
    (``simulations.vertical_sim``), where there is no identity, no relay and no party config file.
    The job reads no file itself: ``load(key)`` is the party runtime's loader (``fedcredit.data``,
    the same call as the daemon's start-up check), called when the job needs that table.
    """

    name: str
    run_id: str
    job: JobConfig
    datasets: AbstractSet[str]  # the keys ``load`` knows (whether a test-id list exists decides the split)
    load: Callable[[str], Table]
    state_dir: Path
    #: this party's own floor for the PSI intersection (its [policy].min_intersection), besides the job's
    min_intersection: int = 1
    min_intersection_rule: str = "[policy].min_intersection"
    #: continue from this party's checkpoints (agreed with the peers) instead of starting over
    resume: bool = False

    @property
    def checkpoints(self) -> CheckpointStore:
        """``<state_dir>/checkpoints/<run_id>``: this party's own checkpoints of the run."""
        return CheckpointStore(self.state_dir, self.run_id, self.name)

    @property
    def run_dir(self) -> Path:
        """``<state_dir>/runs/<run_id>`` (same place as ``PartyRuntime.run_dir``)."""
        return self.state_dir / "runs" / self.run_id


# --------------------------------------------------------------------------- split


def hash_test_mask(ids: Sequence[str], fraction: float, seed: int | str) -> np.ndarray:
    """True for test rows: SHA-256("<seed>:<id>") as a fraction of 2^64 below ``fraction``.

    Depends only on the (normalized) id, so every party computes the same cut alone.
    """
    limit = int(fraction * 2.0**64)
    prefix = f"{seed}:".encode()
    out = np.empty(len(ids), dtype=bool)
    for k, i in enumerate(ids):
        (v,) = struct.unpack(">Q", hashlib.sha256(prefix + i.encode("utf-8")).digest()[:8])
        out[k] = v < limit
    return out


class SplitSpec:
    """How the test rows are chosen: a hash split (``fraction``) or the ids of a test-id dataset (label party)."""

    def __init__(self, fraction: float | None, seed: int | str, test_dataset: str | None) -> None:
        self.fraction = fraction
        self.seed = seed
        self.test_dataset = test_dataset

    def describe(self) -> str:
        if self.fraction is not None:
            return f"hash split, test_fraction={self.fraction}, split_seed={self.seed}"
        return f"test ids from the label party's dataset '{self.test_dataset}'"


def split_spec(rt: VerticalParty) -> SplitSpec:
    """The job's split rule, as seen from this party (see the module docstring)."""
    m = _vertical_model(rt.job)
    seed = m.split_seed
    if m.test_fraction is not None:
        return SplitSpec(float(m.test_fraction), seed, None)
    name = rt.job.job.test_dataset
    if rt.name == rt.job.job.label_party:
        if name and name in rt.datasets:
            return SplitSpec(None, seed, name)
        return SplitSpec(DEFAULT_TEST_FRACTION, seed, None)
    # passive: the label party decides between an id list and the default hash split; we accept its bitmask
    return SplitSpec(None, seed, name)


def _pack_mask(mask: np.ndarray, spec: SplitSpec) -> bytes:
    head = json.dumps({"n": int(len(mask)), "rule": spec.describe(), "fraction": spec.fraction}).encode()
    return head + b"\n" + np.packbits(mask.astype(np.uint8)).tobytes()


def _unpack_mask(payload: bytes, n: int, me: str, label: str) -> tuple[np.ndarray, dict[str, Any]]:
    head, _, body = bytes(payload).partition(b"\n")
    meta = loads_json(head, what=f"train/test split from label party '{label}' to party '{me}'")
    if meta.get("n") != n or isinstance(meta.get("n"), bool) or len(body) != (n + 7) // 8:
        raise ProtocolError(
            f"party '{me}': the split from label party '{label}' covers {meta.get('n')} rows, the intersection has {n}"
        )
    bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8), count=n).astype(bool)
    return bits, meta


# --------------------------------------------------------------------------- model configs


def _vertical_model(job: JobConfig) -> VerticalLRModel | SecureBoostModel:
    if not isinstance(job.model, (VerticalLRModel, SecureBoostModel)):
        raise ConfigError(f"job type '{job.job.type}' is not a vertical job (expected 'vertical-lr' or 'secureboost')")
    return job.model


def model_config(job: JobConfig) -> VerticalLRConfig | SecureBoostConfig:
    """The protocol's own config from the job's validated ``[model]`` (the split/PSI keys stay here).

    The message timeout defaults to the job's ``round_timeout_s`` unless ``[model]`` sets it.
    """
    m = _vertical_model(job)
    timeout = job.job.round_timeout_s
    if isinstance(m, SecureBoostModel):
        cfg = m.narrow(SecureBoostConfig)
        return cfg if "timeout_s" in m.model_fields_set else cfg.model_copy(update={"timeout_s": timeout})
    lr = m.narrow(VerticalLRConfig)
    return lr if "timeout" in m.model_fields_set else lr.model_copy(update={"timeout": timeout})


# --------------------------------------------------------------------------- the party's whole job


def _say(rt: VerticalParty, msg: str) -> None:
    """Progress line in the party's own log (the coordinator sees only the one Flower hop)."""
    print(f"[fedcredit {rt.job.job.type} run {rt.run_id} party {rt.name}] {msg}", file=sys.stderr, flush=True)


class _Throttled:
    """A protocol progress callback printing at most every ``every`` seconds (and on the last step)."""

    def __init__(self, rt: VerticalParty, every: float = 2.0) -> None:
        self.rt, self.every, self.last = rt, every, 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every or (total and done >= total):
            self.last = now
            _say(self.rt, f"{stage}: {done}/{total}" if total else f"{stage}: {done}")


def _own_table(rt: VerticalParty, label: str) -> Table:
    key = rt.job.job.train_dataset
    table = rt.load(key)
    if table.n_features == 0:
        raise DataError(f"party '{rt.name}': dataset '{key}' ({table.source}) has no feature columns to train on")
    if rt.name != label:  # a passive party's file may carry a label column of its own: never a feature, never used
        return replace(table, y=None)
    if table.y is None:
        raise DataError(f"party '{rt.name}': the label party's dataset '{key}' ({table.source}) has no label "
                        "column (set label_column in its dataset config)")
    return table


def _label_test_mask(rt: VerticalParty, spec: SplitSpec, ids: Sequence[str]) -> np.ndarray:
    if spec.fraction is not None:
        return hash_test_mask(ids, spec.fraction, spec.seed)
    assert spec.test_dataset is not None
    test_ids = set(rt.load(spec.test_dataset).ids)
    return np.fromiter((i in test_ids for i in ids), dtype=bool, count=len(ids))


def run_vertical_party_core(transport: Transport, rt: VerticalParty) -> dict[str, Any]:
    """This party's whole vertical job (PSI, split, training, evaluation) over ``transport``; its PUBLIC result.

    Transport-agnostic (RelayTransport in a deployment, an InMemoryHub endpoint in-process); the
    caller owns and closes the transport.  Flat JSON-able dict: ``role``, ``type``, ``run_id``,
    ``intersection_size``, ``own_rows``, ``n_train``, ``n_test``, ``split`` (the rule), wall times
    ``psi_s``/``model_s``/``total_s``, ``psi_bytes_sent``, ``bytes_sent``/``bytes_received``/
    ``messages_sent``/``messages_received`` (payload bytes over the transport), ``model_files`` (names
    under ``state_dir/models/<run_id>/``), a few model counters, and at the label party ``metrics`` =
    ``{auc, ks, n_test[, train_auc]}``.
    """
    store = rt.checkpoints
    try:
        if rt.resume and not store.exists():
            raise NoCheckpoint(f"party '{rt.name}': no checkpoint of run '{rt.run_id}' in {store.dir}; "
                               "this party cannot resume it")
        out = _run_party(transport, rt, store)
    except BaseException as e:
        if not isinstance(e, PeerAborted):  # say why once, so every peer stops waiting for us
            transport.abort(f"{type(e).__name__}: {e}")
        if is_final_failure(e):
            store.clear()
            _say(rt, f"stopped: {e}")
        else:
            steps = resumable_state(store)
            _say(rt, f"stopped: {e}; checkpoints kept ({steps or 'none yet'}): fedcredit runs resume {rt.run_id}")
        raise
    store.clear()  # finished: nothing left to resume
    return out


def is_final_failure(e: BaseException) -> bool:
    """A failure a resume cannot cure (bad data or config, a refusal, a missing checkpoint) ends the run for good.

    Everything else — a peer or the coordinator gone, a timeout, a lost stream — keeps the checkpoints.
    """
    if isinstance(e, PeerAborted):
        return False
    return isinstance(e, (DataError, ConfigError, PolicyRefused))


def resumable_state(store: CheckpointStore) -> str:
    """What this party could resume from, e.g. ``"psi 1, sb 3"`` (step numbers only: what the peers learn too)."""
    from fedcredit.protocols.psi import BATCH_STAGE

    parts = [f"{stage} {max(store.steps(stage))}" for stage in (PSI_STAGE, BATCH_STAGE, *MODEL_STAGES)
             if store.steps(stage)]
    return ", ".join(parts)


#: checkpoint stage of the finished PSI (step 1): the aligned intersection, as positions in this party's own table
PSI_STAGE = "psi"
#: the model protocols' checkpoint stages (secureboost.messages.STAGE, vertical_lr.STAGE)
MODEL_STAGES = ("sb", "vlr")


def _psi_or_resume(tr: Transport, rt: VerticalParty, store: CheckpointStore, table: Table, parties: list[str],
                   label: str, **psi_args: Any) -> Any:
    """PSI, or — in a resumed run where every party still holds the finished intersection — that intersection."""
    from fedcredit.protocols.psi import PsiResult, Tags, drop_progress, run_psi

    if rt.resume:
        at = agree_step(tr, leader=label, parties=parties, held=store.steps(PSI_STAGE), tags=Tags("psi").resume,
                        timeout=rt.job.job.round_timeout_s)
        if at:
            ck = store.load(PSI_STAGE, at)
            idx = ck.arrays["indices"].astype(np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= len(table)) or \
                    ids_digest([table.ids[i] for i in idx]) != ck.meta.get("ids_digest"):
                raise DataError(f"party '{rt.name}': the checkpointed intersection of run '{rt.run_id}' does not "
                                f"match {table.source} any more (the table changed since the run started)")
            ids = [table.ids[i] for i in idx]
            _say(rt, f"resuming: PSI intersection of {len(ids)} ids from this party's checkpoint")
            drop_progress(store)
            return PsiResult(intersection_ids=ids, size=len(ids), indices=idx, own_size=len(table))
        for stage in MODEL_STAGES:  # PSI runs again: a new common row order, the model checkpoints no longer fit
            store.drop(stage)
    # per batch: this party's scalar and each round's values, so a crash mid-PSI resumes at the last round all hold
    psi = run_psi(tr, table.ids, parties, leader=label, checkpoint=store, resume=rt.resume, **psi_args)
    store.save(PSI_STAGE, 1, {"ids_digest": ids_digest(psi.intersection_ids), "size": int(psi.size)},
               {"indices": psi.indices})
    drop_progress(store)  # the scalar leaves the disk as soon as the finished intersection is saved
    return psi


def _binning_step(tr: Transport, rt: VerticalParty, train: Table, test: Table, label: str, passives: list[str],
                  model_dir: Path, *, select_only: bool) -> tuple[Table, Table, dict[str, Any]] | None:
    """``[model.binning]``: federated binning on the train rows, IV selection, then each party's transform.

    ``select_only`` (SecureBoost, which bins natively): only the IV selection is applied, the
    kept features stay raw, and no WOE is sent to a passive party whatever ``transform`` says.

    Writes ``binning.json`` (``"binning"``: this party's binning tables — at the label party also
    every passive party's, by bin index only; ``"selection"``) beside the model part, for the
    run report; the public reply gets only counts (features in / kept).
    """
    m = _vertical_model(rt.job)
    bp = getattr(m, "binning", None)
    if bp is None:
        return None
    from fedcredit.protocols.binning import run_binning_label, run_binning_passive

    timeout = bp.timeout or rt.job.job.round_timeout_s
    t0 = time.perf_counter()
    if select_only:
        bp = bp.model_copy(update={"transform": "indicators"})
    if rt.name == label:
        res = run_binning_label(tr, train, passives, bp, timeout=timeout)
        tf = res.transform
        doc = {"binning": [t.to_dict() for t in res.tables()], "selection": res.selection()}
        kept = sum(res.selected_own) + sum(sum(v) for v in res.selected_passive.values())
        n_in = len(res.selected_own) + sum(len(v) for v in res.selected_passive.values())
    else:
        pres = run_binning_passive(tr, train, label, timeout=timeout, tag_prefix=bp.tag_prefix)
        tf = pres.transform
        doc = {"binning": pres.tables(rt.name), "selection": pres.selection(rt.name, bp.min_iv)}
        kept, n_in = sum(pres.selected), len(pres.selected)
    write_text(model_dir / "binning.json", json.dumps(doc, indent=2))
    unknown: dict[str, int] = {}
    if select_only:
        new_train, new_test = train.select(tf.input_names), test.select(tf.input_names)
    else:
        new_train, _ = tf.apply_table(train)
        new_test, unknown = tf.apply_table(test)
    _say(rt, f"binning ({bp.method}, {bp.transform}): {kept} of {n_in} features kept (IV >= {bp.min_iv})"
             + (f"; unknown categories in the test rows (treated as missing): {unknown}" if unknown else ""))
    return new_train, new_test, {"binning_features": n_in, "binning_kept": kept, "binning_only": bp.only,
                                 "binning_s": round(time.perf_counter() - t0, 3), "_transform": tf}


def _attach_transform(path: Path, tf: Any) -> None:
    """Add the binning transform and the raw input schema to a saved LR part (scoring bins before the LR)."""
    doc = json.loads(path.read_text())
    doc["binning"] = tf.to_dict()
    doc["input_schema"] = tf.schema_dict()
    write_text(path, json.dumps(doc, indent=2))


def _attach_scorecard(model_dir: Path, me: str, is_label: bool, tf: Any, params: Any) -> list[str]:
    """Add this party's scorecard (docs/scorecard.md) to its saved LR part; ``scorecard.json`` for the run report."""
    from fedcredit.protocols import vertical_lr as vlr

    path = model_dir / f"vertical_lr_{me}_model.json"
    text = path.read_text()
    model: Any = (vlr.LabelModel if is_label else vlr.PassiveModel).from_json(text, source=str(path))
    vlr.with_scorecard(model, tf, params)
    doc = json.loads(text)
    doc["scorecard"] = model.scorecard.to_dict()
    write_text(path, json.dumps(doc, indent=2))
    rows = model.scorecard.rows() + [{"row_type": "passive", "feature": p, "bin": "", "label": "subtotal at that party",
                                       "points": None} for p in (model.passive_parties if is_label else [])]
    write_text(model_dir / "scorecard.json", json.dumps({"scorecard": {**doc["scorecard"], "rows": rows}}, indent=2))
    return ["scorecard.json"]


def _passive_dp_report(cfg: VerticalLRConfig | SecureBoostConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """A passive party's ``{"dp": ...}``: the label party's account of the same job, from the job's own parameters."""
    from fedcredit import dp

    assert cfg.dp is not None
    if isinstance(cfg, VerticalLRConfig):  # the passive ran the same fixed schedule
        return {"dp": dp.label_plan(cfg.dp, cfg.dp_releases(), "vertical-lr").report(int(extra.get("epochs_run", 0)))}
    return {"dp": dp.label_plan(cfg.dp, cfg.n_trees, "secureboost").report()}


def _run_party(transport: Transport, rt: VerticalParty, store: CheckpointStore) -> dict[str, Any]:
    from fedcredit.protocols.psi import save_intersection

    job = rt.job.job
    jtype = job.type
    label = job.label_party
    if label is None:  # JobConfig validation guarantees it; keep the error readable anyway
        raise ConfigError(f"a {jtype} job needs [job].label_party")
    parties = list(job.parties)
    passives = [p for p in parties if p != label]
    me = rt.name
    is_label = me == label
    t_start = time.perf_counter()
    cfg = model_config(rt.job)
    spec = split_spec(rt)
    psi_min, psi_rule = _vertical_model(rt.job).psi_min_size, "[model].psi_min_size"
    if rt.min_intersection > psi_min:  # this party's own floor: every party announces its floor in the PSI hello
        psi_min, psi_rule = rt.min_intersection, rt.min_intersection_rule
    psi_batch = _vertical_model(rt.job).psi_batch_size
    model_dir = rt.state_dir / "models" / rt.run_id
    model_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    rt.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    tr = CountingTransport(transport)
    timings: dict[str, float] = {}
    # the caller joined the session first: if this party's data is bad, closing the transport tells peers at once
    table = _own_table(rt, label)
    source = table.source
    _say(rt, f"{'label' if is_label else 'passive'} party: {len(table)} rows, {table.n_features} features "
             f"from {source}")

    # ---- 1. PSI over the data plane (leader = label party)
    t0 = time.perf_counter()
    psi = _psi_or_resume(tr, rt, store, table, parties, label, min_size=psi_min, batch_size=psi_batch,
                         progress=_Throttled(rt), source=source, min_rule=psi_rule)
    timings["psi"] = time.perf_counter() - t0
    psi_traffic = tr.snapshot()
    save_intersection(rt.run_dir / "intersection.txt", psi)
    aligned = table.take(psi.indices)
    _say(rt, f"PSI done: {psi.size} common ids of {len(table)} in {timings['psi']:.2f} s")

    # ---- 2. train/test split by ids (label party decides; passives check what they can)
    if is_label:
        try:
            mask = _label_test_mask(rt, spec, aligned.ids)
        except (DataError, ConfigError) as e:
            tr.abort(str(e))  # the passive parties stop waiting for the split, and learn why
            raise
        for p in passives:
            tr.send(p, Tags.SPLIT, _pack_mask(mask, spec))
        rule = spec.describe()
    else:
        mask, meta = _unpack_mask(tr.recv(label, Tags.SPLIT), len(aligned), me, label)
        rule = str(meta.get("rule", ""))
        if spec.fraction is not None and not np.array_equal(mask, hash_test_mask(aligned.ids, spec.fraction, spec.seed)):
            raise ProtocolError(
                f"party '{me}': the test rows announced by label party '{label}' differ from the job's hash split "
                f"({spec.describe()})"
            )
    train = aligned.take(np.flatnonzero(~mask))
    test = aligned.take(np.flatnonzero(mask))
    if len(train) == 0:
        raise DataError(f"party '{me}': every one of the {len(aligned)} common ids is a test id ({rule})")
    _say(rt, f"split ({rule}): {len(train)} train / {len(test)} test rows")

    # ---- 3. the model
    t0 = time.perf_counter()
    files: list[str] = []
    metrics: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    raw_train = train  # the report's data summary describes the party's own columns, not their WOE/indicators
    binned = _binning_step(tr, rt, train, test, label, passives, model_dir, select_only=not isinstance(cfg, VerticalLRConfig))
    bextra: dict[str, Any] = {}
    if binned is not None:
        train, test, bextra = binned
    binning_only = bool(bextra.get("binning_only"))
    #: the run report's sections (fedcredit/report.py, docs/reports.md): each step puts its documented key here
    report_sections: dict[str, Any] = {}
    label_privacy: dict[str, Any] = {}  # the label party's {"dp": ...} under label DP
    test_scores: np.ndarray | None = None
    test_arg = test if len(test) else None
    if binning_only:  # [model.binning].only: the modeller reads the IV tables before any training
        _say(rt, "binning only ([model.binning].only = true): no model trained")
    elif isinstance(cfg, VerticalLRConfig):
        from fedcredit.protocols import vertical_lr as vlr

        require_numbers(train, test, why="vertical LR has no rule for missing values or categories; add a binning "
                                         "step ([model.binning]: WOE or bin indicators) or train SecureBoost")

        if is_label:
            res = vlr.run_vertical_lr_label(tr, train, passives, cfg, test=test_arg, progress=_Throttled(rt),
                                            out_dir=model_dir, report_name="vertical_lr", checkpoint=store,
                                            resume=rt.resume)
            if res.test_metrics:
                metrics = {"auc": float(res.test_metrics["auc"]), "ks": float(res.test_metrics["ks"]),
                           "n_test": len(test)}
            extra = {"epochs_run": res.epochs_run, "best_epoch": res.best_epoch, "steps": res.steps}
            label_privacy = res.privacy
            test_scores = res.test_scores
            report_sections["convergence"] = vlr.convergence(res.history)
            files += [f"vertical_lr_{me}_model.json"]
            if metrics:
                files += ["vertical_lr_report.json", "vertical_lr_roc_ks.png"]
        else:
            pres = vlr.run_vertical_lr_passive(tr, train, label, cfg, test=test_arg, out_dir=model_dir,
                                               model_name="vertical_lr", checkpoint=store, resume=rt.resume)
            extra = {"epochs_run": pres.epochs_run, "steps": pres.steps}
            files += [f"vertical_lr_{me}_model.json"]
    else:
        from fedcredit.protocols import secureboost as sb

        if is_label:
            sres = sb.run_secureboost_label(tr, train, passives, cfg, _Throttled(rt), test_table=test_arg,
                                            out_dir=model_dir, checkpoint=store, resume=rt.resume)
            sres.model.save(model_dir / f"secureboost_{me}_model.json")
            files += [f"secureboost_{me}_model.json"]
            if sres.test_auc is not None:
                metrics = {"auc": float(sres.test_auc), "ks": float(sres.test_ks or 0.0), "n_test": len(test),
                           "train_auc": round(float(sres.train_auc), 6)}
                files += ["secureboost_test_report.json", "secureboost_test_roc_ks.png"]
            extra = {"n_trees": len(sres.model.trees), "splits_by_party": sres.model.splits_by_party()}
            label_privacy = sres.report.get("privacy", {})
            test_scores = sres.test_scores
            from fedcredit.report import trees_summary

            report_sections["trees"] = trees_summary(sres.model.trees, cfg.model_dump(), extra["splits_by_party"])
        else:
            part = sb.run_secureboost_passive(tr, train, label, cfg, test_table=test_arg, progress=_Throttled(rt, 5.0),
                                              checkpoint=store, resume=rt.resume)
            part.save(model_dir / f"secureboost_{me}_model.json")
            files += [f"secureboost_{me}_model.json"]
            extra = {"splits": len(part.selectors) if part.hidden else len(part.splits)}
    if getattr(cfg, "dp", None) is not None and not binning_only:  # label DP: ε, δ in the run JSON (docs/privacy.md)
        extra["privacy"] = label_privacy or _passive_dp_report(cfg, extra)
    if binned is not None:
        tf = bextra.pop("_transform")
        lr_part = not binning_only and isinstance(cfg, VerticalLRConfig)
        if lr_part:
            _attach_transform(model_dir / f"vertical_lr_{me}_model.json", tf)
        files += ["binning.json"]
        extra.update(bextra)
        card = getattr(_vertical_model(rt.job), "scorecard", None)
        if card is not None and lr_part:  # [model.scorecard]: this party's points from its own part, no message
            files += _attach_scorecard(model_dir, me, is_label, tf, card)
    timings["train_and_eval"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    traffic = tr.snapshot()
    out: dict[str, Any] = {
        "role": "label" if is_label else "passive",
        "type": jtype,
        "run_id": rt.run_id,
        "intersection_size": int(psi.size),
        "own_rows": len(table),
        "n_train": len(train),
        "n_test": len(test),
        "split": rule,
        "psi_s": round(timings["psi"], 3),
        "model_s": round(timings["train_and_eval"], 3),
        "total_s": round(timings["total"], 3),
        "psi_bytes_sent": psi_traffic["bytes_sent"],
        **traffic,
        "model_files": files,
        **extra,
    }
    from fedcredit.report import vertical_report  # the party's own report: nothing in it leaves the party

    # where this party's HE work ran ([compute]: engine, workers, what went to worker processes and their pids);
    # in-process simulations share one pool between parties, so there it counts them all
    report_sections["compute"] = default_pool().usage()

    out["report"] = vertical_report(model_dir=model_dir, state_dir=rt.state_dir, reply=out, train=raw_train,
                                    test_y=test.y if is_label else None, test_scores=test_scores if is_label else None,
                                    sections=report_sections, sent_by_tag=tr.sent_by_tag(),
                                    config=cfg.model_dump())
    if is_label:
        out["metrics"] = metrics or {}
        (model_dir / "vertical_job.json").write_text(json.dumps(out, indent=2))
    auc = f", test AUC {metrics['auc']:.4f} KS {metrics['ks']:.4f}" if metrics else ""
    _say(rt, f"done in {timings['total']:.2f} s (PSI {timings['psi']:.2f} s, model {timings['train_and_eval']:.2f} s)"
             f"{auc}; sent {traffic['bytes_sent']} bytes")
    return out
