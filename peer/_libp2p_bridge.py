"""A trio event loop in its own thread, and calls between it and the daemon's asyncio loop.

py-libp2p runs on trio; the daemon runs on asyncio (uvloop). `TrioThread` owns one thread
running `trio.run` around a nursery, and crosses between the two loops in both directions
without blocking either:

- asyncio -> trio (`call`): the function is started in the nursery through the trio token
  (`run_sync_soon`); its result or exception comes back through `call_soon_threadsafe` into
  an asyncio future. Cancelling the awaiting asyncio task cancels the trio task's scope.
- trio -> asyncio (`to_asyncio`): `run_coroutine_threadsafe`, and the trio task sleeps on a
  `trio.Event` that the future's done callback sets through the token. Cancelling the trio
  task cancels the asyncio task.

Rule: no exception of a bridged call escapes into the nursery (that would stop every other
call): each is handed to its caller. `stop` cancels the nursery and joins the thread, and
every call still waiting then fails with `BridgeClosed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import trio

from ._errors import PeerError

log = logging.getLogger("dfdaemon.libp2p")

T = TypeVar("T")


class BridgeClosed(PeerError):
    """The trio thread is not running (never started, or stopped)."""


class TrioThread:
    """`trio.run` in a daemon thread, bridged to the asyncio loop that started it."""

    def __init__(self, name: str = "trio") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._crash: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._nursery is not None

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery of long-lived trio tasks (use from the trio thread only)."""
        if self._nursery is None:
            raise BridgeClosed(f"trio thread {self.name} is not running")
        return self._nursery

    def start(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        """Start the thread (bridged to `loop`) and wait until trio runs."""
        if self._thread is not None:
            raise BridgeClosed(f"trio thread {self.name} was started before")
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._nursery is None:
            raise BridgeClosed(f"trio thread {self.name} did not start: {self._crash!r}")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._crash = exc
            log.error("trio thread %s died", self.name, exc_info=exc)
        finally:
            self._nursery = None
            self._ready.set()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._token = trio.lowlevel.current_trio_token()
            self._nursery = nursery
            self._ready.set()
            await trio.sleep_forever()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything running in trio and join the thread (blocking)."""
        nursery, token = self._nursery, self._token
        if nursery is not None and token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(nursery.cancel_scope.cancel)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("trio thread %s did not stop within %.1fs", self.name, timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """`stop` without blocking the asyncio loop."""
        await asyncio.to_thread(self.stop, timeout)

    def run_blocking(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float) -> T:
        """`fn(*args)` in trio, blocking this (non-trio) thread until it returns: for start-up
        from synchronous code. Fails with `TimeoutError` after `timeout` seconds."""
        token = self._token
        if token is None or self._nursery is None:
            raise BridgeClosed(f"trio thread {self.name} is not running")

        async def bounded() -> T:
            with trio.fail_after(timeout):
                return await fn(*args)

        try:
            return trio.from_thread.run(bounded, trio_token=token)
        except trio.TooSlowError as exc:
            raise TimeoutError(f"{self.name}: no answer within {timeout}s") from exc
        except trio.RunFinishedError as exc:
            raise BridgeClosed(f"trio thread {self.name} has stopped") from exc

    # --- asyncio -> trio -------------------------------------------------------------------

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `fn(*args)` run as a trio task, from the asyncio loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        scope = trio.CancelScope()
        self._soon(self._spawn, fn, args, scope, future)
        try:
            return await future
        except asyncio.CancelledError:
            self._soon_quietly(scope.cancel)
            raise

    def _soon(self, fn: Callable[..., object], *args: Any) -> None:
        token = self._token
        if token is None or self._nursery is None:
            raise BridgeClosed(f"trio thread {self.name} is not running")
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError as exc:
            raise BridgeClosed(f"trio thread {self.name} has stopped") from exc

    def _soon_quietly(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(BridgeClosed):
            self._soon(fn)

    def _spawn(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        scope: trio.CancelScope,
        future: asyncio.Future[T],
    ) -> None:
        if self._nursery is None:
            self._resolve(future, exc=BridgeClosed(f"trio thread {self.name} has stopped"))
            return
        self._nursery.start_soon(self._called, fn, args, scope, future)

    async def _called(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        scope: trio.CancelScope,
        future: asyncio.Future[T],
    ) -> None:
        resolved = False
        try:
            with scope:
                try:
                    result = await fn(*args)
                except Exception as exc:
                    self._resolve(future, exc=exc)
                else:
                    self._resolve(future, result=result)
                resolved = True
        finally:
            if not resolved:  # cancelled: by the caller, or the thread is stopping
                self._resolve(future, exc=BridgeClosed(f"call cancelled in {self.name}"))

    def _resolve(
        self, future: asyncio.Future[T], *, result: Any = None, exc: BaseException | None = None
    ) -> None:
        def settle() -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(settle)

    # --- trio -> asyncio -------------------------------------------------------------------

    async def to_asyncio(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await a coroutine run on the asyncio loop, from a trio task."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()
