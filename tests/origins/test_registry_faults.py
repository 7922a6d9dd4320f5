"""Transient failures between the client and a real registry (through the fault proxy):
retried with backoff and recovered from, or given up on after the bound with a clear
error; client errors not retried; redirects followed without leaking credentials."""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from rafs._registry import (
    BadResponse,
    NotFound,
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    RetryPolicy,
)
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.registry import RegistryServer, free_port

from .helpers import push_image

QUICK = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, total=10.0)
REPO = "faults/app"


@pytest_asyncio.fixture
async def proxy(registry: RegistryServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(registry.host) as running:
        yield running


async def _blob(registry: RegistryServer, size: int = 100_000) -> tuple[bytes, str]:
    data = os.urandom(size)
    async with registry.client() as client:
        return data, await client.push_blob(REPO, data)


async def test_500s_are_retried_until_the_registry_answers(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    data, digest = await _blob(registry)
    proxy.status(2, 500)
    async with RegistryClient(proxy.host, retry=QUICK) as client:
        assert await client.get_blob(REPO, digest, range=(10, 1000)) == data[10:1010]
    assert proxy.actions() == ["status:500", "status:500", "pass"]


@pytest.mark.parametrize("code", [429, 502, 503, 504])
async def test_other_transient_statuses_are_retried(
    registry: RegistryServer, proxy: FaultProxy, code: int
) -> None:
    _, digest = await _blob(registry, 10)
    proxy.status(1, code)
    async with RegistryClient(proxy.host, retry=QUICK) as client:
        assert await client.head_blob(REPO, digest) == 10
    assert proxy.actions() == [f"status:{code}", "pass"]


async def test_connection_resets_are_retried(registry: RegistryServer, proxy: FaultProxy) -> None:
    async with registry.client() as client:
        digest = await push_image(client, REPO, "v1", [b"layer"])
    proxy.reset(3)
    async with RegistryClient(proxy.host, retry=QUICK) as client:
        assert (await client.get_manifest(REPO, "v1")).digest == digest
    assert proxy.actions() == ["reset:0"] * 3 + ["pass"]


async def test_a_body_cut_short_is_fetched_again(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    data, digest = await _blob(registry, 300_000)
    proxy.truncate(1, keep=5000)
    async with RegistryClient(proxy.host, retry=QUICK) as client:
        assert await client.get_blob(REPO, digest) == data
    assert proxy.actions() == ["truncate:5000", "pass"]


async def test_a_stream_cut_short_resumes_with_a_range(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    data, digest = await _blob(registry, 2_000_000)
    proxy.truncate(1, keep=700_000)
    async with RegistryClient(proxy.host, retry=QUICK) as client:
        pieces = [p async for p in client.stream_blob(REPO, digest, chunk_size=1 << 16)]
    assert b"".join(pieces) == data
    assert proxy.actions() == ["truncate:700000", "pass"]


async def test_a_slow_answer_times_out_and_is_retried(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    data, digest = await _blob(registry, 1000)
    proxy.delay(1, 2.0)
    async with RegistryClient(proxy.host, retry=QUICK, read_timeout=0.3) as client:
        started = time.monotonic()
        assert await client.get_blob(REPO, digest, range=(0, 100)) == data[:100]
        assert time.monotonic() - started < 1.5
    assert proxy.actions() == ["delay:2", "pass"]


async def test_a_push_is_retried_through_resets(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    data = os.urandom(600_000)
    proxy.reset(1).status(1, 503)
    async with RegistryClient(proxy.host, retry=QUICK, upload_chunk_size=200_000) as client:
        digest = await client.push_blob(REPO, data)
    async with registry.client() as client:
        assert await client.get_blob(REPO, digest) == data


async def test_gives_up_after_the_attempt_bound(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    _, digest = await _blob(registry, 10)
    proxy.status(10, 503)
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, total=10.0)
    async with RegistryClient(proxy.host, retry=policy) as client:
        with pytest.raises(RegistryUnavailable) as info:
            await client.get_blob(REPO, digest, range=(0, 5))
    message = str(info.value)
    assert re.search(r"gave up on GET blob sha256:\w+ bytes 0\+5 after 3 attempts", message)
    assert "HTTP 503" in message and "injected fault" in message and digest in message
    assert info.value.status == 503 and info.value.repo == REPO
    assert len(proxy.seen) == 3


async def test_gives_up_after_the_time_bound(registry: RegistryServer, proxy: FaultProxy) -> None:
    _, digest = await _blob(registry, 10)
    proxy.reset(1000)
    policy = RetryPolicy(attempts=1000, base_delay=0.05, max_delay=0.1, total=0.5)
    async with RegistryClient(proxy.host, retry=policy) as client:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="gave up on HEAD blob"):
            await client.head_blob(REPO, digest)
        assert time.monotonic() - started < 1.0
    assert 2 <= len(proxy.seen) < 20


async def test_dead_registry_is_unavailable_not_a_traceback() -> None:
    port = free_port()  # nothing listens there
    policy = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01)
    async with RegistryClient(f"127.0.0.1:{port}", retry=policy) as client:
        with pytest.raises(RegistryUnavailable, match="ClientConnectorError") as info:
            await client.get_manifest("any/repo", "v1")
    assert info.value.registry == f"127.0.0.1:{port}" and info.value.repo == "any/repo"


async def test_client_errors_are_not_retried(registry: RegistryServer, proxy: FaultProxy) -> None:
    async with RegistryClient(proxy.host, retry=QUICK) as client:
        with pytest.raises(NotFound):
            await client.get_blob(REPO, "sha256:" + "e" * 64)
        assert len(proxy.seen) == 1
        proxy.status(1, 400)
        with pytest.raises(RegistryError) as info:
            await client.head_blob(REPO, "sha256:" + "e" * 64)
    assert info.value.status == 400 and not isinstance(info.value, RegistryUnavailable)
    assert len(proxy.seen) == 2


# --- redirects -------------------------------------------------------------------------


class RedirectingRegistry:
    """A front that wants Basic auth and redirects blob GETs to a separate blob store."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.store_headers: list[dict[str, str]] = []
        self.front_port = self.store_port = 0
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        front = web.Application()
        front.router.add_get("/v2/{repo:.+}/blobs/{digest}", self._front_blob)
        front.router.add_get("/v2/loop/blobs/{digest}", self._loop)
        store = web.Application()
        store.router.add_get("/store/{digest}", self._store_blob)
        self.front_port = await self._serve(front)
        self.store_port = await self._serve(store)

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runners.append(runner)
        return port

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    async def _front_blob(self, request: web.Request) -> web.Response:
        if request.match_info["repo"] == "loop":
            return await self._loop(request)
        if request.headers.get("Authorization") != "Basic dTpw":  # u:p
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        target = f"http://127.0.0.1:{self.store_port}/store/{request.match_info['digest']}?sig=1"
        raise web.HTTPTemporaryRedirect(target)

    async def _loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(str(request.url))

    async def _store_blob(self, request: web.Request) -> web.Response:
        self.store_headers.append(dict(request.headers))
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        if match is None:
            return web.Response(body=self.data)
        first, last = int(match[1]), int(match[2])
        headers = {"Content-Range": f"bytes {first}-{last}/{len(self.data)}"}
        return web.Response(status=206, body=self.data[first : last + 1], headers=headers)


@pytest_asyncio.fixture
async def redirecting() -> AsyncIterator[RedirectingRegistry]:
    server = RedirectingRegistry(os.urandom(10_000))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_redirects_are_followed_without_the_credentials(
    redirecting: RedirectingRegistry,
) -> None:
    from rafs._registry import sha256_digest

    digest = sha256_digest(redirecting.data)
    host = f"127.0.0.1:{redirecting.front_port}"
    async with RegistryClient(host, username="u", password="p", retry=QUICK) as client:
        assert await client.get_blob("r/app", digest) == redirecting.data
        part = await client.get_blob("r/app", digest, range=(100, 50))
    assert part == redirecting.data[100:150]
    assert len(redirecting.store_headers) == 2
    assert all("Authorization" not in h for h in redirecting.store_headers)
    assert redirecting.store_headers[1]["Range"] == "bytes=100-149"


async def test_redirect_loop_is_a_bad_response(redirecting: RedirectingRegistry) -> None:
    host = f"127.0.0.1:{redirecting.front_port}"
    async with RegistryClient(host, retry=QUICK) as client:
        with pytest.raises(BadResponse, match="more than 5 redirects"):
            await client.get_blob("loop", "sha256:" + "a" * 64)
