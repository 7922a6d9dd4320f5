"""The daemon's small HTTP API on a unix socket: state as JSON, metrics for Prometheus.

`GET /api/v1/daemon` tells the state, mountpoint, image and prefetch progress;
`GET /api/v1/metrics` (also `/metrics`) is the Prometheus text format, one registry per
daemon: reads, bytes, memo and cache hits, origin bytes and requests, chunk fetch latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STATE_KEY = web.AppKey("state", dict)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


@dataclass(eq=False)
class Counters(Collector):
    """Turns the daemon's plain counters into metrics at scrape time."""

    counters: Callable[[], dict[str, float]]
    gauges: Callable[[], dict[str, float]]

    def collect(self) -> Iterator[Metric]:
        for name, value in sorted(self.counters().items()):
            family = CounterMetricFamily(f"nydusd_{name}", name.replace("_", " "))
            family.add_metric([], value)
            yield family
        for name, value in sorted(self.gauges().items()):
            gauge = GaugeMetricFamily(f"nydusd_{name}", name.replace("_", " "))
            gauge.add_metric([], value)
            yield gauge


def new_registry(counters: Counters) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    registry.register(counters)
    latency = Histogram(
        "nydusd_chunk_fetch_seconds",
        "time to fetch a batch of chunks that missed the memory cache",
        registry=registry,
        buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
    )
    return registry, latency


def make_app(state: Callable[[], dict[str, Any]], registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = {"state": state, "started": time.time()}
    app[REGISTRY_KEY] = registry
    app.router.add_get("/api/v1/daemon", _daemon)
    app.router.add_get("/api/v1/metrics", _metrics)
    app.router.add_get("/metrics", _metrics)
    return app


async def _daemon(request: web.Request) -> web.Response:
    info = request.app[STATE_KEY]
    body = dict(info["state"]())
    body["uptime_seconds"] = round(time.time() - info["started"], 3)
    return web.json_response(body)


async def _metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=data, headers={"Content-Type": "text/plain; version=0.0.4"})
