"""A party's compute pool: its HE work (histograms, encryption, PSI blinding, LR products) on worker processes.

Why a pool of *stateful sessions*: the expensive part of a party's HE work needs state that is
costly to ship per call (a CKKS context, a PSI scalar, pre-encoded masks).  A session boots its
workers once with ``init(arg)`` and then maps ``fn(state, item)`` over items, so per-call traffic
is only the item.  One interface, three engines:

* ``inline`` — in this process (tests, tiny tables, ``workers = 1``);
* ``processes`` — local worker processes (default; ``workers = 0`` means the cores this machine has);
* ``ray`` — the same sessions as Ray actors on an existing Ray cluster (a party whose data outgrows
  one machine); Flower's simulation engine already uses Ray.

Functions given to a session must be module-level (picklable); items and results are bytes or
numpy arrays.  Results come back in input order, with a bounded number of items in flight so
memory stays flat on long streams.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Literal, TypeVar

from fedcredit.errors import ConfigError

__all__ = ["Engine", "WorkerPool", "Session", "configure", "default_pool"]

Engine = Literal["inline", "processes", "ray"]
S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

_state: Any = None  # the worker process's session state (processes engine)


def _boot(init: Callable[[Any], Any], arg: Any) -> None:
    global _state
    _state = init(arg)


def _call(fn: Callable[[Any, Any], Any], item: Any) -> Any:
    return fn(_state, item)


class Session(Generic[S]):
    """Workers that ran ``init(arg)`` once; :meth:`map` runs ``fn(state, item)`` on them."""

    def __init__(self, pool: WorkerPool, init: Callable[[Any], S], arg: Any) -> None:
        self.workers = pool.workers
        self._inline: S | None = None
        self._ex: cf.ProcessPoolExecutor | None = None
        if pool.engine == "inline" or pool.workers <= 1:
            self._inline = init(arg)
        elif pool.engine == "processes":
            # forkserver: never fork a process that runs gRPC threads
            self._ex = cf.ProcessPoolExecutor(
                max_workers=pool.workers, mp_context=mp.get_context("forkserver"), initializer=_boot, initargs=(init, arg)
            )
        else:
            raise ConfigError(f"compute engine {pool.engine!r} is not available in this build")

    def map(self, fn: Callable[[S, T], R], items: Iterable[T], *, in_flight: int | None = None) -> Iterator[R]:
        """``fn(state, item)`` for each item, in input order, at most ``in_flight`` items queued."""
        if self._ex is None:
            for it in items:
                yield fn(self._inline, it)  # type: ignore[arg-type]
            return
        limit = in_flight or 2 * self.workers
        q: deque[cf.Future[R]] = deque()
        for it in items:
            q.append(self._ex.submit(_call, fn, it))
            if len(q) >= limit:
                yield q.popleft().result()
        while q:
            yield q.popleft().result()

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None

    def __enter__(self) -> Session[S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerPool:
    """How many workers a party gives its HE work, and on which engine (``[compute]`` in party.toml)."""

    def __init__(self, workers: int = 0, engine: Engine = "processes") -> None:
        if workers < 0:
            raise ConfigError(f"[compute].workers: expected 0 (= all cores) or a positive count, got {workers}")
        self.workers = workers or (os.cpu_count() or 1)
        self.engine: Engine = engine

    def session(self, init: Callable[[Any], S], arg: Any = None) -> Session[S]:
        return Session(self, init, arg)


_default = WorkerPool(1, "inline")


def configure(pool: WorkerPool) -> None:
    """Set this process's pool (the party daemon does, from its config)."""
    global _default
    _default = pool


def default_pool() -> WorkerPool:
    """The pool protocols use when none is passed explicitly (inline until :func:`configure`)."""
    return _default
