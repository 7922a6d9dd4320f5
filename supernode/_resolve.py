"""Resolving an image reference to its blobs, for `POST /api/v1/admin/preheat {"image"}`.

Speaks just enough of the OCI distribution API: fetch the manifest (following an index to
the linux/amd64 entry, or the first), with anonymous bearer-token auth when the registry
asks for it, and turn each layer into a `PreheatBlob` whose origin is the registry's blob
URL. Loopback registries are spoken to over plain HTTP, others over HTTPS, unless the
reference starts with `http://` or `https://`. Failures are `ResolveError`s naming the
reference; they fail the job, never the request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from protocol import PreheatBlob

from ._errors import SupernodeError
from ._service import Supernode

log = logging.getLogger("supernode.preheat")

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MAX_MANIFEST = 4 * 1024 * 1024
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_TIMEOUT = aiohttp.ClientTimeout(total=30)


class ResolveError(SupernodeError):
    """An image reference could not be turned into blobs."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    scheme: str
    registry: str
    repository: str
    reference: str  # a tag or a digest

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.registry}/v2/{self.repository}"


def _default_scheme(registry: str) -> str:
    """Plain HTTP for loopback registries, as Docker does; HTTPS for the rest."""
    if registry.startswith("["):
        host = registry[1:].partition("]")[0]
    else:
        host = registry.partition(":")[0]
    if host == "localhost":
        return "http"
    try:
        return "http" if ipaddress.ip_address(host).is_loopback else "https"
    except ValueError:
        return "https"


def parse_reference(text: str) -> ImageRef:
    """`[http(s)://]registry/repo[:tag|@digest]`; the registry part is required."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    registry, slash, path = rest.partition("/")
    if not slash or not path or scheme not in ("", "http", "https"):
        raise ResolveError(f"image reference {text!r} needs a registry: host[:port]/repo[:tag]")
    repository, at, digest = path.partition("@")
    if at:
        return ImageRef(scheme or _default_scheme(registry), registry, repository, digest)
    name, colon, tag = repository.rpartition(":")
    if not colon or "/" in tag:
        name, tag = repository, "latest"
    return ImageRef(scheme or _default_scheme(registry), registry, name, tag)


class _Registry:
    """One registry conversation: GETs with the bearer token it hands out, if any."""

    def __init__(self, session: aiohttp.ClientSession, image: ImageRef) -> None:
        self._session = session
        self._image = image
        self._token: str | None = None

    async def get_json(self, url: str, accept: str) -> tuple[str, Any]:
        async with await self._get(url, accept) as response:
            body = await response.content.read(MAX_MANIFEST + 1)
            if response.status != 200:
                raise ResolveError(f"{url}: HTTP {response.status}")
            if len(body) > MAX_MANIFEST:
                raise ResolveError(f"{url}: manifest larger than {MAX_MANIFEST} bytes")
            try:
                return response.content_type, msgspec.json.decode(body)
            except msgspec.DecodeError as exc:
                raise ResolveError(f"{url}: not JSON: {exc}") from None

    async def _get(self, url: str, accept: str) -> aiohttp.ClientResponse:
        response = await self._session.get(url, headers=self._headers(accept))
        if response.status == 401 and self._token is None:
            challenge = response.headers.get("WWW-Authenticate", "")
            response.release()
            self._token = await self._fetch_token(challenge)
            response = await self._session.get(url, headers=self._headers(accept))
        return response

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _fetch_token(self, challenge: str) -> str:
        if not challenge.lower().startswith("bearer "):
            raise ResolveError(f"registry {self._image.registry} wants auth: {challenge!r}")
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.pop("realm", "")
        async with self._session.get(realm, params=params) as response:
            if response.status != 200:
                raise ResolveError(f"token from {realm}: HTTP {response.status}")
            data = await response.json(content_type=None)
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str):
            raise ResolveError(f"token from {realm}: no token in the answer")
        return token


def _pick_platform(index: dict[str, Any]) -> str:
    manifests = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    for entry in manifests:
        platform = entry.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return str(entry["digest"])
    if not manifests:
        raise ResolveError("image index lists no manifests")
    return str(manifests[0]["digest"])


NYDUS_BLOB_TYPE = "application/vnd.oci.image.layer.nydus.blob.v1"
NYDUS_BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"


def _layers(image: ImageRef, manifest: Any) -> list[PreheatBlob]:
    """One preheat blob per layer. In a Nydus image the data blobs name the bootstrap layer
    in their origin (`#nydus-bootstrap=DIGEST`) so a seed can verify every chunk, and the
    bootstrap layer itself is left to the peers that mount the image."""
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or not layers:
        raise ResolveError(f"{image.repository}:{image.reference}: manifest has no layers")
    bootstrap = _nydus_bootstrap(layers)
    blobs = []
    for layer in layers:
        digest = layer.get("digest", "") if isinstance(layer, dict) else ""
        match = _DIGEST.match(digest)
        if match is None:
            raise ResolveError(f"layer digest {digest!r} is not sha256:<64 hex>")
        if bootstrap is not None and digest == bootstrap:
            continue
        url = f"{image.base}/blobs/{digest}"
        if bootstrap is not None and layer.get("mediaType") == NYDUS_BLOB_TYPE:
            url += f"#nydus-bootstrap={bootstrap}"
        blobs.append(PreheatBlob(blob_id=match[1], origin_url=url))
    return blobs


def _nydus_bootstrap(layers: list[Any]) -> str | None:
    for layer in reversed(layers):
        annotations = layer.get("annotations") if isinstance(layer, dict) else None
        if isinstance(annotations, dict) and annotations.get(NYDUS_BOOTSTRAP_ANNOTATION) == "true":
            digest = layer.get("digest")
            return digest if isinstance(digest, str) and _DIGEST.match(digest) else None
    return None


async def resolve_image(session: aiohttp.ClientSession, text: str) -> list[PreheatBlob]:
    """The layers of the image `text` names, as blobs to preheat."""
    image = parse_reference(text)
    registry = _Registry(session, image)
    accept = ", ".join(MANIFEST_TYPES)
    try:
        kind, doc = await registry.get_json(f"{image.base}/manifests/{image.reference}", accept)
        if "index" in kind or "list" in kind:
            digest = _pick_platform(doc)
            _, doc = await registry.get_json(f"{image.base}/manifests/{digest}", accept)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ResolveError(f"{text}: registry unreachable: {exc!r}") from None
    return _layers(image, doc)


class ImageResolver:
    """Resolves images of preheat jobs in the background and starts or fails the jobs."""

    def __init__(self, node: Supernode) -> None:
        self._node = node
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, job_id: str, image: str) -> None:
        task = asyncio.create_task(self._resolve(job_id, image), name=f"preheat-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, job_id: str, image: str) -> None:
        try:
            blobs = await resolve_image(self._open(), image)
            self._node.start_job(job_id, blobs)
        except SupernodeError as exc:
            log.warning("preheat %s of %s failed: %s", job_id, image, exc)
            self._node.fail_job(job_id, str(exc))

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        return self._session

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
