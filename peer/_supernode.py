"""The supernode's HTTP API as async calls: one method per endpoint, msgpack bodies.

Rule: this is the one place aiohttp exceptions met while talking to the supernode are
translated: no answer, a timeout or a 5xx is `SupernodeUnavailable` (callers fall back to
the origin), a 404 `unknown_peer` is `UnknownPeer` (register again), any other 4xx is
`SupernodeRefused`; each names the path and carries the status and error code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import aiohttp

from protocol import (
    Announce,
    Heartbeat,
    HeartbeatAnswer,
    Leave,
    Message,
    PieceResults,
    ProtocolError,
    Register,
    RegisterAnswer,
    ScheduleAnswer,
    ScheduleRequest,
    SeedTaskBatch,
    SeedTaskFailed,
    Withdraw,
    decode,
    encode,
)

from ._errors import SupernodeRefused, SupernodeUnavailable, UnknownPeer

M = TypeVar("M", bound=Message)
MSGPACK = "application/msgpack"
API = "/api/v1"


class SupernodeClient:
    """Talks to one supernode (`url` like `http://127.0.0.1:8002`) with the cluster token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Accept": MSGPACK, "Content-Type": MSGPACK}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 2.0))
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- endpoints ----------------------------------------------------------------------

    async def register(self, msg: Register) -> RegisterAnswer:
        return await self._post("/peers/register", msg, RegisterAnswer)

    async def heartbeat(self, msg: Heartbeat) -> HeartbeatAnswer:
        return await self._post("/peers/heartbeat", msg, HeartbeatAnswer)

    async def leave(self, msg: Leave) -> None:
        await self._send("/peers/leave", msg)

    async def announce(self, msg: Announce) -> None:
        await self._send("/announce", msg)

    async def seed_task_failed(self, msg: SeedTaskFailed) -> None:
        await self._send("/seed-tasks/failed", msg)

    async def withdraw(self, msg: Withdraw) -> None:
        await self._send("/withdraw", msg)

    async def schedule(self, msg: ScheduleRequest) -> ScheduleAnswer:
        return await self._post("/schedule", msg, ScheduleAnswer)

    async def piece_results(self, msg: PieceResults) -> None:
        await self._send("/piece-results", msg)

    async def seed_tasks(self, peer_id: str, limit: int = 16) -> SeedTaskBatch:
        path = f"/seed-tasks?peer_id={peer_id}&limit={limit}"
        with _translated(self.url + API + "/seed-tasks"):
            async with self._http().get(self.url + API + path) as response:
                body = await _body(response)
            return _decoded(body, SeedTaskBatch)

    # --- plumbing -----------------------------------------------------------------------

    async def _post(self, path: str, msg: Message, answer: type[M]) -> M:
        with _translated(self.url + API + path):
            async with self._http().post(self.url + API + path, data=encode(msg, "msgpack")) as r:
                body = await _body(r)
            return _decoded(body, answer)

    async def _send(self, path: str, msg: Message) -> None:
        with _translated(self.url + API + path):
            async with self._http().post(self.url + API + path, data=encode(msg, "msgpack")) as r:
                await _body(r)


async def _body(response: aiohttp.ClientResponse) -> bytes:
    """The body of a 2xx answer; an error status raises with the supernode's error code."""
    body = await response.read()
    if response.status < 400:
        return body
    code, detail = _error_fields(body)
    where = f"{response.method} {response.url.path}: HTTP {response.status} {code}: {detail}"
    if response.status >= 500:
        raise SupernodeUnavailable(where, status=response.status, code=code)
    kind = UnknownPeer if code == "unknown_peer" else SupernodeRefused
    raise kind(where, status=response.status, code=code)


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        data = json.loads(body)
        return str(data.get("error", "")), str(data.get("detail", ""))[:300]
    except (ValueError, AttributeError):
        return "", body[:300].decode(errors="replace")


def _decoded(body: bytes, kind: type[M]) -> M:
    try:
        return decode(body, "msgpack", kind)
    except ProtocolError as exc:
        raise SupernodeRefused(f"the supernode answered a bad {kind.__name__}: {exc}") from exc


@contextmanager
def _translated(url: str) -> Iterator[None]:
    try:
        yield
    except TimeoutError as exc:
        raise SupernodeUnavailable(f"{url}: timed out") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise SupernodeUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
