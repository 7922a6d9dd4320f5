"""Scheduler benchmark: schedule decisions per second for a simulated mesh.

`--mode inprocess` drives `supernode._policy.Scheduler` directly: `peers` peers (plus a
few seeds) in four zones download windows of chunks from `blobs` blobs of `chunks` chunks,
announcing what they get as they go; seeds take their tasks and announce them; peers
heartbeat and report piece results now and then. Every call of `schedule` is one decision.
`--mode http` starts `supernode serve` in a subprocess (SQLite with write-behind, or
`--db URL`) and drives the same simulation over its HTTP API from `--clients` concurrent
aiohttp clients (one connection each): every schedule call is a decision, timed from
request to decoded answer; announces, piece results, seed polls and heartbeats load the
server too. It reports decisions/s, p50/p99 latency and the supernode's RSS.

Rule: the simulation is deterministic for a given `--seed`, and the time measured is the
whole loop (schedule, announce, heartbeat, report), so the figure is a floor.

    .venv/bin/python benchmarks/scheduler.py --mode inprocess --decisions 200000
    .venv/bin/python benchmarks/scheduler.py --mode http --clients 200 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import uvloop
from _common import process_cpu

from protocol import (
    Announce,
    Format,
    FromOrigin,
    FromParents,
    Heartbeat,
    Message,
    ParentResult,
    PieceResults,
    Register,
    RetryLater,
    ScheduleAnswer,
    ScheduleRequest,
    SeedTaskBatch,
    decode,
    encode,
)
from supernode._policy import Scheduler

ORIGIN = "https://registry.example/v2/library/app/blobs/"
ZONES = ("zone-a", "zone-b", "zone-c", "zone-d")


@dataclass(slots=True)
class SimPeer:
    """A simulated peer walking through one blob at a time, window by window."""

    peer_id: str
    blob: int = -1
    next_chunk: int = 0
    done: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Result:
    """What one in-process run measured."""

    decisions: int
    seconds: float
    cpu_seconds: float
    schedule_seconds: float
    announces: int
    parent_plans: int
    retry_plans: int
    origin_plans: int
    seed_tasks: int
    max_rss_mib: float

    @property
    def per_second(self) -> float:
        """Decisions per second over the whole loop."""
        return self.decisions / self.seconds


def blob_id(index: int) -> str:
    """A deterministic 64-hex blob id."""
    return f"{index:064x}"


def register(scheduler: Scheduler, index: int, seed: bool) -> str:
    """Register one simulated peer (each on its own host) and return its id."""
    peer_id = f"{'seed' if seed else 'peer'}-{index}"
    msg = Register(
        peer_id=peer_id,
        host_name=f"host-{peer_id}",
        ip=f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}",
        upload_port=65001,
        http_url=f"http://{peer_id}.mesh:65001",
        upload_capacity=32 if seed else 16,
        labels={"zone": ZONES[index % len(ZONES)]},
        seed=seed,
    )
    scheduler.register(msg, 0.0)
    return peer_id


def pick_window(rng: random.Random, peer: SimPeer, blobs: int, chunks: int, window: int) -> None:
    """Move the peer to its next window, or to a fresh blob when the last one is done."""
    if peer.blob < 0 or peer.next_chunk >= chunks:
        choices = [b for b in range(blobs) if b not in peer.done] or list(range(blobs))
        peer.blob = rng.choice(choices)
        peer.next_chunk = rng.randrange(0, chunks, window)
        peer.done.add(peer.blob)


class Simulation:
    """The mesh being simulated around one scheduler."""

    def __init__(self, peers: int, blobs: int, chunks: int, seeds: int, rng_seed: int) -> None:
        self.scheduler = Scheduler()
        self.rng = random.Random(rng_seed)
        self.blobs, self.chunks = blobs, chunks
        self.peers = [SimPeer(register(self.scheduler, i, False)) for i in range(peers)]
        self.seeds = [register(self.scheduler, i, True) for i in range(seeds)]
        self.now = 0.0
        self.announces = 0
        self.schedule_seconds = 0.0

    def step(self, window: int) -> None:
        """One decision: a random peer asks for its next window and acts on the answer."""
        peer = self.rng.choice(self.peers)
        pick_window(self.rng, peer, self.blobs, self.chunks, window)
        start = peer.next_chunk
        end = min(self.chunks, start + window)
        request = ScheduleRequest(
            peer_id=peer.peer_id,
            blob_id=blob_id(peer.blob),
            chunk_count=self.chunks,
            wanted=((start, end),),
            origin_url=ORIGIN + blob_id(peer.blob),
        )
        began = time.perf_counter()
        answer = self.scheduler.schedule(request, self.now)
        self.schedule_seconds += time.perf_counter() - began
        got = [(p.start, p.end) for p in answer.plans if isinstance(p, FromParents | FromOrigin)]
        if got:
            self.announce(peer.peer_id, peer.blob, got)
            self.report(peer.peer_id, peer.blob, answer.plans)
            peer.next_chunk = end if len(got) == len(answer.plans) else peer.next_chunk

    def announce(self, peer_id: str, blob: int, ranges: Sequence[tuple[int, int]]) -> None:
        msg = Announce(
            peer_id=peer_id, blob_id=blob_id(blob), chunk_count=self.chunks, ranges=tuple(ranges)
        )
        self.scheduler.announce(msg, self.now)
        self.announces += 1

    def report(self, peer_id: str, blob: int, plans: Sequence[object]) -> None:
        results = tuple(
            ParentResult(
                parent_id=plan.parents[0].peer_id,
                chunks_ok=plan.end - plan.start,
                bytes=(plan.end - plan.start) * 65536,
                duration_ms=1 + self.rng.randrange(20),
            )
            for plan in plans
            if isinstance(plan, FromParents)
        )
        if results:
            msg = PieceResults(peer_id=peer_id, blob_id=blob_id(blob), results=results)
            self.scheduler.report(msg, self.now)

    def tick(self) -> None:
        """Time passes: seeds fetch their tasks, every peer heartbeats."""
        self.now += 1.0
        for seed_id in self.seeds:
            for task in self.scheduler.take_seed_tasks(seed_id, self.now):
                msg = Announce(
                    peer_id=seed_id,
                    blob_id=task.blob_id,
                    chunk_count=self.chunks,
                    ranges=task.ranges,
                )
                self.scheduler.announce(msg, self.now)
                self.announces += 1
        for peer in self.peers:
            beat = Heartbeat(peer_id=peer.peer_id, current_uploads=self.rng.randrange(4))
            self.scheduler.heartbeat(beat, self.now)


def run_inprocess(
    peers: int = 1000,
    blobs: int = 50,
    chunks: int = 1000,
    decisions: int = 200_000,
    seeds: int = 4,
    window: int = 16,
    tick_every: int = 2_000,
    rng_seed: int = 1,
) -> Result:
    """Run the in-process simulation, print a summary line and return the figures."""
    sim = Simulation(peers, blobs, chunks, seeds, rng_seed)
    began, cpu_began = time.perf_counter(), time.process_time()
    for done in range(decisions):
        if done % tick_every == 0:
            sim.tick()
        sim.step(window)
    seconds = time.perf_counter() - began
    cpu_seconds = time.process_time() - cpu_began
    stats = sim.scheduler.stats
    result = Result(
        decisions=decisions,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        schedule_seconds=sim.schedule_seconds,
        announces=sim.announces,
        parent_plans=stats.parent_plans,
        retry_plans=stats.retry_plans,
        origin_plans=stats.origin_plans,
        seed_tasks=stats.seed_tasks,
        max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print(
        f"in-process: {peers} peers, {blobs} blobs x {chunks} chunks, window {window}: "
        f"{result.per_second:,.0f} decisions/s over the whole loop "
        f"({decisions / result.cpu_seconds:,.0f}/s by CPU time, "
        f"{decisions / result.schedule_seconds:,.0f}/s inside schedule), "
        f"{result.announces:,} announces, plans: {result.parent_plans:,} parents / "
        f"{result.retry_plans:,} retry / {result.origin_plans:,} origin, "
        f"{result.seed_tasks:,} seed tasks, max RSS {result.max_rss_mib:,.0f} MiB"
    )
    return result


# --- over HTTP -------------------------------------------------------------------------

TOKEN = "bench-token"
HEARTBEAT_SECONDS = 10.0  # the supernode's default heartbeat interval
PLAN_KINDS: dict[type, str] = {FromParents: "parents", RetryLater: "retry", FromOrigin: "origin"}


@dataclass(slots=True)
class HttpFigures:
    """What the HTTP clients saw, shared by every client coroutine."""

    target: int
    latencies: list[float] = field(default_factory=list)
    plans: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PLAN_KINDS.values(), 0))
    requests: int = 0
    errors: int = 0
    server_cpu: float = 0.0  # supernode CPU seconds while the clients ran

    @property
    def decisions(self) -> int:
        return len(self.latencies)

    def latency_text(self) -> str:
        p50, p99 = self.percentile(0.5) * 1000, self.percentile(0.99) * 1000
        return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def start_supernode(db_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """`supernode serve` on a free loopback port; returns the process and its URL."""
    argv = [
        sys.executable,
        "-m",
        "supernode.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db_url,
        "--token",
        TOKEN,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the supernode did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024


class HttpMesh:
    """Simulated peers speaking to the supernode over HTTP, one connection per client."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        args: argparse.Namespace,
        figures: HttpFigures,
    ) -> None:
        self.url, self.session, self.args, self.figures = url, session, args, figures
        self.fmt: Format = args.format
        content_type = "application/msgpack" if self.fmt == "msgpack" else "application/json"
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}

    async def post(self, path: str, msg: Message) -> bytes:
        async with self.session.post(
            self.url + path, data=encode(msg, self.fmt), headers=self.headers
        ) as response:
            body = await response.read()
        self.figures.requests += 1
        if response.status >= 300:
            self.figures.errors += 1
        return body

    async def register_all(self, peers: int, seeds: int) -> tuple[list[SimPeer], list[str]]:
        sim_peers = [SimPeer(f"peer-{i}") for i in range(peers)]
        seed_ids = [f"seed-{i}" for i in range(seeds)]
        messages = [register_message(i, False) for i in range(peers)]
        messages += [register_message(i, True) for i in range(seeds)]
        for start in range(0, len(messages), 100):
            chunk = messages[start : start + 100]
            await asyncio.gather(*(self.post("/api/v1/peers/register", m) for m in chunk))
        return sim_peers, seed_ids

    async def client(self, peers: list[SimPeer], rng: random.Random) -> None:
        """One client: its peers ask for windows, announce what they got, report parents.

        A peer told to retry waits `retry_after_ms` (its client serves its other peers
        meanwhile). With `--rate`, the client paces its decisions and latency is counted
        from when each request was due, so a slow server cannot hide its queue.
        """
        loop = asyncio.get_running_loop()
        waiting: dict[str, float] = {}
        pace = self.args.clients / self.args.rate if self.args.rate else 0.0
        due = loop.time() + rng.random() * pace
        while self.figures.decisions < self.figures.target:
            peer = self.ready_peer(peers, waiting, loop.time(), rng)
            if peer is None:
                await asyncio.sleep(max(0.001, min(waiting.values()) - loop.time()))
                continue
            if pace:
                await asyncio.sleep(max(0.0, due - loop.time()))
            began, due = (due if pace else loop.time()), due + pace
            await self.decide(peer, rng, waiting, began)

    @staticmethod
    def ready_peer(
        peers: list[SimPeer], waiting: dict[str, float], now: float, rng: random.Random
    ) -> SimPeer | None:
        for peer_id in [p for p, until in waiting.items() if until <= now]:
            del waiting[peer_id]
        ready = [p for p in peers if p.peer_id not in waiting]
        return rng.choice(ready) if ready else None

    async def decide(
        self, peer: SimPeer, rng: random.Random, waiting: dict[str, float], began: float
    ) -> None:
        args = self.args
        pick_window(rng, peer, args.blobs, args.chunks, args.window)
        start, end = peer.next_chunk, min(args.chunks, peer.next_chunk + args.window)
        answer = await self.schedule(peer, start, end, began)
        got = [(p.start, p.end) for p in answer.plans if not isinstance(p, RetryLater)]
        retry = [p.retry_after_ms for p in answer.plans if isinstance(p, RetryLater)]
        if retry:
            waiting[peer.peer_id] = asyncio.get_running_loop().time() + max(retry) / 1000
        if got:
            msg = Announce(
                peer_id=peer.peer_id,
                blob_id=blob_id(peer.blob),
                chunk_count=args.chunks,
                ranges=tuple(got),
            )
            await self.post("/api/v1/announce", msg)
            peer.next_chunk = end if not retry else peer.next_chunk
        await self.maybe_report(peer, answer, rng)

    async def schedule(self, peer: SimPeer, start: int, end: int, began: float) -> ScheduleAnswer:
        request = ScheduleRequest(
            peer_id=peer.peer_id,
            blob_id=blob_id(peer.blob),
            chunk_count=self.args.chunks,
            wanted=((start, end),),
            origin_url=ORIGIN + blob_id(peer.blob),
        )
        body = await self.post("/api/v1/schedule", request)
        self.figures.latencies.append(asyncio.get_running_loop().time() - began)
        answer = decode(body, self.fmt, ScheduleAnswer)
        for plan in answer.plans:
            self.figures.plans[PLAN_KINDS[type(plan)]] += 1
        return answer

    async def maybe_report(self, peer: SimPeer, answer: ScheduleAnswer, rng: random.Random) -> None:
        results = tuple(
            ParentResult(
                parent_id=plan.parents[0].peer_id,
                chunks_ok=plan.end - plan.start,
                bytes=(plan.end - plan.start) * 65536,
                duration_ms=1 + rng.randrange(20),
            )
            for plan in answer.plans
            if isinstance(plan, FromParents)
        )
        if results:
            msg = PieceResults(peer_id=peer.peer_id, blob_id=blob_id(peer.blob), results=results)
            await self.post("/api/v1/piece-results", msg)

    async def seed(self, seed_id: str) -> None:
        """A seed polls for tasks and announces each as fetched at once."""
        url = f"{self.url}/api/v1/seed-tasks?peer_id={seed_id}"
        while self.figures.decisions < self.figures.target:
            async with self.session.get(url, headers=self.headers) as response:
                batch = decode(await response.read(), "json", SeedTaskBatch)
            announces = (
                Announce(
                    peer_id=seed_id,
                    blob_id=task.blob_id,
                    chunk_count=task.chunk_count or self.args.chunks,
                    ranges=task.ranges,
                )
                for task in batch.tasks
            )
            await asyncio.gather(*(self.post("/api/v1/announce", a) for a in announces))
            await asyncio.sleep(0.05)

    async def heartbeats(self, peers: list[SimPeer], seeds: list[str]) -> None:
        """Every peer heartbeats once per `HEARTBEAT_SECONDS`, spread over the interval."""
        ids = [p.peer_id for p in peers] + seeds
        while self.figures.decisions < self.figures.target:
            for start in range(0, len(ids), 50):
                beats = (Heartbeat(peer_id=i) for i in ids[start : start + 50])
                await asyncio.gather(*(self.post("/api/v1/peers/heartbeat", b) for b in beats))
                await asyncio.sleep(HEARTBEAT_SECONDS * 50 / len(ids))


def register_message(index: int, seed: bool) -> Register:
    peer_id = f"{'seed' if seed else 'peer'}-{index}"
    return Register(
        peer_id=peer_id,
        host_name=f"host-{peer_id}",
        ip=f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}",
        upload_port=65001,
        http_url=f"http://{peer_id}.mesh:65001",
        upload_capacity=32 if seed else 16,
        labels={"zone": ZONES[index % len(ZONES)]},
        seed=seed,
    )


async def drive_http(
    url: str, args: argparse.Namespace, target: int, pid: int
) -> tuple[HttpFigures, float]:
    """Register the mesh, then run the clients until `target` decisions; time that part."""
    figures = HttpFigures(target)
    connector = aiohttp.TCPConnector(limit=args.clients + 16)
    async with aiohttp.ClientSession(connector=connector) as session:
        mesh = HttpMesh(url, session, args, figures)
        peers, seeds = await mesh.register_all(args.peers, args.seeds)
        rng = random.Random(args.seed)
        groups = [peers[i :: args.clients] for i in range(args.clients)]
        began, cpu_began = time.perf_counter(), process_cpu(pid)
        background = [asyncio.create_task(mesh.seed(s)) for s in seeds]
        background.append(asyncio.create_task(mesh.heartbeats(peers, seeds)))
        await asyncio.gather(*(mesh.client(g, random.Random(rng.random())) for g in groups if g))
        seconds = time.perf_counter() - began
        figures.server_cpu = process_cpu(pid) - cpu_began
        await asyncio.gather(*background)
    return figures, seconds


def run_http_once(args: argparse.Namespace) -> tuple[HttpFigures, float, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="sn-bench-") as tmp:
        proc, url = start_supernode(args.db or f"{tmp}/supernode.db")
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                target = args.decisions or 30_000
                figures, seconds = runner.run(drive_http(url, args, target, proc.pid))
            memory = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        f"http: {args.peers} peers, {args.clients} clients, {args.format}, "
        f"offered {f'{args.rate:,.0f}/s' if args.rate else 'closed loop'}: "
        f"{figures.decisions / seconds:,.0f} decisions/s, "
        f"{figures.requests / seconds:,.0f} requests/s, "
        f"{figures.latency_text()}, "
        f"plans {figures.plans}, errors {figures.errors}, "
        f"supernode CPU {figures.server_cpu * 1e6 / figures.decisions:,.0f} us/decision "
        f"({figures.decisions / figures.server_cpu:,.0f} decisions per CPU-second), "
        f"supernode RSS {memory[0]:,.0f} MiB (peak {memory[1]:,.0f} MiB)"
    )
    return figures, seconds, memory


def run_http(args: argparse.Namespace) -> int:
    """Over HTTP against `supernode serve` in a subprocess; prints the median run."""
    runs = sorted(
        (run_http_once(args) for _ in range(args.repeat)), key=lambda run: run[0].decisions / run[1]
    )
    figures, seconds, memory = runs[len(runs) // 2]
    print(
        f"median of {len(runs)}: {figures.decisions / seconds:,.0f} decisions/s, "
        f"{figures.latency_text()}, "
        f"supernode RSS {memory[0]:,.0f} MiB"
    )
    return 0 if figures.errors == 0 else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("inprocess", "http"), default="inprocess")
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--blobs", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument(
        "--decisions",
        type=int,
        default=None,
        help="schedule decisions per run (200,000 in-process, 30,000 over HTTP)",
    )
    parser.add_argument("--clients", type=int, default=200, help="concurrent HTTP clients")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered decisions/s over HTTP (0: as fast as answered)",
    )
    parser.add_argument(
        "--format", choices=("json", "msgpack"), default="json", help="HTTP body encoding"
    )
    parser.add_argument("--db", help="database URL for --mode http (a temporary SQLite file)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--window", type=int, default=16, help="chunks wanted per request")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the simulation")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median is printed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "http":
        return run_http(args)
    rates = []
    for _ in range(args.repeat):
        result = run_inprocess(
            peers=args.peers,
            blobs=args.blobs,
            chunks=args.chunks,
            decisions=args.decisions or 200_000,
            seeds=args.seeds,
            window=args.window,
            rng_seed=args.seed,
        )
        rates.append(result.per_second)
    rates.sort()
    print(f"median of {len(rates)}: {rates[len(rates) // 2]:,.0f} decisions/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
