"""Online scoring in the party daemon: a mutual-TLS gRPC service over the party's active model.

* **Horizontal** model (every bank holds the whole model): scored locally.
* **Vertical** model, label party: ``Score`` / ``ScoreBatch`` take the application
  (customer id + the label party's own features), ask every passive party for its
  partial result with **one** ``PartialScore`` call per passive party per request
  or batch, all concurrently under one deadline, combine, and hand the PD to the
  decision layer (:mod:`fedcredit.decision`).
* **Vertical** model, passive party: ``PartialScore`` looks the ids up in the
  party's own dataset and answers only its partial result — LR: the partial logit
  per id; SecureBoost: the left/right bit of each split it owns.  It answers only
  the label party named in its manifest, and only for the exact model part the
  caller expects (``model_hash``).

Authorisation, not only authentication (docs/security.md): ``Score`` / ``ScoreBatch``
only for the certificate names in ``[scoring].callers`` (none by default; never the
coordinator's certificate); ``PartialScore`` only for a *party* certificate of the
installed model's label party, within its rate limits (``[scoring.partial_rate]``).
A passive party is not a membership oracle: an id it does not hold gets a decoy
answer indistinguishable from a held one (:mod:`party.scoring_guard`), every id it
answers is in its audit log as a keyed digest (decoys flagged there, and only
there), and what it says to another institution never names a file.

Failure is never a silent wrong score: a passive party that is down or slower than
the deadline fails the request with an error naming it (or, when configured, the
label-party-only fallback model answers, marked ``fallback``); a missing feature or a
model version mismatch between parties is a clear error.

Every decision is appended to the deciding party's JSONL decision log (caller, model
version, score, decision, reasons, each party's contribution, and the deciding party's own
model inputs as given — ``fedcredit party monitor`` computes their PSI) for audit.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from crypto.certs import Identity
from crypto.tls import GRPC_OPTIONS, peer_identity, secure_channel, server_credentials
from fedcredit.artifacts import Artifact, check_peers, load_horizontal
from fedcredit.codec import loads_json
from fedcredit.data import ColumnKind, InputSchema, OneHotEncoding, Table, load_dataset, normalize_id
from fedcredit.decision import Contributions, DecisionPolicy, decide, lr_contributions
from fedcredit.errors import (
    ConfigError,
    DataError,
    FedCreditError,
    ModelMismatch,
    NotAuthorized,
    PartyUnavailable,
)
from fedcredit.kinds import KINDS, LABEL, LOCAL, PASSIVE, load_part
from fedcredit.rpc_errors import ERROR_KEY, error_from_rpc, status_of, trailer_of
from party.audit import AuditLog, DecisionLog
from party.models import ModelStore
from party.scoring_guard import RateLimiter, ScoringSecret
from protos import scoring_pb2 as pb
from protos import scoring_pb2_grpc as pbg

# --------------------------------------------------------------------------- requests


#: One own feature value of an application: a number, a category's text, or None (missing; NaN too).
FeatureValue = float | str | None


@dataclass(frozen=True)
class Application:
    """One application to score: the customer id and the deciding party's own feature values.

    A value is a number, a category's text, or ``None`` for missing; the model's input
    schema decides what each must be (``fedcredit.data.InputSchema``).
    """

    id: str
    features: Mapping[str, FeatureValue]
    exposure: float | None = None


# --------------------------------------------------------------------------- loaded models


@dataclass
class LoadedModel:
    """A verified version from the store, loaded once for online use (``fedcredit.kinds``) and cached."""

    version: str
    artifact: Artifact
    model: Any  # local: SavedModel; label: the protocol's OnlineLabel; passive: its OnlinePassive
    feature_names: list[str]
    #: what a request's / the table's values must be (model JSON "input_schema"; None: all numeric, as before)
    input_schema: InputSchema | None = None
    #: a horizontal model trained through the job's one-hot encoding: raw applications are encoded by it
    encoding: OneHotEncoding | None = None
    #: the part scores NaN (missing) inputs by its own rule (e.g. SecureBoost's default directions, a WOE
    #: missing bin); plain LR does not, and a missing value is refused rather than scored wrongly
    accepts_missing: bool = False

    @property
    def inputs(self) -> InputSchema:
        """The schema requests are encoded with (all numeric over ``feature_names`` for older models)."""
        if self.input_schema is not None:
            return self.input_schema
        names = list(self.encoding.features) if self.encoding is not None else self.feature_names
        numeric: ColumnKind = "numeric"
        return InputSchema(tuple(names), (numeric,) * len(names))

    @property
    def kind(self) -> str:
        return self.artifact.manifest.kind

    @property
    def role(self) -> str:
        return KINDS[self.kind].role

    @property
    def manifest(self) -> Any:
        return self.artifact.manifest


def _load(version: str, art: Artifact) -> LoadedModel:
    if KINDS.get(art.manifest.kind) is None:
        raise ConfigError(f"model version {version}: scoring does not support kind {art.manifest.kind!r}")
    source = f"model version {version}"
    if KINDS[art.manifest.kind].role == LOCAL:
        saved = load_horizontal(art)  # also checks model.json against schema.json
        enc = saved.meta.get("encoding")
        encoding = OneHotEncoding.from_dict(enc, source=source) if isinstance(enc, dict) else None
        if encoding is not None and encoding.columns != list(saved.feature_names):
            raise DataError(f"{source}: its feature encoding makes columns {encoding.columns[:5]}..., the model "
                            f"has {list(saved.feature_names)[:5]}...")
        return LoadedModel(version, art, saved, list(saved.feature_names), encoding=encoding,
                           accepts_missing=encoding is not None and bool(encoding.missing or encoding.categories))
    raw = art.files.get("model.json", b"")
    m = load_part(art.manifest.kind, raw, source)
    return LoadedModel(version, art, m, list(m.feature_names), input_schema=_input_schema(m, raw, source),
                       accepts_missing=_takes_missing(art.manifest.kind, m))


def _takes_missing(kind: str, part: Any) -> bool:
    """Does this online part have a rule for a missing (NaN) input?

    A part may say so itself (``accepts_missing``); otherwise: SecureBoost parts send a
    missing value down each split's default direction, and a part behind a binning
    transform (``transform.apply``) puts it in the missing bin.  Plain LR has no rule.
    """
    explicit = getattr(part, "accepts_missing", None)
    if explicit is not None:
        return bool(explicit)
    transform = getattr(part, "transform", None)
    if transform is not None and not callable(transform) and hasattr(transform, "apply"):
        return True
    return kind.startswith("secureboost-")


def _input_schema(part: Any, raw: bytes, source: str) -> InputSchema | None:
    """The part's input schema: its ``input_schema`` attribute, else the model JSON's ``"input_schema"`` key."""
    schema = getattr(part, "input_schema", None)
    if isinstance(schema, InputSchema):
        return schema
    if isinstance(schema, Mapping):
        return InputSchema.from_dict(schema, source=source)
    try:
        doc = loads_json(raw, what=f"{source}: model.json")
    except FedCreditError:
        return None  # not JSON (a binary part): no schema, all numeric
    d = doc.get("input_schema") if isinstance(doc, dict) else None
    if d is None:
        return None
    if not isinstance(d, Mapping):
        raise DataError(f"{source}: input_schema is {type(d).__name__}, expected a table")
    schema = InputSchema.from_dict(d, source=source)
    if list(schema.feature_names) != list(part.feature_names):
        raise DataError(f"{source}: input_schema lists {list(schema.feature_names)}, the model's features are "
                        f"{list(part.feature_names)}")
    return schema


# --------------------------------------------------------------------------- the service core


#: The label party's channel to a passive party stays connected: gRPC's default closes a channel after
#: 30 idle minutes, and the next decision then pays TCP + TLS handshakes (here ~2 ms on 127.0.0.1, two
#: round trips more on a WAN) inside its deadline.  Keepalive pings find a dead connection before a
#: request does; the passive party's server accepts them (:data:`SERVER_OPTIONS`).
KEEPALIVE_MS = 120_000
PEER_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *GRPC_OPTIONS,
    ("grpc.client_idle_timeout_ms", 2**31 - 1),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # preconnect() may meet a passive party that is not up yet; gRPC's default reconnect backoff (1 s, x1.6,
    # up to 120 s) would then hold the first decision past its deadline: retry at most every second instead
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
#: The scoring server: no SO_REUSEPORT (a port another process holds must fail, not be silently shared);
#: keepalive pings from a label party every KEEPALIVE_MS are welcome, idle or not.
SERVER_OPTIONS: list[tuple[str, int]] = [
    *GRPC_OPTIONS,
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
]


class PeerClient:
    """The label party's stub to one passive party's scoring endpoint (one mTLS channel, reused)."""

    def __init__(self, party: str, address: str, identity: Identity, server_name: str | None = None) -> None:
        self.party = party
        self.address = address
        self.channel = secure_channel(address, identity, server_name=server_name)
        self.stub = pbg.ScoringStub(self.channel)

    def close(self) -> None:
        self.channel.close()


class ScoringService:
    """Scoring at one party, independent of gRPC serving (the CLI batch scorer uses it directly).

    ``store``: the party's :class:`party.models.ModelStore`; the active version is
    used unless a request names another.  ``peers``: passive party -> scoring
    address (label party only).  ``table_loader``: returns the party's own
    :class:`~fedcredit.data.Table` for a list of feature
    names (passive party: features are looked up by id there).
    """

    def __init__(
        self,
        party: str,
        store: ModelStore,
        *,
        identity: Identity | None = None,
        peers: Mapping[str, str] | None = None,
        table_loader: Callable[[list[str]], Any] | None = None,
        policy: DecisionPolicy | None = None,
        deadline_s: float = 0.5,
        fallback_version: str | None = None,
        decision_log: Path | None = None,
        callers: Sequence[str] = (),
        rate: RateLimiter | None = None,
        audit_log: Path | None = None,
        secret: ScoringSecret | None = None,
    ) -> None:
        self.party = party
        self.callers = frozenset(callers)
        self.rate = rate
        self.audit = AuditLog(audit_log) if audit_log else None
        self.secret = secret or ScoringSecret.ephemeral()
        self.store = store
        self.identity = identity
        self.policy = policy or DecisionPolicy()
        self.deadline_s = float(deadline_s)
        self.fallback_version = fallback_version
        self.table_loader = table_loader
        self.log = DecisionLog(decision_log) if decision_log else None
        self._peers_cfg = dict(peers or {})
        self._peers: dict[str, PeerClient] = {}
        self._aio_stubs: dict[str, Any] = {}  # grpc.aio stubs, created on the server's event loop
        self._aio_channels: dict[str, Any] = {}
        #: per model version: (applications, their encoded rows, the future of their result), waiting for a batch
        self._queue: dict[str, list[tuple[Sequence[Application], np.ndarray, Any]]] = {}
        self._flushing: dict[str, bool] = {}
        self.max_batch = 512
        self._models: dict[str, LoadedModel] = {}
        self._tables: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        self._active: tuple[float, str | None] = (-1.0, None)
        self._active_path = str(store.root / "active.json")  # built once: a Path per request was ~20 us
        self._pool = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="partials")

    # ------------------------------------------------------------------ models

    def active_version(self) -> str:
        """The store's active version, re-read only when active.json changes (one stat per call)."""
        try:
            mtime = os.stat(self._active_path).st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        if mtime != self._active[0]:
            self._active = (mtime, self.store.active_version())
        if self._active[1] is None:
            raise ConfigError(f"party '{self.party}': no active model to score with (fedcredit party models activate …)")
        return self._active[1]

    def model(self, version: str | None = None) -> LoadedModel:
        """A parsed version (default: active), verified by the store on first use and cached."""
        version = version or self.active_version()
        m = self._models.get(version)
        if m is None:
            with self._lock:
                m = self._models.get(version)
                if m is None:
                    m = _load(version, self.store.load(version))
                    self._models[version] = m
        return m

    def _table(self, names: list[str]) -> Any:
        key = tuple(names)
        t = self._tables.get(key)
        if t is None:
            if self.table_loader is None:
                raise ConfigError(f"party '{self.party}': no dataset configured to look ids up in ([scoring].dataset)")
            with self._lock:
                t = self._tables.get(key) or self.table_loader(names)
                self._tables[key] = t
        return t

    def _peer(self, party: str) -> PeerClient:
        c = self._peers.get(party)
        if c is None:
            addr = self._peers_cfg.get(party)
            if addr is None:
                raise ConfigError(f"party '{self.party}': no scoring address for passive party '{party}' "
                                  f"([scoring].peers has {sorted(self._peers_cfg) or 'none'})")
            if self.identity is None:
                raise ConfigError(f"party '{self.party}': joint scoring needs the party's TLS identity")
            with self._lock:
                c = self._peers.get(party) or PeerClient(party, addr, self.identity)
                self._peers[party] = c
        return c

    def warm(self) -> None:
        """Load the active version (and, at a passive party, its id-indexed dataset and the table in the part's
        codes) before the first request, so the first partial answer is not spent reading a CSV or parsing
        ciphertexts inside the label party's deadline."""
        try:
            m = self.model()
        except ConfigError:
            return  # nothing active yet; loaded on first use
        if m.role == PASSIVE and self.table_loader is not None:
            table = self._table(m.feature_names)
            table.index()
            self._passive_matrix(m, table)

    def watch_activations(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Warm each version as soon as ``fedcredit party models activate`` makes it active (a running daemon
        learns of it from active.json; without this the first request after an activation paid for the load).
        A version that fails to load is left to the request path, which reports why."""
        seen: str | None = None
        while not stop.wait(interval_s):
            try:
                version = self.active_version()
            except FedCreditError:
                continue  # nothing active
            if version != seen:
                seen = version  # tried once per activation
                try:
                    self.warm()
                except Exception:  # noqa: BLE001 - a bad version: the request path reports why, to the caller
                    pass

    # ------------------------------------------------------------------ passive side

    def _audit(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record_event(event, party=self.party, **fields)

    def authorize_score(self, caller: str, role: str) -> None:
        """May ``caller`` (certificate name, role) ask this party for decisions?  NotAuthorized (audited) if not."""
        if role == "coordinator":
            why = "the coordinator's certificate may never ask for decisions"
        elif caller not in self.callers:
            why = f"'{caller}' is not one of the callers in its [scoring].callers"
        else:
            return
        self._audit("score_refused", caller=caller, role=role, reason=why)
        raise NotAuthorized(f"party '{self.party}': {why}")

    def partial(self, model_hash: str, ids: Sequence[str], caller: str, role: str = "party") -> pb.PartialReply:
        """A passive party's answer for ``ids`` under its active part (only for its label party, within its limits).

        An id it does not hold is answered with a decoy (:mod:`party.scoring_guard`): the label party
        cannot tell; the audit line lists it under ``unknown``.
        """
        m = self.model()
        man = m.manifest
        if m.role != PASSIVE:
            raise ConfigError(f"party '{self.party}' serves a {m.kind!r} model (version {m.version}), "
                              "not a passive part: no partial scores to give")
        label = m.model.label_party
        if caller != label or role != "party":
            who = f"'{caller}'" + (f" (certificate role '{role}')" if role != "party" else "")
            self._audit("partial_refused", caller=caller, role=role, run_id=man.run_id, count=len(ids),
                        reason="not the label party")
            raise NotAuthorized(f"party '{self.party}': partial scores of run {man.run_id} are only for the label "
                                f"party '{label}', not {who}")
        if model_hash != man.model_hash:
            raise ModelMismatch(
                f"model version mismatch: '{label}' asks '{self.party}' for part {model_hash[:12]}, but "
                f"'{self.party}' serves {man.model_hash[:12]} (run {man.run_id}, version {m.version}); "
                "activate the same run at every party")
        if self.rate is not None:
            try:
                self.rate.take(caller, len(ids))
            except NotAuthorized as e:
                self._audit("partial_refused", caller=caller, role=role, run_id=man.run_id, count=len(ids),
                            reason=str(e))
                raise
        table = self._table(m.feature_names)
        index = table.index()
        X_all = self._passive_matrix(m, table)
        n_rows = len(table.X)
        rows = np.empty(len(ids), dtype=np.int64)
        digests: list[str] = []
        unknown: list[str] = []
        for k, i in enumerate(ids):
            try:
                key = normalize_id(i)  # the loader's id rule: the table's ids were normalized with it
            except DataError:
                key = str(i)  # not an id at all, so not in the table either
            r = index.get(key)
            d = self.secret.id_digest(key)
            digests.append(d)
            if r is None:  # not held: the answer of a real row picked by a keyed hash of the id
                r = self.secret.decoy_row(man.model_hash, key, n_rows)
                unknown.append(d)
            rows[k] = r
        X = X_all[rows]
        rep = pb.PartialReply(party=self.party, model_hash=man.model_hash, kind=m.kind)
        answer = m.model.answer(X)
        if KINDS[m.kind].answer_field == "partial_logits" and isinstance(answer, bytes):
            rep.encrypted_partials = answer  # a shared-weights vertical LR part: Enc(X_k w_k), opened by the label party
        elif KINDS[m.kind].answer_field == "partial_logits":
            rep.partial_logits.extend(np.asarray(answer, dtype=np.float64).tolist())
        else:
            rep.decisions = bytes(answer)
        self._audit("partial_answer", caller=caller, run_id=man.run_id, model_hash=man.model_hash,
                    version=m.version, count=len(ids), ids=digests, unknown=unknown)
        return rep

    def _passive_matrix(self, m: LoadedModel, table: Table) -> np.ndarray:
        """The scoring table in the part's codes (its input schema; all numeric for older parts), once per version.

        A category the part never saw is read as missing (counted in the audit log, never
        sent); a part that cannot take missing values refuses a table that has them.
        """
        key = ("encoded", m.version, *m.feature_names)
        X = self._tables.get(key)
        if X is not None:
            return X
        with self._lock:  # once per version, whether the activation watcher or a request gets here first
            X = self._tables.get(key)
            if X is None:
                X = self._encode_passive(m, table)
                self._tables[key] = X
        return X

    def _encode_passive(self, m: LoadedModel, table: Table) -> np.ndarray:
        if m.input_schema is not None:
            X, unknown = m.input_schema.encode(table)
            if unknown:
                self._audit("unknown_categories", version=m.version, counts=unknown,
                            treatment="scored as missing (the part never saw these categories)")
        else:
            cat = [f for f, k in zip(table.feature_names, table.kinds) if k == "categorical"]
            if cat:
                raise DataError(f"party '{self.party}', file {table.source}: column(s) {cat} are categorical, but "
                                f"model version {m.version} has no input schema (it was trained on numbers)")
            X = table.X
        _refuse_missing(self.party, m, X, [f"row {r + 1} of {table.source}" for r in range(len(table))])
        return X

    def outgoing_error(self, e: Exception, caller: str) -> FedCreditError:
        """What a passive party tells another institution about a failure: authorisation and version errors as
        written (they name no file), anything else by type and an audit-log reference only."""
        if isinstance(e, (NotAuthorized, ModelMismatch)):
            return e
        ref = secrets.token_hex(6)
        self._audit("partial_error", caller=caller, reference=ref, error=type(e).__name__, message=str(e))
        kind = type(e).__name__ if isinstance(e, FedCreditError) else "internal error"
        msg = (f"party '{self.party}' could not answer partial scores ({kind}); its operator can find "
               f"reference {ref} in its audit log")
        if isinstance(e, PartyUnavailable):
            return PartyUnavailable(self.party, msg)
        if isinstance(e, FedCreditError):
            try:
                return type(e)(msg)
            except TypeError:
                pass
        return FedCreditError(msg)

    # ------------------------------------------------------------------ label side

    def _fetch_partials(self, m: LoadedModel, ids: list[str]) -> dict[str, pb.PartialReply]:
        """One PartialScore per passive party, concurrently, all under one deadline."""
        req = self._partial_requests(m, ids)
        stubs = {p: self._peer(p).stub for p in req}
        deadline = self.deadline_s

        def call(p: str) -> pb.PartialReply | FedCreditError:
            try:
                return stubs[p].PartialScore(req[p], timeout=deadline)
            except grpc.RpcError as e:
                return _peer_error(p, self._peers_cfg.get(p, "?"), e, deadline)

        # blocking calls (a sync-stub .future() starts a thread per call); all but the last run on the pool,
        # so every passive party is asked at once and the whole fan-out is bounded by one deadline
        names = list(req)
        pending = {p: self._pool.submit(call, p) for p in names[:-1]}
        results = {names[-1]: call(names[-1])} if names else {}
        results.update({p: f.result() for p, f in pending.items()})
        return self._checked(m, names, results)

    def _partial_requests(self, m: LoadedModel, ids: list[str]) -> dict[str, pb.PartialRequest]:
        return {p: pb.PartialRequest(model_hash=e["model_hash"], ids=ids, run_id=m.manifest.run_id)
                for p, e in m.manifest.peers.items()}

    def _aio_stub(self, p: str) -> Any:
        """The grpc.aio stub to passive party ``p`` (one channel, kept open; on the server's event loop only)."""
        stub = self._aio_stubs.get(p)
        if stub is None:
            addr = self._peers_cfg.get(p)
            if addr is None or self.identity is None:
                self._peer(p)  # raises the ConfigError naming what is missing
                raise AssertionError("unreachable")
            from crypto.tls import channel_credentials

            ch = grpc.aio.secure_channel(addr, channel_credentials(self.identity), options=PEER_CHANNEL_OPTIONS)
            self._aio_channels[p] = ch
            stub = self._aio_stubs[p] = pbg.ScoringStub(ch)
        return stub

    def preconnect(self) -> None:
        """Start connecting to every passive party of the active model now (on the server's event loop), so
        the first decision does not pay the TCP + mutual-TLS handshake inside its deadline.  Never fails:
        a passive party that is down is reported by the first request that needs it."""
        try:
            m = self.model()
        except FedCreditError:
            return  # nothing (loadable) active yet: channels open on first use
        if m.role != LABEL:
            return
        for p in m.manifest.peers:
            if p in self._peers_cfg and self.identity is not None:
                self._aio_stub(p)
                self._aio_channels[p].get_state(try_to_connect=True)

    async def _fetch_partials_async(self, m: LoadedModel, ids: list[str]) -> dict[str, pb.PartialReply]:
        """As :meth:`_fetch_partials`, on the server's event loop (grpc.aio channels, one per passive party)."""
        import asyncio

        req = self._partial_requests(m, ids)
        deadline = self.deadline_s

        async def call(p: str) -> pb.PartialReply | FedCreditError:
            stub = self._aio_stub(p)
            try:
                return await stub.PartialScore(req[p], timeout=deadline)
            except grpc.RpcError as e:
                return _peer_error(p, self._peers_cfg.get(p, "?"), e, deadline)

        names = list(req)
        results = dict(zip(names, await asyncio.gather(*(call(p) for p in names))))
        return self._checked(m, names, results)

    def _checked(self, m: LoadedModel, names: list[str], results: Mapping[str, Any]) -> dict[str, pb.PartialReply]:
        out: dict[str, pb.PartialReply] = {}
        failures: list[FedCreditError] = []
        for p in names:
            r = results[p]
            if isinstance(r, FedCreditError):
                failures.append(r)
            else:
                out[p] = r
        if failures:
            raise failures[0]
        check_peers(m.manifest, {p: r.model_hash for p, r in out.items()})
        return out

    def _joint(self, m: LoadedModel, apps: Sequence[Application], X: np.ndarray) -> tuple[np.ndarray, list[Contributions]]:
        """PD and contributions of ``apps`` from their encoded rows ``X`` and every passive party's answer."""
        ids = [a.id for a in apps]
        return self._combine(m, X, ids, self._fetch_partials(m, ids))

    async def _joint_async(self, m: LoadedModel, apps: Sequence[Application],
                           X: np.ndarray) -> tuple[np.ndarray, list[Contributions]]:
        ids = [a.id for a in apps]
        return self._combine(m, X, ids, await self._fetch_partials_async(m, ids))

    async def _joint_coalesced(self, m: LoadedModel, apps: Sequence[Application],
                               X: np.ndarray) -> tuple[np.ndarray, list[Contributions]]:
        """Requests that arrive while a joint round trip is in flight share the next one.

        At most one PartialScore batch per model is in flight; everything queued
        meanwhile goes in the next, so a lone request waits for nothing and concurrent
        ones cost the passive parties one round trip per batch instead of one each.
        ``X`` is the applications' encoded rows (:func:`_matrix`, run by the caller: an
        application with missing or non-finite features is refused before it joins a
        batch, and its rows are encoded once); if a shared batch still fails on bad input,
        each request is retried alone so only the request at fault gets the error.

        A request that finds no batch in flight sends its own at once, in its own task
        (no hand-over to a flushing task and back); whatever queued meanwhile is then
        flushed by a task of its own, so the first caller is answered as soon as its batch is.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        if not self._flushing.get(m.version):
            self._flushing[m.version] = True
            try:
                return await self._joint_async(m, apps, X)
            finally:
                if self._queue.get(m.version):
                    loop.create_task(self._flush(m))
                else:
                    self._flushing[m.version] = False
        fut = loop.create_future()
        self._queue.setdefault(m.version, []).append((apps, X, fut))
        return await fut

    async def _flush(self, m: LoadedModel) -> None:
        """Send what queued behind the batch in flight, batch after batch, until the queue is empty."""
        import asyncio

        try:
            while self._queue.get(m.version):
                batch: list[tuple[Sequence[Application], np.ndarray, Any]] = []
                rest = self._queue[m.version]
                n = 0
                while rest and (not batch or n + len(rest[0][0]) <= self.max_batch):
                    item = rest.pop(0)
                    batch.append(item)
                    n += len(item[0])
                apps = [a for part, _, _ in batch for a in part]
                X = batch[0][1] if len(batch) == 1 else np.vstack([x for _, x, _ in batch])
                try:
                    pd, contribs = await self._joint_async(m, apps, X)
                except DataError as e:
                    if len(batch) == 1:
                        _settle(batch[0][2], error=e)
                        continue

                    async def alone(part: Sequence[Application], x: np.ndarray, f: Any) -> None:
                        try:
                            _settle(f, await self._joint_async(m, part, x))
                        except Exception as err:  # noqa: BLE001 - delivered to that request
                            _settle(f, error=err)

                    await asyncio.gather(*(alone(part, x, f) for part, x, f in batch))
                    continue
                except Exception as e:  # noqa: BLE001 - a party failure is every co-batched request's failure
                    for _, _, f in batch:
                        _settle(f, error=e)
                    continue
                k = 0
                for part, _, f in batch:
                    _settle(f, (pd[k:k + len(part)], contribs[k:k + len(part)]))
                    k += len(part)
        finally:
            self._flushing[m.version] = False

    def _combine(self, m: LoadedModel, X: np.ndarray, ids: list[str],
                 parts: Mapping[str, pb.PartialReply]) -> tuple[np.ndarray, list[Contributions]]:
        """The label part's score from each passive party's answer (the field its kind answers in)."""
        answers = {p: r.encrypted_partials if r.encrypted_partials else
                   getattr(r, KINDS[r.kind].answer_field) if r.kind in KINDS and KINDS[r.kind].answer_field
                   else b"" for p, r in parts.items()}
        pd, contribs = m.model.score(X, answers)
        return pd, list(contribs)

    def _local(self, m: LoadedModel, apps: Sequence[Application]) -> tuple[np.ndarray, list[Contributions | None],
                                                                          list[int]]:
        """A label-party-only model's PD and reasons (and its unknown-category counts per application)."""
        X, unknown = _matrix(self.party, m, apps)
        pd = m.model.predict_proba(X)
        if m.model.model.family != "lr":  # reasons need a linear model
            return pd, [None] * len(apps), unknown
        flat = m.model.model.get_flat()
        w, b = flat[:-1], float(flat[-1])
        Z = (X - m.model.mean) / m.model.std
        return pd, [lr_contributions(w, Z[k], m.feature_names, intercept=b) for k in range(len(apps))], unknown

    def score(self, apps: Sequence[Application], model_version: str | None = None,
              caller: str = "local") -> list[dict[str, Any]]:
        """Score a batch of applications; decisions are logged with ``caller`` (the certificate name of a
        gRPC caller; ``local`` for in-process use such as ``fedcredit score``); returns ``ScoreReply``-shaped dicts."""
        m = self._resolve(model_version)
        fallback_reason = ""
        used = m
        contribs: Sequence[Contributions | None]
        if m.role == LABEL:
            X, unknown = _matrix(self.party, m, apps)
            try:
                pd, contribs = self._joint(m, apps, X)
            except PartyUnavailable as e:
                used, pd, contribs, unknown, fallback_reason = self._fallback(apps, e)
        else:
            pd, contribs, unknown = self._local(m, apps)
        return self._finish(apps, used, pd, contribs, fallback_reason, caller, unknown)

    async def score_async(self, apps: Sequence[Application], model_version: str | None = None,
                          caller: str = "local") -> list[dict[str, Any]]:
        """:meth:`score` for the asyncio server: the passive parties are asked without blocking a thread."""
        m = self._resolve(model_version)
        fallback_reason = ""
        used = m
        contribs: Sequence[Contributions | None]
        if m.role == LABEL:
            X, unknown = _matrix(self.party, m, apps)  # once: these rows go into the (shared) batch as they are
            try:
                pd, contribs = await self._joint_coalesced(m, apps, X)
            except PartyUnavailable as e:
                used, pd, contribs, unknown, fallback_reason = self._fallback(apps, e)
        else:
            pd, contribs, unknown = self._local(m, apps)
        return self._finish(apps, used, pd, contribs, fallback_reason, caller, unknown)

    def _fallback(self, apps: Sequence[Application], err: PartyUnavailable) -> tuple[Any, Any, Any, list[int], str]:
        """A passive party is down or late: the configured label-party-only model, or the error."""
        if not self.fallback_version:
            raise err
        used = self.model(self.fallback_version)
        pd, contribs, unknown = self._local(used, apps)
        return used, pd, contribs, unknown, str(err)

    def _resolve(self, model_version: str | None) -> LoadedModel:
        active = self.active_version()
        if model_version and model_version != active:
            known = {v.version for v in self.store.list()}
            if model_version not in known:
                raise ConfigError(f"party '{self.party}': no model version {model_version!r} "
                                  f"(installed: {', '.join(sorted(known)) or 'none'})")
        m = self.model(model_version or active)
        if m.role == PASSIVE:
            raise ConfigError(f"party '{self.party}' holds the passive part of run {m.manifest.run_id}; "
                              f"applications are scored at the label party")
        return m

    def _finish(self, apps: Sequence[Application], used: LoadedModel, pd: np.ndarray,
                contribs: Sequence[Contributions | None], fallback_reason: str, caller: str,
                unknown: Sequence[int]) -> list[dict[str, Any]]:
        """Decisions, replies and decision-log lines; ``unknown``: per application, the categories the model
        ``used`` never saw (as :func:`_matrix` counted them while encoding)."""
        out, log = [], []
        lim = self.policy.limit
        for k, a in enumerate(apps):
            exposure = a.exposure
            if exposure is None and lim is not None and lim.exposure_feature is not None \
                    and isinstance(a.features.get(lim.exposure_feature), (int, float)):
                exposure = float(a.features[lim.exposure_feature])  # type: ignore[arg-type]
            d = decide(float(pd[k]), contribs[k], exposure, self.policy).to_dict()
            if unknown[k]:  # the documented treatment, never silent: the reply and the log say so
                d["notes"] = [*d.get("notes", []), _unknown_note(unknown[k])]
            rep = {"id": a.id, **d, "model_version": used.version, "fallback": bool(fallback_reason),
                   "fallback_reason": fallback_reason}
            out.append(rep)
            log.append({"time": time.time(), "caller": caller, "id": a.id, "model_version": used.version, "run_id": used.manifest.run_id,
                        "model_hash": used.manifest.model_hash, "pd": d["pd"], "score": d["score"],
                        "decision": d["decision"], "credit_limit": d["credit_limit"], "reasons": d["reasons"],
                        "party_contributions": d["party_contributions"], "fallback": bool(fallback_reason),
                        "features": _logged_features(a, used.inputs.feature_names),
                        **({"notes": d["notes"]} if unknown[k] else {}),
                        **({"points": d["points"]} if d.get("points") else {})})
        if self.log is not None:
            self.log.write(log)
        return out

    def close(self) -> None:
        for c in self._peers.values():
            c.close()
        if self._aio_stubs and _LOOP is not None:  # aio channels live on the scoring loop
            import asyncio

            chans = [self._aio_channels[p] for p in self._aio_stubs if p in self._aio_channels]

            async def close_all() -> None:
                for ch in chans:
                    await ch.close()
            try:
                asyncio.run_coroutine_threadsafe(close_all(), _LOOP).result(timeout=5)
            except Exception:  # noqa: BLE001 - closing on shutdown is best effort
                pass
        self._pool.shutdown(wait=False)
        if self.log is not None:
            self.log.close()
        if self.audit is not None:
            self.audit.close()


def _logged_features(app: Application, names: Sequence[str]) -> dict[str, Any]:
    """The deciding party's own inputs of the scoring model, as given (missing/NaN -> null), for
    ``fedcredit party monitor``'s PSI per feature; a passive party's features never reach this party."""
    out: dict[str, Any] = {}
    for n in names:
        v = app.features.get(n)
        out[n] = None if v is None or (isinstance(v, float) and not np.isfinite(v)) else v
    return out


def _matrix(party: str, m: LoadedModel, apps: Sequence[Application]) -> tuple[np.ndarray, list[int]]:
    """The applications as the model's input rows, and how many categories per application it never saw.

    Through the model's :class:`~fedcredit.data.InputSchema` (or a horizontal model's
    one-hot encoding): numbers, category text, None/NaN = missing.  An unknown category
    is missing (counted, and noted in the decision); infinite values, text in a numeric
    feature, and a missing value for a model that cannot take one are errors naming the
    application and the feature.
    """
    schema = m.inputs
    names = list(schema.feature_names)
    for a in apps:
        absent = [n for n in names if n not in a.features]
        if absent:
            raise DataError(f"party '{party}': application {a.id!r} lacks feature(s) {absent} that model "
                            f"version {m.version} needs (send a missing value as missing, not by leaving it out)")
    if m.encoding is not None:
        rows: list[np.ndarray] = []
        unknown: list[int] = []
        for a in apps:
            x, per_row = m.encoding.encode_rows([a.features], who=f"party '{party}': application {a.id!r}")
            rows.append(x[0])
            unknown.extend(per_row)
        return (np.vstack(rows) if rows else np.empty((0, len(m.feature_names)))), unknown
    X = np.empty((len(apps), len(names)), dtype=np.float64)
    unknown = [0] * len(apps)
    for k, a in enumerate(apps):
        x, unk = schema.encode_rows([a.features], who=f"party '{party}': application {a.id!r}")
        X[k] = x[0]
        unknown[k] = sum(unk.values())
    _refuse_missing(party, m, X, [f"application {a.id!r}" for a in apps])
    return X, unknown


def _refuse_missing(party: str, m: LoadedModel, X: np.ndarray, where: Sequence[str]) -> None:
    """A part that cannot take missing values (plain LR) never scores a NaN: the error names the feature."""
    if m.accepts_missing or not np.isnan(X).any():
        return
    r, j = (int(v) for v in np.argwhere(np.isnan(X))[0])
    n = int(np.isnan(X).any(axis=1).sum())
    raise DataError(
        f"party '{party}': model version {m.version} ({m.kind}) cannot take missing values, and feature "
        f"'{m.inputs.feature_names[j]}' is missing (or a category it never saw) in {where[r]} ({n} such row(s)); "
        "send a value, or score with a model that handles missing values (SecureBoost, or LR with the WOE transform)")


def _settle(fut: Any, result: Any = None, error: BaseException | None = None) -> None:
    """Deliver a queued request's result, unless its caller went away (cancelled: nothing to deliver)."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _unknown_note(n: int) -> str:
    return (f"{n} categorical value(s) not seen in training were scored as missing "
            "(the documented treatment of an unknown category)")


def _peer_error(party: str, address: str, e: grpc.RpcError, deadline: float) -> FedCreditError:
    """A failed call to a passive party as our error: unreachable/late -> PartyUnavailable (fallback may
    answer), otherwise the type the peer raised (``fedcredit.rpc_errors``)."""
    code = e.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PartyUnavailable(party, f"passive party '{party}' ({address}) did not answer within the "
                                       f"{deadline * 1000:.0f} ms scoring deadline")
    if code == grpc.StatusCode.UNAVAILABLE and not any(k == ERROR_KEY for k, _ in e.trailing_metadata() or ()):
        return PartyUnavailable(party, f"passive party '{party}' ({address}) is unreachable: {e.details()}")
    return error_from_rpc(e, party=party)


# --------------------------------------------------------------------------- gRPC


#: Request limits, checked before any per-application work: a ScoreBatch call is one caller's batch of
#: applications (the decision log, the passive round trip and the feature matrix grow with it).
MAX_BATCH_APPLICATIONS = 10_000
MAX_ID_CHARS = 256
MAX_FEATURES = 4096
MAX_CATEGORY_CHARS = 1024


def applications_from(party: str, requests: Sequence[pb.ScoreRequest]) -> list[Application]:
    """The applications of a Score/ScoreBatch call, refused with a DataError naming the field if over a limit."""
    if len(requests) > MAX_BATCH_APPLICATIONS:
        raise DataError(f"party '{party}': a batch of {len(requests)} applications is more than the "
                        f"{MAX_BATCH_APPLICATIONS} one call may carry (split it)")
    out = []
    for k, r in enumerate(requests):
        if len(r.id) > MAX_ID_CHARS or len(r.features) + len(r.categories) + len(r.missing) > MAX_FEATURES:
            raise DataError(f"party '{party}': application {k}: id longer than {MAX_ID_CHARS} characters or "
                            f"more than {MAX_FEATURES} features")
        long = [f for f, v in r.categories.items() if len(v) > MAX_CATEGORY_CHARS]
        if long:
            raise DataError(f"party '{party}': application {k}: category text of {long[:3]} is longer than "
                            f"{MAX_CATEGORY_CHARS} characters")
        out.append(_to_app(party, r))
    return out


def _to_app(party: str, r: pb.ScoreRequest) -> Application:
    """A request's three value maps as one feature mapping (number / category text / None); a feature in two is an error."""
    feats: dict[str, FeatureValue] = dict(r.features)
    for f, v in list(r.categories.items()) + [(f, None) for f in r.missing]:
        if f in feats:
            raise DataError(f"party '{party}': application {r.id!r}: feature '{f}' is given twice (features, "
                            "categories, missing: each feature in exactly one)")
        feats[f] = v
    return Application(r.id, feats, r.exposure if r.HasField("exposure") else None)


def _request(id: str, features: Mapping[str, FeatureValue], exposure: float | None = None,
             model_version: str = "") -> pb.ScoreRequest:
    """Numbers go in ``features``, text in ``categories``, None/NaN in ``missing``."""
    req = pb.ScoreRequest(id=id, model_version=model_version)
    for f, v in features.items():
        if v is None or (isinstance(v, float) and np.isnan(v)):
            req.missing.append(f)
        elif isinstance(v, str):
            req.categories[f] = v
        else:
            req.features[f] = float(v)
    if exposure is not None:
        req.exposure = exposure
    return req


def _to_reply(d: Mapping[str, Any]) -> pb.ScoreReply:
    pts = d.get("points")
    return pb.ScoreReply(
        points=None if pts is None else pb.ScorecardPoints(base=pts["base"], features=pts["features"],
                                                           parties=pts["parties"]),
        id=d["id"], pd=d["pd"], score=d["score"], decision=d["decision"],
        credit_limit=d["credit_limit"] or 0.0,
        reasons=[pb.Reason(name=r["name"], contribution=r["contribution"], source=r["source"], code=r["code"] or "")
                 for r in d["reasons"]],
        party_contributions=d["party_contributions"], model_version=d["model_version"], fallback=d["fallback"],
        fallback_reason=d["fallback_reason"], notes=list(d.get("notes", [])))


class _Servicer(pbg.ScoringServicer):
    """asyncio servicer: a request waiting for passive parties holds no thread (the GIL-bound sync
    server spent most of its time switching threads under concurrency)."""

    def __init__(self, service: ScoringService) -> None:
        self.service = service
        self._callers: dict[tuple[bytes, bytes], tuple[str, str]] = {}

    def _caller(self, context: Any) -> tuple[str, str]:
        """peer_identity, memoized per (client certificate, TLS version): parsing the certificate on
        every call was a measurable share of a decision's CPU time."""
        auth = context.auth_context() or {}
        key = ((auth.get("x509_pem_cert") or [b""])[0], (auth.get("ssl_tls_version") or [b""])[0])
        hit = self._callers.get(key)
        if hit is None:
            hit = peer_identity(context)
            if len(self._callers) < 4096:
                self._callers[key] = hit
        return hit

    async def _run(self, context: Any, fn: Callable[[str, str], Any]) -> Any:
        try:
            caller, role = self._caller(context)
            result = fn(caller, role)
            if hasattr(result, "__await__"):
                result = await result
            return result
        except FedCreditError as e:
            context.set_trailing_metadata(trailer_of(e))
            await context.abort(status_of(e), str(e))

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreReply:
        async def run(caller: str, role: str) -> pb.ScoreReply:
            self.service.authorize_score(caller, role)
            done = await self.service.score_async(applications_from(self.service.party, [request]),
                                                  request.model_version, caller=caller)
            return _to_reply(done[0])
        return await self._run(context, run)

    async def ScoreBatch(self, request: pb.ScoreBatchRequest, context: Any) -> pb.ScoreBatchReply:
        async def run(caller: str, role: str) -> pb.ScoreBatchReply:
            self.service.authorize_score(caller, role)
            done = await self.service.score_async(applications_from(self.service.party, request.requests),
                                                  request.model_version, caller=caller)
            return pb.ScoreBatchReply(replies=[_to_reply(d) for d in done])
        return await self._run(context, run)

    async def PartialScore(self, request: pb.PartialRequest, context: Any) -> pb.PartialReply:
        """Answers cross to another institution: every failure is reduced to what may cross
        (``ScoringService.outgoing_error``) before it leaves."""
        async def run(caller: str, role: str) -> pb.PartialReply:
            try:
                result = self.service.partial(request.model_hash, list(request.ids), caller, role)
                if hasattr(result, "__await__"):
                    result = await result
                return result
            except Exception as e:  # noqa: BLE001 - nothing unfiltered leaves for another institution
                raise self.service.outgoing_error(e, caller) from None
        return await self._run(context, run)


_LOOP_LOCK = threading.Lock()
_LOOP: Any = None


def _server_loop() -> Any:
    """The one asyncio loop (own daemon thread) every scoring server of this process runs on:
    grpc.aio supports one event loop per process."""
    import asyncio

    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="scoring-loop", daemon=True).start()
            _LOOP = loop
    return _LOOP


class ScoringServer:
    """A running scoring server on the process's scoring event loop; ``address`` is host:port actually bound."""

    def __init__(self, service: ScoringService, identity: Identity, host: str, port: int) -> None:
        import asyncio

        self.service = service
        self.host = host
        self._loop = _server_loop()
        self._watch_stop = threading.Event()

        async def start() -> tuple[Any, int]:
            server = grpc.aio.server(options=SERVER_OPTIONS)
            pbg.add_ScoringServicer_to_server(_Servicer(service), server)
            bound = server.add_secure_port(f"{host}:{port}", server_credentials(identity))
            await server.start()
            service.preconnect()  # the label party's channels to its passive parties, before the first request
            return server, bound

        try:
            self._server, self.port = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=30)
        except Exception as e:  # noqa: BLE001 - a bind failure names the address
            raise ConfigError(f"party '{service.party}': cannot start the scoring server on {host}:{port}: {e}") from None

        threading.Thread(target=service.watch_activations, args=(self._watch_stop,), name="scoring-warm",
                         daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 0.5) -> None:
        import asyncio

        self._watch_stop.set()
        asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result(timeout=30)
        self.service.close()


def serve(service: ScoringService, identity: Identity, *, host: str = "127.0.0.1", port: int = 0,
          workers: int = 16) -> ScoringServer:
    """Start the mutual-TLS scoring server (TLS 1.3 enforced per call by ``peer_identity``).

    ``workers`` is kept for configuration compatibility; the asyncio server needs no thread pool.
    """
    service.warm()
    return ScoringServer(service, identity, host, port)


class ScoringClient:
    """A client of a party's scoring service (banks' approval systems, tests, benchmarks)."""

    def __init__(self, address: str, identity: Identity, server_name: str | None = None) -> None:
        self.channel = secure_channel(address, identity, server_name=server_name)
        self.stub = pbg.ScoringStub(self.channel)

    def score(self, id: str, features: Mapping[str, FeatureValue], *, exposure: float | None = None,
              model_version: str = "", timeout: float = 10.0) -> pb.ScoreReply:
        return self.stub.Score(_request(id, features, exposure, model_version), timeout=timeout)

    def score_batch(self, apps: Sequence[Application], *, model_version: str = "",
                    timeout: float = 60.0) -> list[pb.ScoreReply]:
        reqs = [_request(a.id, a.features, a.exposure) for a in apps]
        return list(self.stub.ScoreBatch(pb.ScoreBatchRequest(model_version=model_version, requests=reqs),
                                         timeout=timeout).replies)

    def close(self) -> None:
        self.channel.close()


# --------------------------------------------------------------------------- from a party config


def service_from_config(config: Any, *, identity: Identity | None = None) -> ScoringService:
    """A :class:`ScoringService` for a :class:`fedcredit.config.PartyConfig` ([scoring], [decision])."""
    from party.models import open_store

    p = config.party
    sc = config.scoring
    if identity is None:
        identity = Identity.load(p.identity_dir, p.name)
    policy = config.decision or DecisionPolicy()  # validated with the party config (fedcredit.config)

    def loader(names: list[str]) -> Any:
        key = sc.dataset if sc is not None else None
        if key is None:
            raise ConfigError(f"party '{p.name}': [scoring].dataset names no dataset to look ids up in")
        ds = config.dataset(key)
        if ds.id_column is None:  # as before: ids are looked up in the "id" column
            ds = ds.model_copy(update={"id_column": "id"})
        # the dataset's own kinds and sentinels: the same loader as the start-up check and the jobs
        return load_dataset(ds, party=p.name, feature_cols=names, labels=False)

    limit = sc.partial_rate if sc is not None else None
    return ScoringService(
        p.name,
        open_store(config),
        identity=identity,
        peers=sc.peers if sc else {},
        table_loader=loader,
        policy=policy,
        deadline_s=(sc.deadline_ms if sc else 500.0) / 1000.0,
        fallback_version=sc.fallback_version if sc else None,
        decision_log=(sc.decision_log if sc and sc.decision_log else Path(p.state_dir) / "decisions.jsonl"),
        callers=sc.callers if sc else (),
        rate=RateLimiter(p.name, limit.ids_per_second, limit.burst, limit.ids_per_day) if limit else None,
        audit_log=Path(p.state_dir) / "audit.jsonl",
        secret=ScoringSecret.load_or_create(Path(p.state_dir) / "scoring.secret"),
    )


def start_from_config(config: Any) -> ScoringServer:
    """Start the scoring server the party config's ``[scoring]`` section describes."""
    from fedcredit.config import check_port_free

    p = config.party
    check_port_free(config, "scoring", "port", config.scoring.host, config.scoring.port)
    identity = Identity.load(p.identity_dir, p.name)
    service = service_from_config(config, identity=identity)
    return serve(service, identity, host=config.scoring.host, port=config.scoring.port, workers=config.scoring.workers)


__all__ = ["Application", "PartyUnavailable", "ScoringService", "ScoringServer", "ScoringClient", "serve",
           "service_from_config", "start_from_config"]
