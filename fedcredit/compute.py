"""A party's compute pool: its HE work (histograms, encryption, PSI blinding, LR products) on worker processes.

Why a pool of *stateful sessions*: the expensive part of a party's HE work needs state that is
costly to ship per call (a CKKS context, a PSI scalar, pre-encoded masks).  A session boots its
workers once with ``init(arg)`` and then maps ``fn(state, item)`` over items, so per-call traffic
is only the item.  One interface, three engines:

* ``inline`` — in this process (tests, tiny tables, ``workers = 1``);
* ``processes`` — local worker processes (default; ``workers = 0`` means the cores this machine has);
* ``ray`` — the same sessions as Ray actors, on a local Ray instance or an existing Ray cluster
  (``ray_address``: a party whose data outgrows one machine); Flower's simulation engine already
  uses Ray, so it is the one distributed engine we support (``pip install 'fedcredit[ray]'``).

Two kinds of session:

* :meth:`WorkerPool.session` — every worker holds the *same* state; items go to whichever worker
  is free (encrypting chunks, multiplying columns, blinding ids);
* :meth:`WorkerPool.shards` — worker ``i`` holds its *own* state ``init(args[i])`` and
  :meth:`Shards.run` gives it its own item (a histogram pass over each worker's candidate
  groups: each shard's pre-encoded masks live in one worker only, so memory does not multiply).

Functions given to a session must be module-level (picklable); items and results are bytes or
numpy arrays.  Results come back in input order, with a bounded number of items in flight so
memory stays flat on long streams.  A worker that dies (killed, out of memory, a failing ``init``,
a native crash) is reported as a :class:`ComputeError` naming the party, the work and the engine,
and saying why: the worker's exit code or signal, and what it wrote when it failed (the ``init``
traceback, or a native crash's fault trace, captured in a per-session file); an exception raised
by ``fn`` itself is re-raised unchanged.  Closing a session stops its workers (no process outlives it).

The processes engine starts workers from a forkserver, which re-imports the parent program's
``__main__`` (in the forkserver and in every worker) before it runs anything: a program that
uses this pool must keep its main code under ``if __name__ == "__main__":`` (Python's rule for
the spawn and forkserver start methods).  ``party.appguard``'s task command, the ``__main__`` of
Flower's ClientApp process at a party, is written that way; tests/test_appguard.py checks it.

Every pool counts what ran remotely (:meth:`WorkerPool.usage`: sessions, items, worker pids),
so a party's run report can show its HE work really ran on its workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import faulthandler
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Generic, Literal, TypeVar

from fedcredit.errors import ConfigError, FedCreditError

__all__ = ["Engine", "ENGINES", "ComputeError", "WorkerPool", "Session", "Shards", "configure", "default_pool"]

Engine = Literal["inline", "processes", "ray"]
ENGINES: tuple[str, ...] = ("inline", "processes", "ray")
S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

_state: Any = None  # the worker process's session state (processes engine)
_errfile: Any = None  # the worker's failure file: init traceback, native crash trace (kept open for faulthandler)


class ComputeError(FedCreditError):
    """A compute worker died or could not start: names the party, the work and the engine."""


def _boot(init: Callable[[Any], Any], arg: Any, errpath: str | None = None) -> None:
    """Worker start: the session's state; on failure the traceback goes to ``errpath`` for the parent's error."""
    global _state, _errfile
    if errpath:
        _errfile = open(errpath, "a", encoding="utf-8")  # noqa: SIM115 - open for the worker's lifetime
        faulthandler.enable(_errfile)  # a segfault or abort in native code (TenSEAL, numpy) leaves its trace here
    try:
        _state = init(arg)
    except BaseException:
        if _errfile is not None:
            _errfile.write(traceback.format_exc())
            _errfile.flush()
        raise


def _call(fn: Callable[[Any, Any], Any], item: Any) -> Any:
    return fn(_state, item)


def _pid(_state: Any, _item: Any) -> int:
    """The worker's process id (tests: no worker outlives its session)."""
    return os.getpid()


class _RayWorker:
    """The body of one Ray actor: a session's state, booted once."""

    def __init__(self, init: Callable[[Any], Any], arg: Any) -> None:
        self.state = init(arg)

    def call(self, fn: Callable[[Any, Any], Any], item: Any) -> Any:
        return fn(self.state, item)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "[compute].engine = 'ray' needs Ray: pip install 'fedcredit[ray]' (ray==2.55.1, Flower's pin)"
        ) from None
    return ray


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _forkserver_state() -> str:
    """How this process's forkserver ended, if it did (peeked with WNOWAIT: multiprocessing still reaps it)."""
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if not pid:
        return ""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (ChildProcessError, OSError):
        return ""
    if info is None:  # the new worker itself died while it started
        return (f"; the forkserver (pid {pid}) is still running: the worker it started died before its session "
                "started (it could not re-import this program's __main__ or the session's functions; its stderr "
                "is this process's)")
    code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    return f"; the forkserver (pid {pid}) is gone ({_exit_text(code)}; its stderr is this process's)"


class _Workers:
    """The worker handles of one session, whatever the engine; ``submit`` to a given worker."""

    def __init__(self, pool: WorkerPool, what: str, boots: Sequence[tuple[Callable[[Any], Any], Any]], shared: bool,
                 party: str | None = None):
        self.pool, self.what, self.party = pool, what, party or pool.party
        self.n = len(boots) if not shared else pool.workers
        self.inline: list[Any] = []
        self.exs: list[cf.ProcessPoolExecutor] = []
        self.actors: list[Any] = []
        self._ray: Any = None
        self._procs: list[MutableMapping[int, Any]] = []  # each executor's pid -> Process (kept: exit codes after a death)
        self._errdir: str | None = None
        engine = pool.engine
        if engine == "inline" or (engine == "processes" and self.n <= 1):
            self.inline = [init(arg) for init, arg in (boots if not shared else boots[:1])]
            self.n = len(self.inline)
        elif engine == "processes":
            ctx = mp.get_context("forkserver")  # never fork a process that runs gRPC threads
            self._errdir = tempfile.mkdtemp(prefix="fedcredit-workers-")  # owner-only: the workers' failure files
            err = os.path.join(self._errdir, "failures.txt")
            if shared:
                init, arg = boots[0]
                self.exs = [cf.ProcessPoolExecutor(self.n, mp_context=ctx, initializer=_boot, initargs=(init, arg, err))]
            else:
                self.exs = [
                    cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=_boot, initargs=(init, arg, err))
                    for init, arg in boots
                ]
            self._procs = [ex._processes for ex in self.exs]
            pool._sessions += 1
        elif engine == "ray":
            ray = self._ray = pool._ray_ready()
            if shared:
                self.n = pool.workers
                boots = [boots[0]] * self.n
            actor = ray.remote(num_cpus=1)(_RayWorker)
            self.actors = [actor.remote(init, arg) for init, arg in boots]
            pool._sessions += 1
        else:
            raise ConfigError(f"[compute].engine: expected one of {', '.join(ENGINES)}, got {engine!r}")

    @property
    def remote(self) -> bool:
        return bool(self.exs or self.actors)

    def submit(self, i: int, fn: Callable[[Any, Any], Any], item: Any) -> Any:
        """A handle for ``fn(state, item)`` on worker ``i`` (shared process pools pick their own worker)."""
        self.pool._items += 1
        try:
            if self.actors:
                return self.actors[i % len(self.actors)].call.remote(fn, item)
            k = i % len(self.exs)
            handle = self.exs[k].submit(_call, fn, item)
            self.pool._worker_pids.update(self._procs[k])  # the executor starts its workers on submit
            return handle
        except BrokenProcessPool as e:
            raise self._died(e) from None
        except (OSError, EOFError) as e:  # starting a worker: the forkserver's pipe broke (it died)
            raise self._died(e, why=_forkserver_state()) from None

    def result(self, handle: Any, n: int) -> Any:
        """Wait for a handle; a dead worker becomes a :class:`ComputeError` naming the party and the work."""
        if self.actors:
            ray = self._ray
            try:
                return ray.get(handle)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                raise self._died(e, n) from None
        try:
            return handle.result()
        except BrokenProcessPool as e:
            raise self._died(e, n) from None

    def _why(self) -> str:
        """The dead workers' exit codes and what they wrote on failure (processes engine)."""
        for ex in self.exs:  # let the pool finish reaping first: two threads reading one exit status race (255)
            manager = getattr(ex, "_executor_manager_thread", None)
            if manager is not None:
                manager.join(timeout=10)
        dead = [(pid, p.exitcode) for procs in self._procs for pid, p in list(procs.items()) if p.exitcode is not None]
        # the pool SIGTERMs the survivors once one died: name the others first
        dead.sort(key=lambda d: d[1] == -signal.SIGTERM)
        parts = [f"worker {pid} {_exit_text(code)}" for pid, code in dead[:4]]
        text: str | None = None  # None: no worker of this session got as far as booting it
        if self._errdir:
            try:
                with open(os.path.join(self._errdir, "failures.txt"), encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except FileNotFoundError:
                pass
        lines = [ln.rstrip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            parts.append("it wrote: " + " | ".join(lines[-6:]))
        elif dead and text is None:
            parts.append("it died before its session started (it could not re-import this program's __main__ "
                         "or the session's functions; its stderr is this process's)")
        elif dead:
            parts.append("it left no traceback (killed, e.g. out of memory)")
        return ("; " + "; ".join(parts)) if parts else ""

    def _died(self, e: BaseException, n: int | None = None, why: str | None = None) -> ComputeError:
        at = f" at item {n}" if n is not None else ""
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        first = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"  # Ray: the cause is the last line
        if isinstance(e, OSError):
            first = f"{type(e).__name__}: {first}"
        if why is None:
            why = self._why()
        return ComputeError(
            f"party '{self.party}': a compute worker ({self.pool.engine} engine) died or failed to start "
            f"during {self.what}{at}: {first}{why}"
        )

    def close(self) -> None:
        for ex in self.exs:
            ex.shutdown(wait=True, cancel_futures=True)
        self.exs = []
        if self._errdir:
            shutil.rmtree(self._errdir, ignore_errors=True)
            self._errdir = None
        if self.actors:
            for a in self.actors:
                try:
                    self._ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001 - an actor that already died is gone: nothing to stop
                    pass
            self.actors = []


class Session(Generic[S]):
    """Workers that ran ``init(arg)`` once; :meth:`map` runs ``fn(state, item)`` on them."""

    def __init__(self, pool: WorkerPool, init: Callable[[Any], S], arg: Any, what: str = "HE work",
                 party: str | None = None) -> None:
        self._w = _Workers(pool, what, [(init, arg)], shared=True, party=party)
        self.workers = self._w.n

    def map(self, fn: Callable[[S, T], R], items: Iterable[T], *, in_flight: int | None = None) -> Iterator[R]:
        """``fn(state, item)`` for each item, in input order, at most ``in_flight`` items queued."""
        w = self._w
        if not w.remote:
            for it in items:
                yield fn(w.inline[0], it)
            return
        limit = in_flight or 2 * self.workers
        q: deque[Any] = deque()
        done = 0
        for k, it in enumerate(items):
            q.append(w.submit(k, fn, it))
            if len(q) >= limit:
                yield w.result(q.popleft(), done)
                done += 1
        while q:
            yield w.result(q.popleft(), done)
            done += 1

    def pids(self) -> list[int]:
        """Process ids of this session's workers (this process's for inline)."""
        if not self._w.remote:
            return [os.getpid()]
        if self._w.actors:
            return sorted(set(self._w.result(self._w.submit(i, _pid, None), i) for i in range(self._w.n)))
        return sorted(self._w.exs[0]._processes)  # the pool's live workers (started on first submit)

    def close(self) -> None:
        self._w.close()

    def __enter__(self) -> Session[S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Shards(Generic[S]):
    """One worker per shard: worker ``i`` ran ``init(args[i])``; :meth:`run` gives each its own item, in parallel."""

    def __init__(self, pool: WorkerPool, init: Callable[[Any], S], args: Sequence[Any], what: str = "HE work",
                 party: str | None = None) -> None:
        self._w = _Workers(pool, what, [(init, a) for a in args], shared=False, party=party)
        self.n = len(args)

    def run(self, fn: Callable[[S, T], R], items: Sequence[T]) -> list[R]:
        """``[fn(state_i, items[i]) for every shard i]``, the shards working at the same time."""
        if len(items) != self.n:
            raise ValueError(f"{len(items)} items for {self.n} shards")
        w = self._w
        if not w.remote:
            return [fn(st, it) for st, it in zip(w.inline, items, strict=True)]
        handles = [w.submit(i, fn, it) for i, it in enumerate(items)]
        return [w.result(h, i) for i, h in enumerate(handles)]

    def broadcast(self, fn: Callable[[S, T], R], item: T) -> list[R]:
        """The same item to every shard."""
        return self.run(fn, [item] * self.n)

    def pids(self) -> list[int]:
        return sorted(set(self.broadcast(_pid, None)))

    def close(self) -> None:
        self._w.close()

    def __enter__(self) -> Shards[S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerPool:
    """How many workers a party gives its HE work, and on which engine (``[compute]`` in party.toml).

    ``party`` names the party in errors; ``ray_address`` joins an existing Ray cluster (``None``:
    a local Ray instance started on first use and stopped by :meth:`close`).
    """

    def __init__(
        self, workers: int = 0, engine: Engine = "processes", *, ray_address: str | None = None, party: str = "this party"
    ) -> None:
        if workers < 0:
            raise ConfigError(f"[compute].workers: expected 0 (= all cores) or a positive count, got {workers}")
        if engine not in ENGINES:
            raise ConfigError(f"[compute].engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
        if ray_address and engine != "ray":
            raise ConfigError(f"[compute].ray_address is set but [compute].engine is {engine!r} (expected 'ray')")
        self._auto = workers == 0
        self.workers = workers or (os.cpu_count() or 1)
        self.engine: Engine = engine
        self.ray_address = ray_address
        self.party = party
        self._ray_started = False
        self._sessions = 0  # sessions started on workers outside this process
        self._items = 0  # items sent to those workers
        self._worker_pids: set[int] = set()  # processes engine: the pids of the workers its sessions started

    def usage(self) -> dict[str, Any]:
        """What this pool ran outside this process so far (a run report's ``compute`` section)."""
        return {"engine": self.engine, "workers": self.workers, "pid": os.getpid(), "sessions": self._sessions,
                "items": self._items, "worker_pids": sorted(self._worker_pids)}

    def _ray_ready(self) -> Any:
        """Ray, connected: joins ``ray_address`` or starts a local instance of ``workers`` CPUs once."""
        ray = _ray()
        if not ray.is_initialized():
            if self.ray_address:
                self._probe(self.ray_address)
            try:
                if self.ray_address:
                    ray.init(address=self.ray_address, log_to_driver=False)
                else:  # workers import session functions as this process does (same sys.path)
                    path = os.pathsep.join(p for p in sys.path if p)
                    ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                             runtime_env={"env_vars": {"PYTHONPATH": path}})
            except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
                where = f"the Ray cluster at {self.ray_address!r}" if self.ray_address else "a local Ray instance"
                raise ComputeError(f"party '{self.party}': cannot start {where} ([compute]): {e}") from None
            self._ray_started = True
            if self.ray_address and self._auto:
                self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return ray

    @property
    def parallel(self) -> bool:
        """Whether a session runs outside this process (protocols skip booting workers otherwise)."""
        return self.engine == "ray" or (self.engine == "processes" and self.workers > 1)

    def _probe(self, address: str) -> None:
        """A cluster address nobody serves fails in seconds, not after Ray's minute of GCS retries."""
        host, _, port = address.split("://", 1)[-1].rpartition(":")
        if not port.isdigit():
            return  # "auto" and the like: Ray resolves those itself
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as e:
            raise ComputeError(
                f"party '{self.party}': cannot reach the Ray cluster at {address!r} ([compute].ray_address): {e}"
            ) from None

    def session(
        self, init: Callable[[Any], S], arg: Any = None, *, what: str = "HE work", party: str | None = None
    ) -> Session[S]:
        """Workers sharing one state ``init(arg)``; ``what`` names the work and ``party`` (default: the
        pool's) the party in errors — in-process simulations run several parties on one pool."""
        return Session(self, init, arg, what, party)

    def shards(
        self, init: Callable[[Any], S], args: Sequence[Any], *, what: str = "HE work", party: str | None = None
    ) -> Shards[S]:
        """One worker per element of ``args``, each with its own state; ``what``/``party`` as :meth:`session`."""
        return Shards(self, init, args, what, party)

    def close(self) -> None:
        """Stop the Ray instance this pool started (sessions stop their own workers)."""
        if self._ray_started:
            _ray().shutdown()
            self._ray_started = False


_default = WorkerPool(1, "inline")


def configure(pool: WorkerPool) -> None:
    """Set this process's pool (the party daemon does, from its config)."""
    global _default
    _default = pool


def default_pool() -> WorkerPool:
    """The pool protocols use when none is passed explicitly (inline until :func:`configure`)."""
    return _default
