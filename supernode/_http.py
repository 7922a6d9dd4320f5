"""The HTTP boundary: body decoding, replies, and the one middleware around every handler.

Rule: this is the one place where protocol and aiohttp exceptions become `ApiError`s and
every error becomes a JSON body `{"error", "detail"}` with a 4xx status. One middleware
does the boundary work (timing, token check, error bodies), so a request pays for one.
A request body is JSON unless its Content-Type is msgpack; a reply uses the request's
format (for a GET, the one the Accept header asks for).
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from protocol import Format, Message, ProtocolError, decode, encode
from protocol import InvalidMessage as _InvalidMessage

from ._errors import ApiError, BadRequest, PayloadTooLarge, Unauthorized
from ._metrics import Metrics
from ._wire import ErrorBody

log = logging.getLogger("supernode.http")

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})

M = TypeVar("M", bound=Message)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ERROR_ENCODER = msgspec.json.Encoder()


def body_format(request: web.Request) -> Format:
    return "msgpack" if request.content_type in MSGPACK_TYPES else "json"


def reply_format(request: web.Request) -> Format:
    if request.body_exists:
        return body_format(request)
    accept = request.headers.get("Accept", "")
    return "msgpack" if any(t in accept for t in MSGPACK_TYPES) else "json"


class _NoMessage(Message, tag="no_message", frozen=True):
    """Never sent: its presence makes the decoder insist on a body's `type` tag."""


@functools.cache
def _tagged(kind: type[M]) -> Any:
    """`kind` as a tagged union, so a body without the right `type` is refused."""
    return kind | _NoMessage


async def read_message(request: web.Request, kind: type[M]) -> M:
    """Decode and validate the body as one `kind` message, or raise a 4xx `ApiError`."""
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(exc.text or "request body too large") from None
    try:
        msg = decode(data, body_format(request), _tagged(kind))
    except ProtocolError as exc:
        raise _bad_request(exc) from None
    if not isinstance(msg, kind):
        raise BadRequest(f"expected a {kind.__name__} message", "$.type")
    return msg


def _bad_request(exc: ProtocolError) -> BadRequest:
    path = exc.path if isinstance(exc, _InvalidMessage) else None
    return BadRequest(str(exc), path)


def reply(request: web.Request, message: Message, status: int = 200) -> web.Response:
    fmt = reply_format(request)
    content_type = MSGPACK if fmt == "msgpack" else JSON
    return web.Response(body=encode(message, fmt), status=status, content_type=content_type)


def reply_struct(value: msgspec.Struct, status: int = 200) -> web.Response:
    """A plain JSON body (health and the like, never msgpack)."""
    return web.Response(body=msgspec.json.encode(value), status=status, content_type=JSON)


def no_content() -> web.Response:
    return web.Response(status=204)


def error_response(status: int, code: str, detail: str, path: str | None = None) -> web.Response:
    body = _ERROR_ENCODER.encode(ErrorBody(error=code, detail=detail, path=path))
    return web.Response(body=body, status=status, content_type=JSON)


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    code = exc.reason.lower().replace(" ", "_").replace("-", "_")
    response = error_response(exc.status, code, exc.text or exc.reason)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


@dataclass(frozen=True)
class Guard:
    """Which token each route needs: `roles` maps a request to public, peer or admin."""

    roles: Callable[[web.Request], str]
    token: str | None  # None: peer endpoints are open
    admin_token: str | None  # None: admin endpoints are closed

    def check(self, request: web.Request) -> None:
        """Raise `Unauthorized` unless `Authorization: Bearer T` carries the right token."""
        role = self.roles(request)
        if role == "peer" and self.token is not None:
            _check_bearer(request, self.token, "cluster")
        elif role == "admin":
            if self.admin_token is None:
                raise Unauthorized("admin endpoints are disabled: the supernode has no admin token")
            _check_bearer(request, self.admin_token, "admin")


def _check_bearer(request: web.Request, expected: str, which: str) -> None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized(f"missing {which} token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized(f"wrong {which} token")


def route_name(request: web.Request) -> str:
    """The route template (`/api/v1/jobs/{job_id}`), bounded for metric labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def boundary_middleware(metrics: Metrics, guard: Guard) -> Middleware:
    """The one middleware: time each request, check its token, make failures JSON."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await _answer(request, handler, guard)
        elapsed = time.perf_counter() - started
        metrics.observe_request(route_name(request), request.method, response.status, elapsed)
        return response

    return middleware


async def _answer(request: web.Request, handler: Handler, guard: Guard) -> web.StreamResponse:
    """The handler's response; every failure as a JSON error, never a bare 500."""
    try:
        guard.check(request)
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.detail, exc.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the supernode failed; see its log")
