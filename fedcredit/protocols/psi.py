"""ECDH private set intersection over X25519 for two or more parties (all roles in this module).

Scheme (star around a *leader* party; see docs/psi.md for the leakage table)::

    every party P:  k_P fresh secret scalar, ids (normalized at load) checked for duplicates
    P -> peer  hello            {n, batches}               (unusable ids: Transport.abort, so peers fail fast)
    P -> peer  s/i   k_P·H(x)    for P's own ids, in P's order, batch i
    peer -> P  d/i   k_peer·k_P·H(x)  for the same items, same order (first 16 bytes)
    P:  intersect {k_peer·k_P·H(own)} with {k_P·k_peer·H(peer's)} -> pairwise intersection
    leader -> P  final          the doubly-blinded values of the final intersection, in the common order

Peers are the leader and each non-leader (pairs leader<->P_k); non-leaders never
talk to each other.  The common order is the ascending order of the
doubly-blinded values of the leader's pair with the first partner (their first 8
bytes as an integer) — pseudorandom, so the order itself says nothing about the ids.  For two parties the final message
only confirms what both already computed; for more it also removes the ids missing
at some third party.

Work per party: blinding its own ids once and each peer's ids once (X25519 scalar
multiplications, ~25-30k/s per core), hashing its own ids.  The blinding runs on the
party's compute pool (:mod:`fedcredit.compute`, one session per run holding the scalar;
it reaches the workers over the pool's pipe and — in a deployed job — the party's own
checkpoint), each round's batch split across the workers.

Memory (docs/psi.md, "Memory"): the ids are read as a stream (:class:`IdSource`, e.g. a
Parquet file row group by row group: :func:`fedcredit.data.read_ids_stream`) in three
passes — check (8 bytes per id: a 64-bit hash to find repeats), exchange, and the
intersection's ids — so they are never all Python objects at once.  What is held for the
whole run is flat: 16 bytes per own id and per peer id per peer (the doubly-blinded
values), plus, while intersecting, ~8 bytes per id per sort order and a few temporaries;
per round only one batch per peer is in flight.

Checkpoints (``checkpoint=``, docs/resume.md): batch index i is round i; a party saves
its own scalar once (``psi_key``) and after round i that round's values (``psi_batch``
step i+1: its own batch doubly blinded, received; each peer's batch doubly blinded,
sent back).  ``resume=True`` agrees on the last round every party holds
(``Tags.batch_resume``) and continues with the next, to the same result in the same order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from crypto.files import write_text
from crypto.psi import (
    OP_BLIND,
    OP_HASH_BLIND,
    POINT_LEN,
    PsiKey,
    blind_task,
    normalize_id,
    pack_ids,
    worker_key,
)
from fedcredit.checkpoint import CheckpointStore, ResumeTags, agree_step
from fedcredit.codec import loads_json
from fedcredit.compute import WorkerPool, default_pool
from fedcredit.data import IdColumn, id_hashes
from fedcredit.errors import DataError, ProtocolError, SecurityError
from fedcredit.transport import Transport

__all__ = ["PsiResult", "Tags", "run_psi", "IdSource", "save_intersection", "load_intersection", "DEFAULT_BATCH", "MATCH_LEN",
           "KEY_STAGE", "BATCH_STAGE", "drop_progress"]

DEFAULT_BATCH = 50_000
#: most ids a peer may announce (its doubly-blinded values are held in a flat array of that size)
MAX_IDS = 2_000_000_000
MATCH_LEN = 16  # bytes of a doubly-blinded point kept for matching/ordering (128-bit: collisions ~2^-88 at 1M ids)
_VERSION = 1
_PARALLEL_THRESHOLD = 20_000  # below this many own ids worker processes cost more than they save
#: checkpoint stage of a PSI in progress: this party's scalar and the run's parameters (step 1)
KEY_STAGE = "psi_key"
#: checkpoint stage of a PSI in progress: step k = rounds 0..k-1 done; each file holds only round k-1's values
BATCH_STAGE = "psi_batch"

Progress = Callable[[str, int, int], None]


@dataclass
class PsiResult:
    """What one party holds after PSI: its own ids of the intersection, in the order shared by every party."""

    intersection_ids: Sequence[str]  # a list, or an IdColumn (Arrow) for a streamed source
    size: int
    indices: np.ndarray = field(repr=False)  # positions of intersection_ids in this party's input ids
    own_size: int = 0
    peer_sizes: dict[str, int] = field(default_factory=dict)
    pairwise_sizes: dict[str, int] = field(default_factory=dict)  # this party's intersection with each peer


# --------------------------------------------------------------------------- wire vocabulary


@dataclass(frozen=True)
class Tags:
    """Every PSI message tag, declared once for every role (``prefix`` is ``run_psi``'s ``tag_prefix``)."""

    prefix: str = "psi"

    @property
    def hello(self) -> str:  # party -> peer: {"v", "n", "batches"}
        return f"{self.prefix}/hello"

    @property
    def resume(self) -> ResumeTags:  # resumed runs only: whether every party still holds the finished intersection
        return ResumeTags(self.prefix)

    @property
    def batch_resume(self) -> ResumeTags:  # resumed runs only: the last batch round every party checkpointed
        return ResumeTags(f"{self.prefix}/batch")

    def single(self, i: int) -> str:  # party -> peer: batch i of its own ids, singly blinded k_P·H(x)
        return f"{self.prefix}/s/{i}"

    def double(self, i: int) -> str:  # peer -> party: batch i of that party's ids, doubly blinded (16 bytes each)
        return f"{self.prefix}/d/{i}"

    @property
    def final(self) -> str:  # leader -> non-leader: {"size", "error"} + the final set's doubly-blinded values
        return f"{self.prefix}/final"


# --------------------------------------------------------------------------- id sources


@runtime_checkable
class IdSource(Protocol):
    """A party's ids as a re-iterable stream: PSI reads it in passes instead of holding every id as a Python object.

    ``batches()`` starts over at each call and yields normalized id strings in row order
    (any batch sizes); ``len()`` is the number of ids it will yield; ``source`` names it in
    errors.  :func:`fedcredit.data.read_ids_stream` makes one from a Parquet file (row group
    by row group); a plain sequence of ids is one source held in memory.
    """

    source: str

    def __len__(self) -> int: ...

    def batches(self) -> Iterator[Sequence[str]]: ...


class _SequenceIds:
    """An in-memory sequence of ids as an :class:`IdSource`."""

    def __init__(self, ids: Sequence[str], source: str) -> None:
        self.ids, self.source = ids, source

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self) -> Iterator[Sequence[str]]:
        yield self.ids


def _rechunk(batches: Iterable[Sequence[str]], size: int) -> Iterator[list[str]]:
    """Batches of exactly ``size`` ids (the last one shorter), whatever sizes the source yields."""
    buf: list[str] = []
    for b in batches:
        at = 0
        if not buf and len(b) == size:  # the source's batch is already one: no copy
            yield list(b)
            continue
        while at < len(b):
            take = min(size - len(buf), len(b) - at)
            buf.extend(b[at : at + take])
            at += take
            if len(buf) == size:
                yield buf
                buf = []

    if buf:
        yield buf


# --------------------------------------------------------------------------- blinding on the party's compute pool

#: below this many ids in a batch it is not split further across workers
_MIN_CHUNK = 2_000
#: queries per step of a lookup: bounds its temporaries (~50 bytes per query) to a few tens of MB
_FIND_CHUNK = 1 << 20


class _Blinder:
    """This party's scalar on its compute pool (:mod:`fedcredit.compute`): one session, booted once per PSI run.

    Each batch is split into chunks, one per worker or so, so the cores share every round.
    """

    def __init__(self, pool: WorkerPool, key: PsiKey) -> None:
        self.key = key
        self._session = pool.session(worker_key, key.export_for_local_helper())
        self._parts = max(1, self._session.workers)

    def _split(self, n: int) -> list[tuple[int, int]]:
        step = max(_MIN_CHUNK, -(-n // self._parts))
        return [(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def round(self, own: Sequence[bytes] | None, peer_bufs: Sequence[bytes]) -> tuple[bytes | None, list[bytes]]:
        """(own ids hashed and blinded, each peer buffer blinded again and cut to MATCH_LEN) — one map on the pool."""
        items: list[bytes] = []
        spans: list[int] = []
        for buf in peer_bufs:
            parts = self._split(len(buf) // POINT_LEN)
            spans.append(len(parts))
            items += [bytes([OP_BLIND, MATCH_LEN]) + buf[lo * POINT_LEN : hi * POINT_LEN] for lo, hi in parts]
        if own is not None:
            items += [bytes([OP_HASH_BLIND]) + pack_ids(own[lo:hi]) for lo, hi in self._split(len(own))]
        out = list(self._session.map(blind_task, items))
        peers, at = [], 0
        for k in spans:
            peers.append(b"".join(out[at : at + k]))
            at += k
        return (b"".join(out[at:]) if own is not None else None), peers

    def close(self) -> None:
        self._session.close()


# --------------------------------------------------------------------------- helpers


def _id_error(v: object, k: int, me: str, source: str) -> DataError | None:
    """The error for id #k+1 if it is not a normalized id string (the id rule's fixed point), else None."""
    b = v.encode("utf-8", "surrogatepass") if isinstance(v, str) else None
    try:
        ok = b is not None and normalize_id(b) == b
    except DataError:
        ok = False
    if ok:
        return None
    return DataError(
        f"party '{me}': {source}, id #{k + 1}: {v!r} is not a normalized id string; ids reach PSI "
        "normalized once, at load (fedcredit.data.normalize_ids, a Table's ids)"
    )


def _scan(ids: IdSource, batch_size: int, me: str, source: str, digest: bool) -> str:
    """One pass over the ids: each is normalized (refused, never re-normalized), none repeats; their digest.

    Memory: 8 bytes per id (a 64-bit hash of each, to find repeats by sorting) plus one batch.
    A repeated hash is confirmed on the ids themselves (a second, reading pass) before it is
    reported, so a hash collision is never a false duplicate.
    """
    n = len(ids)
    hashes = np.empty(n, dtype=np.uint64)
    h = hashlib.sha256()
    at = 0
    for batch in _rechunk(ids.batches(), batch_size):
        if at + len(batch) > n:
            raise DataError(f"party '{me}': {source} yields more ids than the {n} it announced")
        for k, v in enumerate(batch):
            if type(v) is not str or not v or v.strip() != v:
                err = _id_error(v, at + k, me, source)
                if err is not None:
                    raise err
        try:
            enc = [v.encode("utf-8") for v in batch]
        except UnicodeEncodeError:
            bad = next(k for k, v in enumerate(batch) if _id_error(v, at + k, me, source) is not None)
            raise _id_error(batch[bad], at + bad, me, source) from None  # type: ignore[misc]
        if digest:
            h.update(pack_ids(enc))
        hashes[at : at + len(batch)] = id_hashes(batch)
        at += len(batch)
    if at != n:
        raise DataError(f"party '{me}': {source} yielded {at} ids, not the {n} it announced")
    srt = np.sort(hashes)
    rep = np.unique(srt[1:][srt[1:] == srt[:-1]])
    del srt
    if rep.size:
        pos = np.flatnonzero(np.isin(hashes, rep))[:10_000].tolist()
        want = set(pos)
        found: dict[int, str] = {}
        k = 0
        for part in ids.batches():
            for v in part:
                if k in want:
                    found[k] = v
                k += 1
        first: dict[str, int] = {}
        for k in pos:  # ascending: the first repeat in row order, as the loader reports it
            v = found[k]
            if v in first:
                raise DataError(
                    f"party '{me}': duplicate id {v!r} in {source} (positions {first[v] + 1} and {k + 1}); "
                    "PSI needs unique ids"
                )
            first[v] = k
    return h.hexdigest() if digest else ""


def _hello(n: int, batch: int, min_size: int = 1, min_rule: str = "min_size") -> bytes:
    d: dict[str, Any] = {"v": _VERSION, "n": n, "batches": math.ceil(n / batch) if n else 0, "min": int(min_size),
                         "min_rule": min_rule}
    return json.dumps(d).encode()


def _read_hello(payload: bytes, me: str, peer: str) -> tuple[int, int, int, str]:
    """(peer's id count, its batch count, the smallest intersection it accepts, the rule that sets it)."""
    d = loads_json(payload, what=f"PSI hello from party '{peer}' to party '{me}'")
    try:
        if d.get("v") != _VERSION:
            raise ProtocolError(f"party '{me}': party '{peer}' speaks PSI version {d.get('v')}, expected {_VERSION}")
        n, batches, floor = int(d["n"]), int(d["batches"]), max(1, int(d.get("min", 1)))
        if n < 0 or batches < 0 or n > MAX_IDS or batches > n:
            raise ValueError("count out of range")
        return n, batches, floor, str(d.get("min_rule", "min_size"))[:200]
    except (ValueError, KeyError, TypeError, OverflowError):
        raise ProtocolError(f"party '{me}': malformed PSI hello from party '{peer}'") from None


def read_final(payload: bytes, me: str, leader: str) -> np.ndarray:
    """The leader's final intersection values (``meta`` JSON line + ``size`` × MATCH_LEN bytes).

    The size is checked against the body before any array is made; a leader's error is a DataError.
    """
    head, _, body = bytes(payload).partition(b"\n")
    meta = loads_json(head, what=f"PSI result from leader '{leader}' to party '{me}'")
    if meta.get("error"):
        raise DataError(f"{str(meta['error'])[:500]} (reported by PSI leader '{leader}' to party '{me}')")
    size = meta.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or len(body) % MATCH_LEN or len(body) // MATCH_LEN != size:
        raise ProtocolError(f"party '{me}': PSI result from leader '{leader}' is inconsistent with its size")
    return np.frombuffer(body, dtype=f"S{MATCH_LEN}")


def _recv_batch(transport: Transport, peer: str, tag: str, i: int, width: int, what: str) -> bytes:
    buf = transport.recv(peer, tag)
    if len(buf) == 0 or len(buf) % width:
        raise ProtocolError(f"party '{transport.me}': {what} batch {i} from party '{peer}' has {len(buf)} bytes, "
                            f"not k*{width}")
    return buf


def _digest(run_id: str, step: int, key_fp: str, arrays: dict[str, np.ndarray]) -> str:
    """Binds a batch checkpoint's values to its run, its step and the key they were made with."""
    h = hashlib.sha256(json.dumps([run_id, step, key_fp, sorted(arrays)]).encode())
    for name in sorted(arrays):
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


class _Progress:
    """This party's PSI state in its own checkpoint store: its scalar, and per round what it received/computed.

    Round i (one batch index): the party's own batch i, singly blinded, goes to every peer;
    each peer's batch i comes in, is blinded again, goes back; the party's own batch i comes
    back doubly blinded.  After round i it saves ``psi_batch`` step i+1 holding only round
    i's values: ``od.<peer>`` (its own ids doubly blinded by that peer: received) and
    ``pd.<peer>`` (the peer's ids blinded by both: computed from what it received).
    """

    def __init__(self, store: CheckpointStore | None, params: dict[str, Any]) -> None:
        self.store, self.params = store, params

    def _what(self, stage: str, step: int) -> str:
        assert self.store is not None
        return f"party '{self.store.party}': PSI checkpoint {stage}-{step:08d}.ckpt of run '{self.store.run_id}'"

    def start(self, key: PsiKey) -> None:
        if self.store is None:
            return
        self.drop()
        self.store.save(KEY_STAGE, 1, {**self.params, "key_fp": key.fingerprint()},
                        {"key": np.frombuffer(key.serialize(), dtype=np.uint8)})

    def save_round(self, step: int, key: PsiKey, arrays: dict[str, np.ndarray]) -> None:
        if self.store is None:
            return
        fp = key.fingerprint()
        self.store.save(BATCH_STAGE, step, {"key_fp": fp, "digest": _digest(self.store.run_id, step, fp, arrays)},
                        arrays, prune=False)

    def drop(self) -> None:
        if self.store is not None:
            drop_progress(self.store)

    def load(self) -> tuple[PsiKey | None, list[dict[str, np.ndarray]]]:
        """This party's key and its rounds 1..m (the unbroken prefix); DataError if a file is not what it says."""
        st = self.store
        if st is None or 1 not in st.steps(KEY_STAGE):
            return None, []
        what = self._what(KEY_STAGE, 1)
        try:
            ck = st.load(KEY_STAGE, 1)
            key = PsiKey.load(ck.arrays["key"].astype(np.uint8).tobytes(), what=what)
        except (ProtocolError, SecurityError, KeyError) as e:
            raise DataError(f"{what} is damaged or not a PSI key checkpoint ({e}); delete {st.dir} to "
                            "start the run's PSI over") from None
        if ck.meta.get("key_fp") != key.fingerprint():
            raise DataError(f"{what}: the key does not match its recorded fingerprint (the file was altered)")
        changed = [k for k, v in self.params.items() if ck.meta.get(k) != v]
        if changed:
            raise DataError(f"{what} was made for other PSI inputs ({', '.join(changed)} differ: the table or the "
                            "job changed since the run started)")
        rounds: list[dict[str, np.ndarray]] = []
        held = st.steps(BATCH_STAGE)
        for step in range(1, len(held) + 1):
            if step not in held:
                break
            what = self._what(BATCH_STAGE, step)
            try:
                b = st.load(BATCH_STAGE, step)
            except ProtocolError as e:
                raise DataError(f"{what} is damaged ({e})") from None
            if b.meta.get("key_fp") != key.fingerprint():
                raise DataError(f"{what} was made with another PSI key than this run's ({KEY_STAGE}-00000001.ckpt); "
                                "refusing to mix them")
            arrays = {k: v.astype(np.uint8) for k, v in b.arrays.items()}
            if b.meta.get("digest") != _digest(st.run_id, step, key.fingerprint(), arrays):
                raise DataError(f"{what}: its values do not match its digest (the file was altered)")
            rounds.append(arrays)
        return key, rounds


def drop_progress(store: CheckpointStore) -> None:
    """Forget this party's PSI in progress (its scalar and its batches): the PSI finished or starts over."""
    store.drop(BATCH_STAGE)
    store.drop(KEY_STAGE)


def _round_arrays(i: int, peers: list[str], n: int, batch_size: int, peer_spans: dict[str, list[tuple[int, int]]],
                  od: dict[str, np.ndarray], pd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Round i's values (views of the run's flat arrays, as bytes): own batch i doubly blinded, each peer's batch i."""
    out: dict[str, np.ndarray] = {}
    for p in peers:
        if i * batch_size < n:
            out[f"od.{p}"] = od[p][i * batch_size : min(n, (i + 1) * batch_size)].view(np.uint8)
        if i < len(peer_spans[p]):
            lo, hi = peer_spans[p][i]
            out[f"pd.{p}"] = pd[p][lo:hi].view(np.uint8)
    return out


def _exchange(
    transport: Transport,
    peers: list[str],
    blinder: _Blinder,
    ids: IdSource,
    batch_size: int,
    peer_info: dict[str, tuple[int, int]],
    tags: Tags,
    progress: Progress | None,
    ckpt: _Progress,
    start: int,
    od: dict[str, np.ndarray],
    pd: dict[str, np.ndarray],
    peer_spans: dict[str, list[tuple[int, int]]],
) -> int:
    """Rounds ``start``.. of the exchange (see :class:`_Progress`), filling ``od``/``pd``; the rounds done now.

    Round i: own batch i (singly blinded) out to every peer; each peer's batch i in, blinded
    again (together with hashing own batch i+1, in one map on the pool), back; own batch i
    back doubly blinded.  Only a round's batches are ever in flight, so memory stays at the
    flat ``od``/``pd`` arrays plus O(batch).  A round is checkpointed once its values are in.
    """
    me = transport.me
    n = len(ids)
    own_batches = math.ceil(n / batch_size)
    peer_batches = {p: peer_info[p][1] for p in peers}
    rounds = max([own_batches, *peer_batches.values()])
    done_peer = {p: (peer_spans[p][-1][1] if peer_spans[p] else 0) for p in peers}
    own_iter = _rechunk(ids.batches(), batch_size)
    for _ in range(start):  # a resumed run recomputes nothing before its round: skip those batches
        next(own_iter, None)

    def encoded() -> list[bytes] | None:
        b = next(own_iter, None)
        return None if b is None else [v.encode("utf-8") for v in b]

    single: bytes | None = None
    if start < own_batches:
        single, _ = blinder.round(encoded(), [])
    for i in range(start, rounds):
        if i < own_batches:
            assert single is not None
            for p in peers:
                transport.send(p, tags.single(i), single)
            if progress:
                progress("hash+blind own ids", min(n, (i + 1) * batch_size), n)
        senders = [p for p in peers if i < peer_batches[p]]
        incoming = [_recv_batch(transport, p, tags.single(i), i, POINT_LEN, "singly-blinded") for p in senders]
        for p, buf in zip(senders, incoming):
            k = len(buf) // POINT_LEN
            if done_peer[p] + k > peer_info[p][0]:
                raise ProtocolError(f"party '{me}': party '{p}' sent more than the {peer_info[p][0]} ids it announced")
        nxt = encoded() if i + 1 < own_batches else None
        single, doubles = blinder.round(nxt, incoming)
        del incoming
        for p, dbl in zip(senders, doubles):
            transport.send(p, tags.double(i), dbl)
            k = len(dbl) // MATCH_LEN
            pd[p][done_peer[p] : done_peer[p] + k] = np.frombuffer(dbl, dtype=f"S{MATCH_LEN}")
            peer_spans[p].append((done_peer[p], done_peer[p] + k))
            done_peer[p] += k
            if progress:
                progress(f"blind ids of {p}", done_peer[p], peer_info[p][0])
        if i < own_batches:
            lo, hi = i * batch_size, min(n, (i + 1) * batch_size)
            for p in peers:
                buf = transport.recv(p, tags.double(i))
                if len(buf) != (hi - lo) * MATCH_LEN:
                    raise ProtocolError(f"party '{me}': doubly-blinded batch {i} from party '{p}' has {len(buf)} "
                                        f"bytes, expected {hi - lo}*{MATCH_LEN}")
                od[p][lo:hi] = np.frombuffer(buf, dtype=f"S{MATCH_LEN}")
        ckpt.save_round(i + 1, blinder.key, _round_arrays(i, peers, n, batch_size, peer_spans, od, pd))
    for p in peers:
        if done_peer[p] != peer_info[p][0]:
            raise ProtocolError(f"party '{me}': party '{p}' sent {done_peer[p]} ids, expected {peer_info[p][0]}")
    return rounds


class _Lookup:
    """Exact lookup in an array of 16-byte values, sorted by their first 8 bytes as integers.

    Sorting fixed-width byte strings is ~10x slower than sorting uint64; the 64-bit
    prefix is unique with overwhelming probability (and checked: if not, the full
    16 bytes are used), and every hit is confirmed on all 16 bytes.
    """

    def __init__(self, values: np.ndarray, me: str, what: str) -> None:
        self.values = values
        self.keys = values.view("<u8")[::2]
        self.order = np.argsort(self.keys, kind="stable")
        sk = self.keys[self.order]
        self.by_key = not bool(np.any(sk[1:] == sk[:-1]))
        if not self.by_key:
            self.order = np.argsort(values, kind="stable")
            sv = values[self.order]
            if np.any(sv[1:] == sv[:-1]):
                raise ProtocolError(f"party '{me}': {what} contain repeated values (misbehaving peer or corrupted stream)")

    def find(self, q: np.ndarray) -> np.ndarray:
        """Position of each query value in ``values``, or -1 (8 bytes per query; temporaries per chunk only)."""
        out = np.full(len(q), -1, dtype=np.int64)
        if len(self.values) == 0:
            return out
        for lo in range(0, len(q), _FIND_CHUNK):
            c = q[lo : lo + _FIND_CHUNK]
            if self.by_key:
                i = np.searchsorted(self.keys, c.view("<u8")[::2], sorter=self.order)
            else:
                i = np.searchsorted(self.values, c, sorter=self.order)
            cand = self.order[np.clip(i, 0, len(self.values) - 1)]
            out[lo : lo + len(c)] = np.where(self.values[cand] == c, cand, -1)
        return out


# --------------------------------------------------------------------------- entry point


def run_psi(
    transport: Transport,
    ids: Sequence[str] | IdSource,
    parties: list[str],
    *,
    leader: str,
    min_size: int = 1,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    workers: int | None = None,
    pool: WorkerPool | None = None,
    source: str = "ids",
    tag_prefix: str = "psi",
    min_rule: str = "min_size",
    checkpoint: CheckpointStore | None = None,
    resume: bool = False,
) -> PsiResult:
    """Run this party's role of the PSI; every party in ``parties`` calls it with the same ``parties``/``leader``.

    ``ids``: this party's customer ids, already normalized (a :class:`fedcredit.data.Table`'s
    ids, or :func:`fedcredit.data.normalize_ids`), or an :class:`IdSource` stream of them
    (:func:`fedcredit.data.read_ids_stream`: bounded memory); an id that is not, or a
    duplicate, is an error naming ``source``.  Returns this party's own ids of the
    intersection of *all* parties' sets, in an order identical at every party (a list, or
    for a stream one Arrow column, :class:`fedcredit.data.IdColumn`).
    ``progress(stage, done, total)`` is called per batch.  ``pool``: the compute pool that
    blinds (default :func:`fedcredit.compute.default_pool` for >= 20,000 own ids, else
    inline); ``workers`` is shorthand for ``WorkerPool(workers, "processes")`` (0 or 1:
    inline).  ``min_size``: the smallest intersection this party accepts
    (``min_rule`` says who set it); every party announces its own in its hello, the leader
    refuses below the largest one before it reveals the intersection, and every other
    party checks its own again when the result arrives.

    ``checkpoint``: this party's own store; after each batch round it saves what it holds
    (its scalar once, then per round its received/computed doubly-blinded values), so that
    with ``resume`` every party agrees on the last round all of them hold and continues
    from the next one, to the same intersection in the same order.  The caller drops that
    progress (:func:`drop_progress`) once it has stored the result.
    """
    me = transport.me
    if me not in parties:
        raise ProtocolError(f"party '{me}' is not among the PSI parties {parties}")
    if leader not in parties:
        raise ProtocolError(f"PSI leader '{leader}' is not among the PSI parties {parties}")
    if len(set(parties)) != len(parties) or len(parties) < 2:
        raise ProtocolError(f"PSI needs at least two distinct parties, got {parties}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    peers = [p for p in parties if p != leader] if me == leader else [leader]
    tags = Tags(tag_prefix)

    src_ids: IdSource = ids if isinstance(ids, IdSource) else _SequenceIds(ids, source)
    if isinstance(ids, IdSource) and source == "ids":
        source = ids.source
    n = len(src_ids)
    if pool is None:
        if workers is not None:
            pool = WorkerPool(workers, "processes") if workers > 1 else WorkerPool(1, "inline")
        else:
            pool = default_pool() if n >= _PARALLEL_THRESHOLD else WorkerPool(1, "inline")
    blinder: _Blinder | None = None
    try:
        # 1. validate locally, tell peers (a failure aborts, so they stop waiting)
        try:
            if not n:
                raise DataError(f"party '{me}': {source} holds no ids; nothing to intersect")
            ids_digest = _scan(src_ids, batch_size, me, source, digest=checkpoint is not None)
        except DataError as e:
            transport.abort(str(e))
            raise
        for p in peers:
            transport.send(p, tags.hello, _hello(n, batch_size, min_size=min_size, min_rule=min_rule))
        hellos = {p: _read_hello(transport.recv(p, tags.hello), me, p) for p in peers}
        peer_info = {p: (h[0], h[1]) for p, h in hellos.items()}
        floor, floor_rule = min_size, min_rule  # the largest minimum any party announced decides
        for h in hellos.values():
            if h[2] > floor:
                floor, floor_rule = h[2], h[3]

        # 2. this party's key and the rounds already done (a resumed run agrees on the last round all hold)
        params = {"v": _VERSION, "parties": list(parties), "leader": leader, "batch_size": int(batch_size), "n": n,
                  "ids": ids_digest, "peers": {p: list(peer_info[p]) for p in peers}}
        ckpt = _Progress(checkpoint, params)
        # flat arrays, MATCH_LEN bytes per id: own ids doubly blinded by each peer; each peer's ids doubly blinded
        od = {p: np.empty(n, dtype=f"S{MATCH_LEN}") for p in peers}
        pd = {p: np.empty(peer_info[p][0], dtype=f"S{MATCH_LEN}") for p in peers}
        peer_spans: dict[str, list[tuple[int, int]]] = {p: [] for p in peers}  # each peer's batch i: rows lo..hi
        key, start = None, 0
        if resume:
            try:
                key, held = ckpt.load()
                _check_rounds(held, peers, n, batch_size, peer_info, me)
            except DataError as e:
                transport.abort(str(e))
                raise
            at = agree_step(transport, leader=leader, parties=parties, held=range(1, len(held) + 1),
                            tags=tags.batch_resume)
            if at:
                for i, arrays in enumerate(held[:at]):
                    for p in peers:
                        if f"od.{p}" in arrays:
                            v = arrays[f"od.{p}"].view(f"S{MATCH_LEN}")
                            od[p][i * batch_size : i * batch_size + len(v)] = v
                        if f"pd.{p}" in arrays:
                            v = arrays[f"pd.{p}"].view(f"S{MATCH_LEN}")
                            lo = peer_spans[p][-1][1] if peer_spans[p] else 0
                            if lo + len(v) > len(pd[p]):
                                raise ProtocolError(f"party '{me}': PSI checkpoint holds more ids of party '{p}' "
                                                    "than it announced")
                            pd[p][lo : lo + len(v)] = v
                            peer_spans[p].append((lo, lo + len(v)))
                start = at
            else:
                key = None
            del held
        if key is None:
            key = PsiKey.generate()
            ckpt.start(key)  # owner-only, this party's own state dir; never sent anywhere
        blinder = _Blinder(pool, key)

        # 3. round by round: own batch out, the peers' batch blinded back, own batch back doubly blinded
        _exchange(transport, peers, blinder, src_ids, batch_size, peer_info, tags, progress, ckpt, start, od, pd,
                  peer_spans)
        blinder.close()

        # 4. per peer: intersect pairwise
        pair_masks: dict[str, np.ndarray] = {}
        pair_own: dict[str, _Lookup] = {}
        pair_sizes: dict[str, int] = {}
        for p in peers:
            own_d, peer_d = od.pop(p), pd.pop(p)
            own = _Lookup(own_d, me, f"the doubly-blinded ids returned by party '{p}'")
            mask = _Lookup(peer_d, me, f"the blinded ids sent by party '{p}'").find(own_d) >= 0
            pair_masks[p], pair_own[p], pair_sizes[p] = mask, own, int(mask.sum())
            del peer_d
            if progress:
                progress(f"intersect with {p}", int(mask.sum()), n)
    finally:
        if blinder is not None:
            blinder.close()

    # 5. the leader fixes the final set and order and tells every peer; the others map it back
    ordered: np.ndarray
    if me == leader:
        final = np.logical_and.reduce([pair_masks[p] for p in peers])
        first = pair_own[peers[0]]
        ordered = first.order[final[first.order]]  # intersection rows in the order of their doubly-blinded values
        size = len(ordered)
        err = _size_error(size, floor, parties, me, source, floor_rule)
        for p in peers:
            meta = {"size": size, "error": err}
            body = b"" if err else pair_own[p].values[ordered].tobytes()  # below a minimum: reveal nothing
            transport.send(p, tags.final, json.dumps(meta).encode() + b"\n" + body)
        if err:
            raise DataError(err)
    else:
        vals = read_final(transport.recv(leader, tags.final), me, leader)
        ordered = pair_own[leader].find(vals)
        ok = (ordered >= 0) & pair_masks[leader][np.maximum(ordered, 0)]
        if not ok.all():
            raise ProtocolError(
                f"party '{me}': leader '{leader}' announced {int((~ok).sum())} intersection values that are not in "
                "this party's pairwise intersection (misbehaving leader)"
            )
        if len(parties) == 2 and len(ordered) != pair_sizes[leader]:
            raise ProtocolError(
                f"party '{me}': leader '{leader}' announced {len(ordered)} common ids, this party computed "
                f"{pair_sizes[leader]}"
            )
        size = len(ordered)
        err = _size_error(size, min_size, parties, me, source, min_rule)  # our own floor, whatever the leader did
        if err:
            raise DataError(err)

    if isinstance(src_ids, _SequenceIds):
        common: Sequence[str] = [src_ids.ids[i] for i in ordered.tolist()]
    else:
        common = IdColumn.gather(src_ids.batches(), ordered)
    return PsiResult(
        intersection_ids=common,
        size=size,
        indices=ordered.astype(np.int64),
        own_size=n,
        peer_sizes={p: peer_info[p][0] for p in peers},
        pairwise_sizes=pair_sizes,
    )


def _check_rounds(held: list[dict[str, np.ndarray]], peers: list[str], n: int, batch_size: int,
                  peer_info: dict[str, tuple[int, int]], me: str) -> None:
    """Each checkpointed round holds exactly the values of that round (sizes from the run's parameters)."""
    for i, arrays in enumerate(held):
        want: dict[str, int] = {}
        for p in peers:
            if i * batch_size < n:
                want[f"od.{p}"] = min(batch_size, n - i * batch_size) * MATCH_LEN
            if i < peer_info[p][1]:
                want[f"pd.{p}"] = -1  # the peer's batch size is its own: any positive multiple
        ok = set(arrays) == set(want) and all(
            arrays[k].ndim == 1 and (len(arrays[k]) == w if w >= 0 else len(arrays[k]) > 0 and not len(arrays[k]) % MATCH_LEN)
            for k, w in want.items())
        if not ok:
            raise DataError(f"party '{me}': PSI checkpoint {BATCH_STAGE}-{i + 1:08d}.ckpt does not hold round {i}'s "
                            "values for this run")


def _size_error(size: int, min_size: int, parties: list[str], me: str, source: str,
                rule: str = "min_size") -> str | None:
    if size == 0:
        return f"PSI: the intersection of parties {parties} is empty (at '{me}', {source}); check that all parties use the same id column and format"
    if size < min_size:
        return (f"PSI: the intersection of parties {parties} has {size} ids, below the configured min_size {min_size} "
                f"(rule {rule}; at '{me}', {source})")
    return None


def save_intersection(path: str | os.PathLike[str], result: PsiResult) -> None:
    """Store the aligned intersection (one id per line, common order) with owner-only permissions."""
    write_text(Path(path), "".join(i + "\n" for i in result.intersection_ids))


def load_intersection(path: str | os.PathLike[str]) -> list[str]:
    """Read ids written by :func:`save_intersection`."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]
