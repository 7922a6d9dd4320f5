"""An OCI Distribution client on aiohttp: manifests (OCI and Docker, image indexes with
platform selection), blobs (whole, ranged, streamed, pushed) and the registry's
Basic/Bearer auth challenge flow. References and manifests are in `_oci`, the auth
bookkeeping in `_regauth`, the exception tree in `_regerrors`; all are re-exported here.

The rules it keeps:
- every aiohttp exception becomes a `RegistryError` in exactly one place (`_translated`),
  and every error names the registry, repository, digest and HTTP status it was about;
- only transient failures (5xx, 429, resets, timeouts) are retried, with exponential
  backoff and jitter, bounded in attempts and in total time;
- an Authorization header goes only to the registry's own origin, never to a host a
  redirect points at; bytes handed back are checked against the digest they were asked by.

The exception tree (`RegistryError` and its subclasses) is documented in `_regerrors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import yarl

from ._oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageReference,
    Manifest,
    Platform,
    is_digest,
    media_type_of,
    select_platform,
    sha256_digest,
)
from ._regauth import (
    AuthState,
    Challenge,
    ScopeKey,
    basic_header,
    parse_challenges,
    scope_key,
    token_from_json,
)
from ._regerrors import (
    BadResponse,
    InvalidReference,
    NotFound,
    PlatformNotFound,
    RegistryError,
    RegistryUnavailable,
    Unauthorized,
)

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "BadResponse",
    "Descriptor",
    "ImageReference",
    "InvalidReference",
    "Manifest",
    "NotFound",
    "Platform",
    "PlatformNotFound",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailable",
    "RetryPolicy",
    "Unauthorized",
    "base_url_for",
    "sha256_digest",
]

log = logging.getLogger("rafs.registry")
T = TypeVar("T")

MAX_MANIFEST_SIZE = 4 << 20
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})

# --- retries --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with equal jitter, bounded by attempts and by total seconds."""

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    total: float = 60.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class _Budget:
    """The retries left for one operation."""

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self.policy = policy
        self.what = what
        self.attempt = 0
        self.start = time.monotonic()

    async def wait_or_raise(self, exc: RegistryUnavailable) -> None:
        self.attempt += 1
        delay = max(self.policy.delay(self.attempt), exc.retry_after)
        elapsed = time.monotonic() - self.start
        if self.attempt >= self.policy.attempts or elapsed + delay > self.policy.total:
            raise _gave_up(exc, self.what, self.attempt, elapsed) from exc
        log.warning("%s: %s; retry %d in %.2fs", self.what, exc, self.attempt, delay)
        await asyncio.sleep(delay)


def _gave_up(exc: RegistryUnavailable, what: str, attempts: int, elapsed: float) -> RegistryError:
    error = RegistryUnavailable(
        f"gave up on {what} after {attempts} attempts in {elapsed:.1f}s; last: {exc.args[0]}",
        registry=exc.registry,
        repo=exc.repo,
        digest=exc.digest,
        status=exc.status,
        code=exc.code,
    )
    return error


# --- the client -----------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    """One logical request: enough to resend it after an auth challenge or a redirect."""

    method: str
    url: str
    repo: str
    digest: str = ""
    scopes: ScopeKey = ()
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None
    ok: tuple[int, ...] = (200,)


def base_url_for(registry: str, insecure: bool = False) -> str:
    """`http://` for loopback and `insecure` registries, `https://` otherwise."""
    if "://" in registry:
        return registry.rstrip("/")
    host = urlsplit(f"//{registry}").hostname or registry
    plain = insecure or host in ("localhost", "::1") or host.startswith("127.")
    return f"{'http' if plain else 'https'}://{registry.rstrip('/')}"


RENEW_INTERVAL = 30.0  # seconds between askings of a credentials provider after a refusal


class RegistryClient:
    """Talks to one registry. Use as `async with RegistryClient(...)` or call `close()`."""

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        username: str | None = None,
        password: str | None = None,
        credentials: Callable[[], tuple[str, str] | None] | None = None,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        upload_chunk_size: int = 16 << 20,
    ) -> None:
        self.base_url = base_url_for(registry, insecure)
        self.registry = urlsplit(self.base_url).netloc
        self.username = username
        self.password = password
        # Asked (on a thread: it may run a credential helper) when the registry first
        # wants credentials, and again when it refuses the ones it gave: a helper's
        # token may have expired since.
        self._credentials = credentials
        self._asked_at: float | None = None  # when `credentials` was last asked
        self._asking = asyncio.Lock()
        self.retry = retry or RetryPolicy()
        self.upload_chunk_size = upload_chunk_size
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._auth = AuthState()
        self._token_locks: dict[ScopeKey, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.requests = 0  # HTTP requests sent, redirects and token fetches included
        self.token_fetches = 0

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:  # a late task must not open a session that nobody will close
            raise RegistryError(f"client for {self.registry} is closed", registry=self.registry)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self._session

    def _url(self, repo: str, kind: str, ref: str = "") -> str:
        return f"{self.base_url}/v2/{repo}/{kind}/{ref}"

    # --- manifests --------------------------------------------------------------------

    async def get_manifest(
        self, repo: str, ref: str, platform: str | None = "linux/amd64"
    ) -> Manifest:
        """The manifest `ref` names; an index is resolved to `platform` unless that is None."""
        found = await self._retrying(f"GET manifest {repo}:{ref}", self._fetch_manifest, repo, ref)
        if not found.is_index or platform is None:
            return found
        chosen = select_platform(found, Platform.parse(platform), self.registry, repo)
        return await self._retrying(
            f"GET manifest {repo}@{chosen.digest}", self._fetch_manifest, repo, chosen.digest
        )

    async def _fetch_manifest(self, repo: str, ref: str) -> Manifest:
        accept = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
        call = self._call("GET", self._url(repo, "manifests", ref), repo, ref, "pull")
        call.headers["Accept"] = accept
        async with self._open(call) as resp:
            raw = await _read_capped(resp, MAX_MANIFEST_SIZE, call, self.registry)
            return _parse_manifest(raw, resp.headers, ref, call, self.registry)

    async def put_manifest(
        self, repo: str, ref: str, raw: bytes, media_type: str | None = None
    ) -> str:
        """Store a manifest under a tag (or its digest); returns its digest."""
        media_type = media_type or json.loads(raw).get("mediaType") or OCI_MANIFEST
        digest = sha256_digest(raw)
        call = self._call("PUT", self._url(repo, "manifests", ref), repo, digest, "pull,push")
        call.headers["Content-Type"] = media_type
        call.data, call.ok = raw, (201, 200)
        await self._retrying(f"PUT manifest {repo}:{ref}", self._exchange, call)
        return digest

    # --- blobs: reading ---------------------------------------------------------------

    async def head_blob(self, repo: str, digest: str) -> int:
        """The blob's size; NotFound if the registry does not have it."""
        call = self._call("HEAD", self._url(repo, "blobs", digest), repo, digest, "pull")
        headers = await self._retrying(f"HEAD blob {digest}", self._exchange, call)
        return int(headers.get("Content-Length", "0"))

    async def blob_exists(self, repo: str, digest: str) -> bool:
        try:
            await self.head_blob(repo, digest)
        except NotFound:
            return False
        return True

    async def get_blob(self, repo: str, digest: str, range: tuple[int, int] | None = None) -> bytes:
        """The whole blob (checked against `digest`) or `range` = (offset, length) of it."""
        if range is not None and range[1] == 0:
            return b""
        what = f"GET blob {digest}" + (f" bytes {range[0]}+{range[1]}" if range else "")
        return await self._retrying(what, self._fetch_blob, repo, digest, range)

    async def _fetch_blob(self, repo: str, digest: str, range: tuple[int, int] | None) -> bytes:
        call = self._call("GET", self._url(repo, "blobs", digest), repo, digest, "pull")
        if range is None:
            async with self._open(call) as resp:
                data = await resp.read()
            _check_digest(data, digest, call, self.registry)
            return data
        offset, length = range
        call.headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        call.ok = (206, 200)
        async with self._open(call) as resp:
            return await _read_range(resp, offset, length, call, self.registry)

    async def stream_blob(
        self, repo: str, digest: str, *, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """The blob in pieces, resumed with a Range after a transient failure; the digest is
        checked at the end (BadResponse then, after the pieces were handed out)."""
        hasher, received = hashlib.sha256(), 0
        budget = _Budget(self.retry, f"GET blob {digest} (stream)")
        call = self._call("GET", self._url(repo, "blobs", digest), repo, digest, "pull")
        while True:
            try:
                async for piece in self._stream_from(call, received, chunk_size):
                    hasher.update(piece)
                    received += len(piece)
                    yield piece
                break
            except RegistryUnavailable as exc:
                await budget.wait_or_raise(exc)
        if "sha256:" + hasher.hexdigest() != digest and digest.startswith("sha256:"):
            raise BadResponse(
                f"streamed blob hashes to sha256:{hasher.hexdigest()}",
                registry=self.registry,
                repo=call.repo,
                digest=digest,
            )

    async def _stream_from(self, call: _Call, offset: int, chunk_size: int) -> AsyncIterator[bytes]:
        if offset:
            call.headers["Range"] = f"bytes={offset}-"
            call.ok = (206,)
        async with self._open(call) as resp:
            async for piece in resp.content.iter_chunked(chunk_size):
                yield piece

    # --- blobs: pushing ---------------------------------------------------------------

    async def push_blob(
        self,
        repo: str,
        data: bytes | os.PathLike[str],
        digest: str | None = None,
        *,
        chunk_size: int | None = None,
        mount_from: str | None = None,
    ) -> str:
        """Upload a blob unless the repository has it; returns its digest.

        Blobs up to `chunk_size` (default `upload_chunk_size`) go in one PUT, larger ones
        as PATCHes of that size. With `mount_from`, a cross-repository mount is tried first.
        """
        source = _BlobSource.of(data)
        digest = digest or await source.digest()
        if await self.blob_exists(repo, digest):
            return digest
        if mount_from and await self.mount_blob(repo, digest, mount_from):
            return digest
        step = chunk_size or self.upload_chunk_size
        await self._retrying(f"upload blob {digest}", self._upload, repo, digest, source, step)
        return digest

    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Ask the registry to link a blob of `from_repo` into `repo`; False if it would not."""
        url = (
            self._url(repo, "blobs", "uploads/") + f"?mount={quote(digest)}&from={quote(from_repo)}"
        )
        call = self._call("POST", url, repo, digest, "pull,push")
        call.scopes = scope_key((*call.scopes, f"repository:{from_repo}:pull"))
        call.ok, call.data = (201, 202), b""
        status, location = await self._retrying(
            f"mount blob {digest} from {from_repo}", self._post_upload, call
        )
        if status == 202 and location:  # the registry opened an upload instead: cancel it
            with contextlib.suppress(RegistryError):
                await self._exchange(self._call("DELETE", location, repo, digest, "pull,push"))
        return status == 201

    async def _upload(self, repo: str, digest: str, source: _BlobSource, step: int) -> None:
        call = self._call("POST", self._url(repo, "blobs", "uploads/"), repo, digest, "pull,push")
        call.ok, call.data = (202,), b""
        _, location = await self._post_upload(call)
        size = await source.size()
        if size <= step:
            await self._put_upload(repo, digest, location, await source.read(0, size))
            return
        for offset in range(0, size, step):
            piece = await source.read(offset, min(step, size - offset))
            location = await self._patch_upload(repo, digest, location, offset, piece)
        await self._put_upload(repo, digest, location, b"")

    async def _post_upload(self, call: _Call) -> tuple[int, str]:
        async with self._open(call) as resp:
            return resp.status, _location(resp, call, self.registry)

    async def _patch_upload(
        self, repo: str, digest: str, location: str, offset: int, piece: bytes
    ) -> str:
        call = self._call("PATCH", location, repo, digest, "pull,push")
        call.headers["Content-Type"] = "application/octet-stream"
        call.headers["Content-Range"] = f"{offset}-{offset + len(piece) - 1}"
        call.data, call.ok = piece, (202,)
        async with self._open(call) as resp:
            return _location(resp, call, self.registry)

    async def _put_upload(self, repo: str, digest: str, location: str, piece: bytes) -> None:
        sep = "&" if "?" in location else "?"
        call = self._call(
            "PUT", f"{location}{sep}digest={quote(digest)}", repo, digest, "pull,push"
        )
        call.headers["Content-Type"] = "application/octet-stream"
        call.data, call.ok = piece, (201,)
        await self._exchange(call)

    # --- one request: auth, redirects, status, errors ----------------------------------

    def _call(self, method: str, url: str, repo: str, digest: str, actions: str) -> _Call:
        return _Call(method, url, repo, digest, scope_key([f"repository:{repo}:{actions}"]))

    async def _retrying(self, what: str, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        budget = _Budget(self.retry, what)
        while True:
            try:
                return await op(*args)
            except RegistryUnavailable as exc:
                await budget.wait_or_raise(exc)

    async def _exchange(self, call: _Call) -> Mapping[str, str]:
        """Send a request whose body is not needed; its response headers."""
        async with self._open(call) as resp:
            return resp.headers

    @contextlib.asynccontextmanager
    async def _open(self, call: _Call) -> AsyncIterator[aiohttp.ClientResponse]:
        """One attempt: auth challenge answered, redirects followed, status checked."""
        with self._translated(call):
            resp = await self._authorized(call)
            try:
                if resp.status not in call.ok:
                    await self._raise_for_status(call, resp)
                yield resp
            finally:
                resp.release()

    @contextlib.contextmanager
    def _translated(self, call: _Call) -> Iterator[None]:
        """The one place aiohttp's (and the socket's) exceptions become registry errors."""
        context: dict[str, Any] = {
            "registry": self.registry,
            "repo": call.repo,
            "digest": call.digest,
        }
        try:
            yield
        except RegistryError:
            raise
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            TimeoutError,
            ConnectionError,
        ) as exc:
            raise RegistryUnavailable(
                f"{call.method} {_short(call.url)}: {type(exc).__name__}: {exc}", **context
            ) from exc
        except aiohttp.ClientError as exc:
            raise RegistryError(
                f"{call.method} {_short(call.url)}: {type(exc).__name__}: {exc}", **context
            ) from exc

    async def _authorized(self, call: _Call) -> aiohttp.ClientResponse:
        header = self._auth.header_for(call.scopes, time.monotonic())
        resp = await self._follow(call, header)
        for _ in range(2):  # a cached token may be stale, a fresh one may lack the scope
            if resp.status != 401:
                break
            header = await self._answer(call, resp, header)
            if header is None:
                break
            resp.release()
            resp = await self._follow(call, header)
        return resp

    async def _answer(
        self, call: _Call, resp: aiohttp.ClientResponse, sent: str | None
    ) -> str | None:
        """The Authorization header that answers a 401's challenge; None to give up."""
        challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            return await self._bearer(call, bearer, sent)
        if any(c.scheme == "basic" for c in challenges):
            header = await self._basic_header()
            if header is not None and header == sent and await self._renewed(header):
                header = await self._basic_header()
            if header is None or header == sent:
                return None
            self._auth.scheme, self._auth.basic = "basic", header
            return header
        return None

    async def _basic_header(self) -> str | None:
        """The Basic header of the credentials to present; asks the provider the first time
        (under the lock: a request must not go on while another is still asking)."""
        if self._credentials is not None:
            await self._renewed(None)
        return self._basic()

    def _basic(self) -> str | None:
        return None if self.username is None else basic_header(self.username, self.password or "")

    async def _renewed(self, refused: str | None) -> bool:
        """Ask the credentials provider (again); True if it gave something new.

        `refused` is the Basic header of the credentials just refused (None for the first
        asking): if another request renewed them meanwhile, that counts as new. After a
        refusal the provider is asked at most once per RENEW_INTERVAL, so a wrong password
        does not run a credential helper for every request.
        """
        if self._credentials is None:
            return False
        async with self._asking:
            if refused is not None and self._basic() != refused:
                return True
            now = time.monotonic()
            if self._asked_at is not None and (
                refused is None or now - self._asked_at < RENEW_INTERVAL
            ):
                return False
            self._asked_at = now
            found = await asyncio.to_thread(self._credentials)
            username, password = found if found is not None else (None, None)
            changed = (username, password) != (self.username, self.password)
            self.username, self.password = username, password
            return changed

    async def _bearer(self, call: _Call, challenge: Challenge, sent: str | None) -> str:
        """A token for the call's scopes: one another request fetched meanwhile, or a new one."""
        async with self._token_locks.setdefault(call.scopes, asyncio.Lock()):
            cached = self._auth.header_for(call.scopes, time.monotonic())
            if cached is not None and cached != sent:
                return cached
            self._auth.forget(call.scopes)
            return "Bearer " + await self._fetch_token(call, challenge)

    async def _fetch_token(self, call: _Call, challenge: Challenge) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise BadResponse(
                "Bearer challenge without a realm",
                registry=self.registry,
                repo=call.repo,
                status=401,
            )
        params = [("service", challenge.params.get("service", ""))]
        params += [("scope", s) for s in scope_key((*call.scopes, *challenge.scopes))]
        for attempt in range(2):  # the credentials may be renewed once
            headers = {}
            basic = await self._basic_header()
            if basic is not None:
                headers["Authorization"] = basic
            token_call = _Call("GET", realm, call.repo, call.digest, headers=headers)
            async with self._http().get(realm, params=params, headers=headers) as resp:
                self.requests += 1
                self.token_fetches += 1
                if resp.status == 200:
                    body = await resp.json(content_type=None)
                    break
                refused = resp.status in (401, 403) and basic is not None
                if attempt == 0 and refused and await self._renewed(basic):
                    continue
                await self._raise_for_status(token_call, resp, token_service=True)
        try:
            token = token_from_json(body, time.monotonic())
        except ValueError as exc:
            raise BadResponse(
                f"token service {_short(realm)}: {exc}", registry=self.registry, repo=call.repo
            ) from None
        self._auth.store(call.scopes, token)
        return token.token

    async def _follow(self, call: _Call, auth: str | None) -> aiohttp.ClientResponse:
        """Send `call`, following redirects; Authorization only to the registry's origin."""
        url, method, data = call.url, call.method, call.data
        for _ in range(MAX_REDIRECTS + 1):
            headers = dict(call.headers)
            if auth is not None and _same_origin(url, self.base_url):
                headers["Authorization"] = auth
            elif url != call.url:
                headers.pop("Authorization", None)
            self.requests += 1
            resp = await self._http().request(
                method,
                yarl.URL(url, encoded=True),
                headers=headers,
                data=_body(data),
                allow_redirects=False,
            )
            if resp.status not in _REDIRECTS or "Location" not in resp.headers:
                return resp
            resp.release()
            url = urljoin(url, resp.headers["Location"])
            if resp.status == 303:
                method, data = "GET", None
        raise BadResponse(
            f"more than {MAX_REDIRECTS} redirects from {_short(call.url)}",
            registry=self.registry,
            repo=call.repo,
            digest=call.digest,
        )

    async def _raise_for_status(
        self, call: _Call, resp: aiohttp.ClientResponse, token_service: bool = False
    ) -> None:
        code, message = await _registry_error(resp)
        context: dict[str, Any] = {
            "registry": self.registry,
            "repo": call.repo,
            "digest": call.digest,
            "status": resp.status,
            "code": code,
        }
        what = f"{call.method} {_short(call.url)}" + (f": {message}" if message else "")
        if resp.status in (401, 403):
            raise Unauthorized(self._unauthorized_text(what, token_service), **context)
        if resp.status == 404:
            raise NotFound(f"not found: {what}", **context)
        if resp.status in _TRANSIENT or resp.status >= 500:
            error = RegistryUnavailable(f"{what}", **context)
            error.retry_after = _retry_after(resp.headers.get("Retry-After"))
            raise error
        raise RegistryError(f"unexpected HTTP {resp.status} for {what}", **context)

    def _unauthorized_text(self, what: str, token_service: bool) -> str:
        by = "token service" if token_service else "registry"
        if self.username is None:
            return f"{by} requires credentials and none were given: {what}"
        return f"{by} refused the credentials of user {self.username!r}: {what}"


# --- helpers --------------------------------------------------------------------------


class _BlobSource:
    """Bytes in memory or a file, read piecewise for chunked uploads."""

    def __init__(self, data: bytes | None, path: Path | None) -> None:
        self.data = data
        self.path = path

    @classmethod
    def of(cls, value: bytes | os.PathLike[str]) -> _BlobSource:
        if isinstance(value, bytes | bytearray | memoryview):
            return cls(bytes(value), None)
        return cls(None, Path(value))

    async def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return (await asyncio.to_thread(self.path.stat)).st_size

    async def read(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self.path is not None
        return await asyncio.to_thread(_pread_file, self.path, offset, length)

    async def digest(self) -> str:
        if self.data is not None:
            return sha256_digest(self.data)
        assert self.path is not None
        return await asyncio.to_thread(_file_digest, self.path)


def _pread_file(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _body(data: bytes | None) -> bytes | io.BytesIO | None:
    """Large bodies as a file object (aiohttp sends those without blocking the loop)."""
    return io.BytesIO(data) if data is not None and len(data) > 1 << 20 else data


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _short(url: str) -> str:
    return url.split("?", 1)[0]


def _retry_after(value: str | None) -> float:
    try:
        return min(float(value or 0), 30.0)
    except ValueError:
        return 0.0


def _location(resp: aiohttp.ClientResponse, call: _Call, registry: str) -> str:
    location = resp.headers.get("Location")
    if location is None:
        if resp.status == 201:
            return ""
        raise BadResponse(
            f"{call.method} upload answered without a Location header",
            registry=registry,
            repo=call.repo,
            digest=call.digest,
        )
    return urljoin(str(resp.url), location)


async def _registry_error(resp: aiohttp.ClientResponse) -> tuple[str, str]:
    """The first (code, message) of a Distribution error body, if it has one."""
    try:
        body = json.loads(await resp.content.read(64 << 10))
        first = body["errors"][0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, call: _Call, registry: str) -> bytes:
    data = await resp.content.read(cap + 1)
    if len(data) > cap:
        raise BadResponse(
            f"manifest larger than {cap} bytes",
            registry=registry,
            repo=call.repo,
            digest=call.digest,
        )
    return data


async def _read_range(
    resp: aiohttp.ClientResponse, offset: int, length: int, call: _Call, registry: str
) -> bytes:
    if resp.status == 200:  # the server ignored Range: skip to the offset
        await _skip(resp.content, offset)
    try:
        data = await resp.content.readexactly(length) if resp.status == 200 else await resp.read()
    except asyncio.IncompleteReadError as exc:
        data = exc.partial
    if len(data) != length:
        raise BadResponse(
            f"range {offset}+{length} answered with {len(data)} bytes",
            registry=registry,
            repo=call.repo,
            digest=call.digest,
            status=resp.status,
        )
    return data


async def _skip(stream: aiohttp.StreamReader, count: int) -> None:
    while count:
        piece = await stream.read(min(count, 1 << 20))
        if not piece:
            raise aiohttp.ClientPayloadError(f"blob ended {count} bytes before the range")
        count -= len(piece)


def _check_digest(data: bytes, digest: str, call: _Call, registry: str) -> None:
    algorithm, _, expected = digest.partition(":")
    if algorithm not in hashlib.algorithms_available:
        return
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise BadResponse(
            f"content hashes to {algorithm}:{actual}",
            registry=registry,
            repo=call.repo,
            digest=digest,
        )


def _parse_manifest(
    raw: bytes, headers: Mapping[str, str], ref: str, call: _Call, registry: str
) -> Manifest:
    context: dict[str, Any] = {"registry": registry, "repo": call.repo, "digest": ref}
    if is_digest(ref):
        _check_digest(raw, ref, call, registry)
    digest = sha256_digest(raw)
    sent = headers.get("Docker-Content-Digest")
    if sent and sent.startswith("sha256:") and sent != digest:
        raise BadResponse(f"manifest hashes to {digest}, registry says {sent}", **context)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadResponse(f"manifest is not JSON: {exc}", **context) from None
    if not isinstance(body, dict):
        raise BadResponse("manifest is not a JSON object", **context)
    media_type = media_type_of(headers.get("Content-Type", ""), body)
    if media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
        raise BadResponse(f"unsupported manifest media type {media_type!r}", **context)
    return Manifest(media_type, digest, raw, body)
