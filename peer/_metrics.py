"""The daemon's Prometheus metrics, one registry per daemon, served on the chunk server.

Rule: every counter a test or an operator reads about where bytes came from lives here,
named `dfdaemon_*`: bytes from peers and from the origin (verified chunks only), bytes
served to peers, parent failures by kind, digest mismatches, uploads refused.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from protocol import FailureKind


class PeerMetrics:
    """Counters and gauges of one dfdaemon."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.peer_bytes_in = Counter(
            "dfdaemon_peer_bytes_in", "verified chunk bytes received from parents", registry=r
        )
        self.peer_chunks_in = Counter(
            "dfdaemon_peer_chunks_in", "verified chunks received from parents", registry=r
        )
        self.peer_bytes_out = Counter(
            "dfdaemon_peer_bytes_out", "chunk bytes served to other peers", registry=r
        )
        self.peer_chunks_out = Counter(
            "dfdaemon_peer_chunks_out", "chunks served to other peers", registry=r
        )
        self.origin_bytes = Counter(
            "dfdaemon_origin_bytes", "verified chunk bytes fetched from the origin", registry=r
        )
        self.origin_chunks = Counter(
            "dfdaemon_origin_chunks", "verified chunks fetched from the origin", registry=r
        )
        self.parent_failures = Counter(
            "dfdaemon_parent_failures", "failed parent requests by kind", ["kind"], registry=r
        )
        self.digest_mismatches = Counter(
            "dfdaemon_digest_mismatches", "chunks from parents with a wrong digest", registry=r
        )
        self.uploads_refused = Counter(
            "dfdaemon_uploads_refused", "chunk requests refused: every slot busy", registry=r
        )
        self.schedule_requests = Counter(
            "dfdaemon_schedule_requests", "schedule requests sent to the supernode", registry=r
        )
        self.seed_chunks = Counter(
            "dfdaemon_seed_chunks", "chunks fetched from the origin for seed tasks", registry=r
        )
        self.seed_tasks = Counter("dfdaemon_seed_tasks", "seed tasks finished", registry=r)
        self.uploads_in_flight = Gauge(
            "dfdaemon_uploads_in_flight", "chunk requests being served", registry=r
        )
        self.announced = Gauge(
            "dfdaemon_announced_chunks",
            "distinct chunks announced since the last registration",
            registry=r,
        )
        self.supernode_lost = Counter(
            "dfdaemon_supernode_lost", "times the supernode failed or forgot this peer", registry=r
        )
        self.mesh_bypassed = Counter(
            "dfdaemon_mesh_bypassed_chunks",
            "chunks read from the origin without asking the mesh (not registered, no chunk table)",
            registry=r,
        )
        self.registered = Gauge(
            "dfdaemon_supernode_registered", "1 while registered with the supernode", registry=r
        )
        for kind in FailureKind:
            if kind is not FailureKind.NONE:
                self.parent_failures.labels(kind=kind.value)

    def watch_uploads(self, current: Callable[[], int]) -> None:
        self.uploads_in_flight.set_function(current)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
