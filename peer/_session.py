"""This peer's standing with the supernode: register, heartbeat, register again, leave.

Rule: the daemon never depends on the supernode being up. While it is unreachable the
session is not `registered`: mesh reads go straight to the origin, announcements wait, the
chunk server keeps serving, and registration is retried with capped exponential backoff;
once it answers again the peer registers anew and `on_registered` listeners run (the
announcer re-announces everything the cache holds). Seed tasks in heartbeat answers go to
`on_seed_tasks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from protocol import Heartbeat, Leave, Register, RegisterAnswer, SeedTask

from ._errors import SupernodeError, SupernodeRefused, SupernodeUnavailable, UnknownPeer
from ._metrics import PeerMetrics
from ._supernode import SupernodeClient

log = logging.getLogger("dfdaemon.supernode")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between registration attempts: `base` doubling up to `cap` seconds."""

    base: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        return float(min(self.cap, self.base * 2 ** min(attempt, 32)))


class SupernodeSession:
    """Registration and heartbeats in one background task (`run`)."""

    def __init__(
        self,
        client: SupernodeClient,
        registration: Register,
        metrics: PeerMetrics,
        *,
        uploads: Callable[[], int] = lambda: 0,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.registration = registration
        self.metrics = metrics
        self.uploads = uploads
        self.backoff = backoff or Backoff()
        self.interval = 10.0
        self.on_registered: list[Callable[[], None]] = []
        self.on_seed_tasks: Callable[[Sequence[SeedTask]], None] | None = None
        self._registered = False
        self._wake = asyncio.Event()

    @property
    def peer_id(self) -> str:
        return self.registration.peer_id

    @property
    def registered(self) -> bool:
        return self._registered

    async def run(self) -> None:
        """Forever: register (with backoff) while not registered, else heartbeat."""
        attempt = 0
        while True:
            if not self._registered:
                if await self._register():
                    attempt = 0
                else:
                    await self._sleep(self.backoff.delay(attempt))
                    attempt += 1
                    continue
            await self._sleep(self.interval)
            if self._registered:
                await self._heartbeat()

    async def _register(self) -> bool:
        try:
            answer = await self.client.register(self.registration)
        except SupernodeError as exc:
            log.warning("cannot register with %s: %s", self.client.url, exc)
            return False
        self._accept(answer)
        return True

    def _accept(self, answer: RegisterAnswer) -> None:
        self.interval = min(answer.heartbeat_interval_ms, answer.expire_after_ms // 3) / 1000
        self._registered = True
        self.metrics.registered.set(1)
        log.info("registered as %s with %s", self.peer_id, self.client.url)
        for listener in self.on_registered:
            listener()

    async def _heartbeat(self) -> None:
        msg = Heartbeat(peer_id=self.peer_id, current_uploads=min(self.uploads(), 65_535))
        try:
            answer = await self.client.heartbeat(msg)
        except SupernodeError as exc:
            self.lost(str(exc))
            return
        if not answer.known:
            self.lost("the supernode forgot this peer")
        elif answer.seed_tasks and self.on_seed_tasks is not None:
            self.on_seed_tasks(answer.seed_tasks)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    def lost(self, reason: str) -> None:
        """The supernode is gone or forgot us: stop relying on it and register again."""
        if self._registered:
            log.warning("lost the supernode %s: %s", self.client.url, reason)
            self.metrics.supernode_lost.inc()
        self._registered = False
        self.metrics.registered.set(0)
        self._wake.set()

    async def call(self, request: Callable[[SupernodeClient], Awaitable[T]]) -> T | None:
        """`request(client)` if registered; None when not, or when the supernode failed."""
        if not self._registered:
            return None
        try:
            return await request(self.client)
        except (SupernodeUnavailable, UnknownPeer) as exc:
            self.lost(str(exc))
        except SupernodeRefused as exc:
            log.warning("the supernode refused a request: %s", exc)
        return None

    async def leave(self) -> None:
        """Tell the supernode we go (best effort: it expires us anyway)."""
        if not self._registered:
            return
        self._registered = False
        self.metrics.registered.set(0)
        try:
            await self.client.leave(Leave(peer_id=self.peer_id))
            log.info("left the mesh as %s", self.peer_id)
        except SupernodeError as exc:
            log.warning("leave failed: %s", exc)
