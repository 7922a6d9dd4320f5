"""Prometheus metrics of one supernode app, in a registry of its own.

A per-app `CollectorRegistry` (never the process-global one) lets tests and benchmarks run
several apps in one process. Gauges that mirror scheduler state (peers, blobs) are read
at scrape time through callbacks, so nothing has to keep them in step.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from protocol import FromOrigin, FromParents, Plan, RetryLater

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_PLAN_KINDS: dict[type[Plan], str] = {
    FromParents: "parents",
    RetryLater: "retry",
    FromOrigin: "origin",
}


class Metrics:
    """The supernode's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.peers = Gauge("supernode_peers", "Registered, unexpired peers", registry=r)
        self.blobs = Gauge("supernode_blobs", "Blobs the supernode knows of", registry=r)
        self.suspended = Gauge(
            "supernode_parents_suspended", "Peers suspended as parents for failing", registry=r
        )
        self.decisions = Counter(
            "supernode_schedule_decisions", "Range plans handed out", ["kind"], registry=r
        )
        self.back_to_source = Counter(
            "supernode_back_to_source",
            "Ranges a peer was told to fetch from the origin",
            registry=r,
        )
        self.seed_tasks = Counter("supernode_seed_tasks", "Seed tasks handed to seeds", registry=r)
        self.seed_failures = Counter(
            "supernode_seed_failures", "Seed tasks a seed reported it could not do", registry=r
        )
        self.digest_mismatches = Counter(
            "supernode_digest_mismatches", "Parents reported serving a wrong chunk", registry=r
        )
        self.requests = Counter(
            "supernode_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "supernode_http_request_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_seconds = Histogram(
            "supernode_db_flush_seconds",
            "Time to write one batch behind",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.flushed = Counter("supernode_db_flushed_records", "Records written behind", registry=r)
        self.flush_errors = Counter(
            "supernode_db_flush_errors", "Failed write-behind flushes", registry=r
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        for kind in _PLAN_KINDS.values():
            self.decisions.labels(kind)

    def watch(
        self,
        peers: Callable[[], float],
        blobs: Callable[[], float],
        suspended: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """Read the peer, blob and suspension gauges from the scheduler at scrape time."""
        self.peers.set_function(peers)
        self.blobs.set_function(blobs)
        self.suspended.set_function(suspended)

    def count_plans(self, plans: tuple[Plan, ...]) -> None:
        for plan in plans:
            self.decisions.labels(_PLAN_KINDS[type(plan)]).inc()
            if isinstance(plan, FromOrigin):
                self.back_to_source.inc()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # label lookups are cached: this runs on every request
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
