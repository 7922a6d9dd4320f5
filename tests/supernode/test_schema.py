"""Schemathesis against `/openapi.json`: no input makes a 5xx, every answer is documented.

The supernode runs in a thread of its own (schemathesis calls are synchronous) on
127.0.0.1, on a fresh SQLite file, with both tokens; requests carry the token the
operation's role needs. A few peers and a blob exist first, so generated requests reach
past "unknown peer" into the scheduler. Examples are bounded to keep the run short.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from supernode import SupernodeConfig, make_app, openapi_document

from .conftest import ADMIN_AUTH, PEER_AUTH, supernode_config

# The coverage phase is not bounded by max_examples; fuzzing (positive and negative) is.
CONFIG = schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}})
schema = schemathesis.openapi.from_dict(msgspec.json.decode(openapi_document()), config=CONFIG)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: object, value: object) -> bytes:
    return msgspec.msgpack.encode(_fit_msgpack(value))


def _fit_msgpack(value: object) -> object:
    """msgpack has no integers beyond 64 bits: send those as floats (still invalid input)."""
    if isinstance(value, dict):
        return {k: _fit_msgpack(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fit_msgpack(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


@dataclass
class ThreadedSupernode:
    """A supernode app served from its own thread and event loop."""

    config: SupernodeConfig
    url: str = ""
    _ready: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the supernode did not start"

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        runner = web.AppRunner(make_app(self.config), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


def _seed_state(url: str) -> None:
    """Peers p1..p3 and a seed exist, p1 holds half of a blob: requests get past 404s."""
    body: dict[str, Any]
    for peer in ("p1", "p2", "p3", "s1"):
        body = {
            "type": "register",
            "peer_id": peer,
            "host_name": f"h-{peer}",
            "ip": "127.0.0.1",
            "upload_port": 9000,
            "http_url": "http://127.0.0.1:9000",
            "seed": peer == "s1",
        }
        requests.post(url + "/api/v1/peers/register", json=body, headers=PEER_AUTH, timeout=10)
    body = {
        "type": "announce",
        "peer_id": "p1",
        "blob_id": "ab" * 32,
        "chunk_count": 64,
        "ranges": [[0, 32]],
    }
    requests.post(url + "/api/v1/announce", json=body, headers=PEER_AUTH, timeout=10)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("schema") / "sn.db"
    node = ThreadedSupernode(supernode_config(str(db)))
    node.start()
    try:
        _seed_state(node.url)
        yield node.url
    finally:
        node.stop()


def _auth(case: Any) -> dict[str, str]:
    return ADMIN_AUTH if "/admin/" in case.path else PEER_AUTH


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_fails(case: Any, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, headers=_auth(case), checks=CHECKS)
