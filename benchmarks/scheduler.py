"""Scheduler benchmark: schedule decisions per second for a simulated mesh.

`--mode inprocess` drives `supernode._policy.Scheduler` directly: `peers` peers (plus a
few seeds) in four zones download windows of chunks from `blobs` blobs of `chunks` chunks,
announcing what they get as they go; seeds take their tasks and announce them; peers
heartbeat and report piece results now and then. Every call of `schedule` is one decision.
`--mode http` measures the same over the service's HTTP API (added with the service).

Rule: the simulation is deterministic for a given `--seed`, and the time measured is the
whole loop (schedule, announce, heartbeat, report), so the figure is a floor.

    .venv/bin/python benchmarks/scheduler.py --mode inprocess --decisions 200000
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol import (
    Announce,
    FromOrigin,
    FromParents,
    Heartbeat,
    ParentResult,
    PieceResults,
    Register,
    ScheduleRequest,
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
    began = time.perf_counter()
    for done in range(decisions):
        if done % tick_every == 0:
            sim.tick()
        sim.step(window)
    seconds = time.perf_counter() - began
    stats = sim.scheduler.stats
    result = Result(
        decisions=decisions,
        seconds=seconds,
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
        f"({decisions / result.schedule_seconds:,.0f}/s inside schedule), "
        f"{result.announces:,} announces, plans: {result.parent_plans:,} parents / "
        f"{result.retry_plans:,} retry / {result.origin_plans:,} origin, "
        f"{result.seed_tasks:,} seed tasks, max RSS {result.max_rss_mib:,.0f} MiB"
    )
    return result


def run_http(args: argparse.Namespace) -> int:
    """Over HTTP against a running supernode: provided with the service."""
    print("--mode http is not available yet: it comes with the supernode service", file=sys.stderr)
    return 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("inprocess", "http"), default="inprocess")
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--blobs", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=200_000)
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
            decisions=args.decisions,
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
