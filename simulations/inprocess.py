"""Threaded in-process federations for tests and benchmarks: every role a thread of this process.

One generic runner, :func:`run_roles`: one thread per role over a
:class:`fedcredit.transport.InMemoryHub`; the first error (in order of failure) is
re-raised in the caller's thread, and a failed role is aborted on the hub
(``Transport.abort``, the same call a deployed party makes over the relay), so its peers
stop waiting for it instead of waiting out their timeouts.  :mod:`simulations.vertical_sim`
runs the deployment's party code with it.

On top of it, the protocols' whole-federation helpers (they used to live in the
protocol modules): :func:`run_secureboost_inprocess` and :func:`run_vertical_lr_inprocess`.
Rows are aligned by a plain id intersection (SecureBoost) or by the real PSI protocol
(vertical LR, unless ``psi=False``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fedcredit.compute import WorkerPool
from fedcredit.data import Table, split_by_ids, table_from_frame
from fedcredit.errors import DataError, FedCreditError, PeerAborted, ProtocolError
from fedcredit.protocols import secureboost as sb
from fedcredit.protocols import vertical_lr as vlr
from fedcredit.protocols.psi import run_psi
from fedcredit.transport import InMemoryHub, Observer, Transport

__all__ = [
    "run_roles",
    "SecureBoostInProcessResult",
    "run_secureboost_inprocess",
    "VerticalLRInProcessResult",
    "run_vertical_lr_inprocess",
]

T = TypeVar("T")
Progress = Callable[[str, int, int], None]

def run_roles(
    hub: InMemoryHub,
    roles: Mapping[str, Callable[[Transport], T]],
    *,
    join_timeout: float = 60.0,
    timeout_s: float | None = None,
    name: str = "party",
) -> dict[str, T]:
    """Run ``roles[p](endpoint of p)`` for every party ``p``, each in its own thread; return their results.

    A role that fails is aborted on the hub (``Transport.abort``): its peers stop waiting
    for it, and the first failure — not the ``PeerAborted`` it caused elsewhere — is
    re-raised here.  ``timeout_s`` bounds the whole run (every role is then aborted).  A
    role still running ``join_timeout`` seconds after the others is reported as stuck.
    """
    done = threading.Condition()
    results: dict[str, T] = {}
    errors: list[tuple[str, BaseException]] = []  # in order of failure: the first is the cause
    finished: set[str] = set()

    def role_thread(p: str, fn: Callable[[Transport], T]) -> None:
        try:
            results[p] = fn(hub.endpoint(p))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            with done:
                errors.append((p, e))
            hub.abort_from(p, f"{type(e).__name__}: {e}")
        finally:
            with done:
                finished.add(p)
                done.notify_all()

    threads = {p: threading.Thread(target=role_thread, args=(p, fn), name=f"{name}-{p}", daemon=True)
               for p, fn in roles.items()}
    for t in threads.values():
        t.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with done:
        while len(finished) < len(threads) and not errors:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                for p in threads:
                    hub.abort_from(p, f"the in-process run exceeded its {timeout_s} s bound")
                break
            done.wait(timeout=left)
    for t in threads.values():
        t.join(timeout=join_timeout)
    causes = [(p, e) for p, e in errors if not isinstance(e, PeerAborted)] or errors
    if causes:
        p, e = causes[0]
        if isinstance(e, FedCreditError) and f"'{p}'" not in str(e):
            try:
                named = type(e)(f"{name} '{p}': {e}")  # our error classes take one message
            except TypeError:
                raise e from None
            raise named from e
        raise e
    stuck = [p for p, t in threads.items() if t.is_alive() or p not in results]
    if stuck:
        raise ProtocolError(f"in-process run: {stuck} did not finish within {timeout_s or join_timeout} s")
    return results


# --------------------------------------------------------------------------- SecureBoost


@dataclass
class SecureBoostInProcessResult:
    label: sb.SecureBoostResult
    passive_models: dict[str, sb.PassiveModelPart]
    bytes_sent: dict[str, int]
    wall_seconds: float


def run_secureboost_inprocess(
    guest_df: Any,
    host_dfs: Mapping[str, Any],
    cfg: sb.SecureBoostConfig | None = None,
    *,
    test_ids: set[str] | frozenset[str] | None = None,
    guest_name: str = "guest",
    id_col: str = "id",
    label_col: str = "y",
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    observers: Sequence[Observer] = (),
) -> SecureBoostInProcessResult:
    """Whole SecureBoost federation in one process over an :class:`InMemoryHub` (one thread per party).

    Rows are aligned by a plain id intersection here (the deployment path runs PSI);
    ``test_ids`` are held out and scored with the joint inference protocol.
    """
    cfg = cfg or sb.SecureBoostConfig()
    guest = table_from_frame(guest_df, party=guest_name, source=f"{guest_name} frame", id_col=id_col, label_col=label_col)
    hosts = {p: table_from_frame(df, party=p, source=f"{p} frame", id_col=id_col) for p, df in host_dfs.items()}
    common = set(guest.ids)
    for t in hosts.values():
        common &= set(t.ids)
    order = [i for i in guest.ids if i in common]
    if not order:
        raise DataError(f"no id is shared by {guest_name} and {sorted(hosts)}")
    guest = guest.align(order)
    hosts = {p: t.align(order) for p, t in hosts.items()}
    tid = frozenset(test_ids or ())
    g_train, g_test = split_by_ids(guest, tid)
    h_split = {p: split_by_ids(t, tid) for p, t in hosts.items()}

    hub = InMemoryHub(default_timeout=cfg.timeout_s)
    hub.observers.extend(observers)

    def label(tr: Transport) -> Any:
        return sb.run_secureboost_label(
            tr, g_train, list(hosts), cfg, progress, test_table=g_test if len(g_test) else None, out_dir=out_dir
        )

    def passive(p: str) -> Callable[[Transport], Any]:
        tr_, te = h_split[p]
        return lambda tr: sb.run_secureboost_passive(tr, tr_, guest_name, cfg, test_table=te if len(te) else None)

    t0 = time.perf_counter()
    results = run_roles(hub, {guest_name: label, **{p: passive(p) for p in hosts}}, name="secureboost")
    return SecureBoostInProcessResult(
        results[guest_name], {p: results[p] for p in hosts}, dict(hub.bytes_sent), time.perf_counter() - t0
    )


# --------------------------------------------------------------------------- vertical LR


@dataclass
class VerticalLRInProcessResult:
    """Everything a test or benchmark wants from one in-process run (PSI, training, scoring)."""

    label: vlr.LabelResult
    passives: dict[str, vlr.PassiveResult]
    intersection_size: int
    psi_seconds: float
    train_seconds: float
    wall_seconds: float
    bytes_by_sender: dict[str, int]
    psi_bytes: int
    train_bytes: int


def run_vertical_lr_inprocess(
    guest: Table,
    hosts: Mapping[str, Table],
    cfg: vlr.VerticalLRConfig = vlr.VerticalLRConfig(),
    *,
    test_ids: set[str] | frozenset[str] | None = None,
    psi: bool = True,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    observers: Sequence[Observer] = (),
    hub_timeout: float = 120.0,
    pool: WorkerPool | None = None,
) -> VerticalLRInProcessResult:
    """Whole vertical LR federation in one process (threads over an :class:`InMemoryHub`): PSI, alignment, training, scoring.

    ``guest`` is the label party's table (with ``y``), ``hosts`` the passive parties'
    tables.  ``test_ids`` (e.g. the homo test ids) are held out and scored jointly.
    ``observers`` see every message (leakage tests).  ``pool``: every party's HE work (default
    :func:`fedcredit.compute.default_pool`, inline: the parties already share this process's cores).
    """
    hub = InMemoryHub(default_timeout=hub_timeout)
    hub.observers.extend(observers)
    parties = [guest.party, *hosts]
    tables = {guest.party: guest, **dict(hosts)}
    t_start = time.perf_counter()

    def psi_role(p: str) -> Callable[[Transport], Any]:
        return lambda tr: run_psi(tr, tables[p].ids, parties, leader=guest.party, source=tables[p].source)

    aligned = dict(tables)
    size = len(guest)
    if psi:
        found = run_roles(hub, {p: psi_role(p) for p in parties}, name="psi")
        aligned = {p: tables[p].take(found[p].indices) for p in parties}
        size = found[guest.party].size
    psi_seconds = time.perf_counter() - t_start
    psi_bytes = sum(hub.bytes_sent.values())

    splits = {p: split_by_ids(t, test_ids) if test_ids else (t, None) for p, t in aligned.items()}
    passives = list(hosts)

    def role(p: str) -> Callable[[Transport], Any]:
        tr_, te = splits[p]
        if p == guest.party:
            return lambda tr: vlr.run_vertical_lr_label(tr, tr_, passives, cfg, test=te, progress=progress, out_dir=out_dir,
                                                        pool=pool)
        return lambda tr: vlr.run_vertical_lr_passive(tr, tr_, guest.party, cfg, test=te, out_dir=out_dir, pool=pool)

    results = run_roles(hub, {p: role(p) for p in parties}, name="vlr")
    wall = time.perf_counter() - t_start
    label_res: vlr.LabelResult = results[guest.party]
    return VerticalLRInProcessResult(
        label=label_res,
        passives={p: results[p] for p in passives},
        intersection_size=size,
        psi_seconds=psi_seconds,
        train_seconds=label_res.train_seconds,
        wall_seconds=wall,
        bytes_by_sender=dict(hub.bytes_sent),
        psi_bytes=psi_bytes,
        train_bytes=sum(hub.bytes_sent.values()) - psi_bytes,
    )
