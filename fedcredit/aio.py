"""One asyncio event loop on a background thread, for the small stream servers the daemons run.

Why: the coordinator's Flower front door and a party's fleet link are asyncio stream
servers, but both daemons are otherwise synchronous (gRPC servers, subprocesses).  One
helper gives both the same start (returns only once the coroutine has run, so a bind
error surfaces in the caller) and the same stop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["BackgroundLoop"]


class BackgroundLoop:
    """An event loop running forever on a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run ``coro`` on the loop and wait for its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, cleanup: Coroutine[Any, Any, Any] | None = None, timeout: float = 10.0) -> None:
        """Run ``cleanup`` (if any), cancel what is still running, stop the loop and join its thread."""
        if not self._thread.is_alive():
            if cleanup is not None:
                cleanup.close()
            return
        if cleanup is not None:
            try:
                self.run(cleanup, timeout)
            except Exception:  # noqa: BLE001 - stopping must not fail on a half-closed server
                pass

        async def _cancel_rest() -> None:
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self.run(_cancel_rest(), timeout)
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
