"""`MeshSource` against an in-process supernode and chunk servers on loopback: parents in
parallel, switching away from slow, busy, dead and lying parents, bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from peer import (
    BlobCatalog,
    BlobEntry,
    HttpChunkTransport,
    Mesh,
    MeshConfig,
    MeshSource,
    PeerMetrics,
    RateLimiter,
    SupernodeClient,
    SupernodeSession,
    SwitchPolicy,
    UploadSlots,
    make_chunk_app,
)
from protocol import Announce, Register, ScheduleRequest
from rafs import ChunkInfo
from rafs._cache import BlobCache
from rafs._chunksource import BlobRef, FetchedChunk, verify_chunk
from rafs._regerrors import RegistryUnavailable
from supernode import PolicyConfig, SupernodeConfig
from supernode import make_app as supernode_app
from supernode._keys import SUPERNODE
from tests.cache.blobs import Blob, make_blob

from .cluster import free_port

pytestmark = pytest.mark.timeout(30)

BLOB = "d" * 64
COUNT = 24


class CountingOrigin:
    """The origin: verified chunks of the blob, counted."""

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self.chunks = 0
        self.indices: Counter[int] = Counter()
        self.calls: list[float] = []  # time.monotonic() of each call

    async def get(self, ref: BlobRef, chunks: Sequence[ChunkInfo]) -> list[FetchedChunk]:
        self.calls.append(time.monotonic())
        self.chunks += len(chunks)
        self.indices.update(c.index for c in chunks)
        return [verify_chunk(ref, c, self.blob.stored[c.index]) for c in chunks]

    async def close(self) -> None:
        return None


@dataclass
class Parent:
    name: str
    cache: BlobCache
    uploads: UploadSlots
    metrics: PeerMetrics
    runner: web.AppRunner

    def served(self) -> float:
        value = self.metrics.registry.get_sample_value("dfdaemon_peer_bytes_out_total")
        return value or 0.0


@dataclass
class Mesh_:
    tmp: Path
    url: str
    app: web.Application
    blob: Blob
    client: SupernodeClient
    parents: list[Parent] = field(default_factory=list)

    async def join(self, name: str, url: str, *, seed: bool = False, chunks: int = COUNT) -> None:
        port = int(url.rsplit(":", 1)[1])
        host = f"host-{name}"
        await self.client.register(
            Register(peer_id=name, host_name=host, ip="127.0.0.1", upload_port=port,
                     http_url=url, seed=seed)
        )  # fmt: skip
        if chunks:
            await self.client.announce(
                Announce(peer_id=name, blob_id=BLOB, chunk_count=COUNT, ranges=((0, chunks),))
            )

    async def parent(
        self, name: str, *, rate: float | None = None, corrupt: bool = False, held: int = COUNT
    ) -> Parent:
        cache = BlobCache(self.tmp / name)
        cache.put_many(self.blob.ref, [self._chunk(i, corrupt) for i in range(COUNT)])
        limiter = RateLimiter(rate, burst=16384) if rate else None
        if limiter is not None:  # start with an empty bucket: a full one sends the first
            await limiter.acquire(16384)  # chunk at once, and a slow parent looks fast
        uploads, metrics = UploadSlots(16, limiter), PeerMetrics()
        runner = web.AppRunner(make_chunk_app(cache, metrics, uploads), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        found = Parent(name, cache, uploads, metrics, runner)
        self.parents.append(found)
        await self.join(name, f"http://127.0.0.1:{port}", chunks=held)
        return found

    def _chunk(self, index: int, corrupt: bool) -> FetchedChunk:
        good = self.blob.fetched(index)
        if not corrupt:
            return good
        bad = bytearray(good.stored)
        bad[0] ^= 0xFF
        return FetchedChunk(good.info, bytes(bad), good.data)  # as a rotten disk would

    async def requester(
        self, config: MeshConfig | None = None, name: str = "me"
    ) -> tuple[MeshSource, CountingOrigin, PeerMetrics]:
        metrics = PeerMetrics()
        reg = Register(peer_id=name, host_name=f"host-{name}", ip="127.0.0.1", upload_port=1,
                       http_url="http://127.0.0.1:1")  # fmt: skip
        session = SupernodeSession(SupernodeClient(self.url), reg, metrics)
        assert await session._register()
        mesh = Mesh(session, HttpChunkTransport(), metrics, config or MeshConfig())
        catalog = BlobCatalog()
        origin_url = f"http://127.0.0.1:1/v2/app/blobs/sha256:{BLOB}"
        chunks = dict(enumerate(self.blob.chunks))
        catalog.add(BlobEntry(self.blob.ref, COUNT, origin_url, chunks))
        origin = CountingOrigin(self.blob)
        self._closers.append(mesh.transport.close)
        self._closers.append(session.client.close)
        return MeshSource(mesh, catalog, origin), origin, metrics

    _closers: list[object] = field(default_factory=list)

    async def close(self) -> None:
        for closer in self._closers:
            assert callable(closer)
            await closer()
        for parent in self.parents:
            await parent.runner.cleanup()
            parent.cache.close()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh_]:
    policy = PolicyConfig(seed_retry_ms=100)
    config = SupernodeConfig(db_url=f"sqlite+aiosqlite:///{tmp_path / 'sn.db'}", policy=policy)
    app = supernode_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    blob = make_blob(BLOB, COUNT, min_size=16384, max_size=32768)
    found = Mesh_(tmp_path, url, app, blob, SupernodeClient(url))
    try:
        yield found
    finally:
        await found.close()
        await found.client.close()
        await runner.cleanup()


def _failures(metrics: PeerMetrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("dfdaemon_parent_failures_total", {"kind": kind})
    return value or 0.0


async def _get_all(source: MeshSource, blob: Blob) -> list[FetchedChunk]:
    got = await source.get(blob.ref, blob.chunks)
    assert [c.data for c in got] == blob.data
    return got


async def test_chunks_come_from_several_parents_in_parallel_and_are_reported(
    mesh: Mesh_,
) -> None:
    p1, p2 = await mesh.parent("p1"), await mesh.parent("p2")
    source, origin, _ = await mesh.requester(MeshConfig(batch_chunks=2))
    await _get_all(source, mesh.blob)
    assert origin.chunks == 0
    assert p1.served() > 0 and p2.served() > 0
    assert p1.served() + p2.served() == sum(len(s) for s in mesh.blob.stored)
    scheduler = mesh.app[SUPERNODE].scheduler
    assert all(scheduler.peer(p).successes >= 1 for p in ("p1", "p2"))  # type: ignore[union-attr]


async def test_a_slow_parent_stops_getting_batches(mesh: Mesh_) -> None:
    slow = await mesh.parent("slow", rate=10_000)
    fast = await mesh.parent("fast")
    switch = SwitchPolicy(slow_ratio=0.25, min_sample_bytes=16384)
    source, origin, _ = await mesh.requester(MeshConfig(batch_chunks=1, depth=1, switch=switch))
    started = time.monotonic()
    await _get_all(source, mesh.blob)
    total = sum(len(s) for s in mesh.blob.stored)
    assert time.monotonic() - started < 3  # the slow one alone needs about 10 s
    assert slow.served() < total / 3 < fast.served()
    assert fast.served() + slow.served() == total
    assert origin.chunks == 0


async def test_a_busy_parent_is_left_for_another(mesh: Mesh_) -> None:
    busy = await mesh.parent("busy")
    await mesh.parent("good")
    busy.uploads.in_flight = busy.uploads.capacity
    source, origin, metrics = await mesh.requester(MeshConfig(switch=SwitchPolicy(max_busy=1)))
    await _get_all(source, mesh.blob)
    assert busy.served() == 0 and origin.chunks == 0
    assert _failures(metrics, "busy") >= 1


async def test_a_dead_parent_is_switched_away_from(mesh: Mesh_) -> None:
    await mesh.join("dead", f"http://127.0.0.1:{free_port()}")
    good = await mesh.parent("good")
    source, origin, metrics = await mesh.requester()
    await _get_all(source, mesh.blob)
    assert origin.chunks == 0 and good.served() > 0
    assert _failures(metrics, "connect") >= 1


async def test_with_only_dead_parents_the_origin_serves_at_once(mesh: Mesh_) -> None:
    await mesh.join("dead", f"http://127.0.0.1:{free_port()}")
    source, origin, _ = await mesh.requester(MeshConfig(max_wait=10))
    started = time.monotonic()
    await _get_all(source, mesh.blob)
    assert time.monotonic() - started < 2
    assert origin.chunks == COUNT


async def test_waiting_on_a_seed_that_never_comes_is_bounded(mesh: Mesh_) -> None:
    await mesh.join("seed", f"http://127.0.0.1:{free_port()}", seed=True, chunks=0)
    source, origin, metrics = await mesh.requester(MeshConfig(max_wait=0.6))
    started = time.monotonic()
    await _get_all(source, mesh.blob)
    assert 0.5 < time.monotonic() - started < 3
    assert origin.chunks == COUNT
    assert (metrics.registry.get_sample_value("dfdaemon_schedule_requests_total") or 0) >= 2


async def test_a_lying_parent_is_distrusted_for_good_and_the_truth_comes_from_another(
    mesh: Mesh_,
) -> None:
    liar = await mesh.parent("liar", corrupt=True)
    await mesh.parent("good")
    source, _, metrics = await mesh.requester(MeshConfig(batch_chunks=4))
    await _get_all(source, mesh.blob)
    mismatches = metrics.registry.get_sample_value("dfdaemon_digest_mismatches_total") or 0
    assert liar.served() > 0 and mismatches >= 1  # both parents took batches at once
    assert mesh.app[SUPERNODE].scheduler.is_blacklisted("liar", BLOB)
    served = liar.served()
    await asyncio.gather(*(source.get(mesh.blob.ref, [c]) for c in mesh.blob.chunks))
    assert liar.served() == served  # never asked again for this blob


async def test_a_dead_only_parent_is_suspended_and_then_few_requesters_go_to_the_origin(
    mesh: Mesh_,
) -> None:
    await mesh.join("dead", f"http://127.0.0.1:{free_port()}")
    scheduler = mesh.app[SUPERNODE].scheduler
    policy = scheduler.config
    # the first failures: each requester fails against "dead", reports it, and goes to the
    # origin (named "dead" again, or by an origin allowance once it is suspended)
    first: list[CountingOrigin] = []
    while not scheduler.stats.suspensions and len(first) < 10:
        source, origin, _ = await mesh.requester(name=f"first{len(first)}")
        await _get_all(source, mesh.blob)
        first.append(origin)
    tipping = next(n for n in range(1, 20) if (1 - policy.ewma_alpha) ** n < policy.suspend_below)
    assert len(first) == tipping and all(o.chunks == COUNT for o in first)
    # the first ones keep their chunks to themselves; later requesters, all at once, are
    # never sent to "dead": a few go to the origin, the rest fetch from them
    later = [await mesh.requester(name=f"later{i}") for i in range(6)]

    async def fetch_then_serve(source: MeshSource, name: str) -> None:
        await _get_all(source, mesh.blob)
        await mesh.parent(name)  # holds and announces what it fetched

    await asyncio.gather(*(fetch_then_serve(s, f"later{i}") for i, (s, _, _) in enumerate(later)))
    per_chunk = sum((origin.indices for _, origin, _ in later), Counter[int]())
    assert max(per_chunk.values()) <= policy.origin_limit  # not once per requester
    assert all(_failures(metrics, "connect") == 0 for _, _, metrics in later)
    assert sum(p.served() for p in mesh.parents) > 0  # the others fetched from the few


class FailingOrigin(CountingOrigin):
    """An origin that goes down; while it fails, `meanwhile` runs (a peer gets the chunks)."""

    def __init__(self, blob: Blob, meanwhile: Callable[[], Awaitable[object]]) -> None:
        super().__init__(blob)
        self.meanwhile = meanwhile
        self.failures = 0

    async def get(self, ref: BlobRef, chunks: Sequence[ChunkInfo]) -> list[FetchedChunk]:
        self.failures += 1
        await self.meanwhile()
        raise RegistryUnavailable("registry down: connection refused")


async def test_when_the_origin_fails_the_mesh_is_asked_again(mesh: Mesh_) -> None:
    source, _, _ = await mesh.requester(MeshConfig(after_origin_wait=2.0))
    failing = FailingOrigin(mesh.blob, lambda: mesh.parent("late"))
    source.fallback = failing
    await _get_all(source, mesh.blob)  # nobody held it: the origin, which failed, then "late"
    assert failing.failures == 1 and mesh.parents[0].served() > 0


async def test_when_the_origin_fails_and_no_peer_has_the_chunks_the_error_stands(
    mesh: Mesh_,
) -> None:
    source, _, _ = await mesh.requester(MeshConfig(after_origin_wait=0.5))

    async def nothing() -> None:
        return None

    source.fallback = FailingOrigin(mesh.blob, nothing)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        await source.get(mesh.blob.ref, mesh.blob.chunks[:3])
    assert time.monotonic() - started < 5


async def test_chunks_are_stored_as_they_arrive_not_when_the_whole_get_is_done(
    mesh: Mesh_, tmp_path: Path
) -> None:
    await mesh.parent("half", held=COUNT // 2)  # the other half waits on a seed
    await mesh.join("seed", f"http://127.0.0.1:{free_port()}", seed=True, chunks=0)
    source, origin, _ = await mesh.requester(MeshConfig(max_wait=1.5))
    cache = source.mesh.cache = BlobCache(tmp_path / "mine")
    try:
        reading = asyncio.create_task(_get_all(source, mesh.blob))
        first = mesh.blob.chunks[0]
        deadline = time.monotonic() + 1.2
        while not cache.has(BLOB, first.index) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert cache.has(BLOB, first.index) and not reading.done()  # stored mid-get
        await reading
        assert origin.chunks == COUNT - COUNT // 2  # the seed never came
    finally:
        cache.close()


async def test_chunks_sent_to_the_origin_are_fetched_while_others_still_wait(
    mesh: Mesh_,
) -> None:
    for other in ("o1", "o2"):  # two peers were allowed the origin for the second half
        await mesh.join(other, f"http://127.0.0.1:{free_port()}", chunks=0)
        wanted = ((COUNT // 2, COUNT),)
        await mesh.client.schedule(
            ScheduleRequest(peer_id=other, blob_id=BLOB, chunk_count=COUNT, wanted=wanted)
        )
    source, origin, _ = await mesh.requester(MeshConfig(max_wait=1.5))
    started = time.monotonic()
    await _get_all(source, mesh.blob)
    assert len(origin.calls) == 2  # first half at once, second half after the wait
    assert origin.calls[0] - started < 0.5 < 1.4 < origin.calls[1] - started
