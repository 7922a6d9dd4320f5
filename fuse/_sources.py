"""Building the chunk source a mount reads through: cache over origin, from the options.

The origin is a blob directory, a backend named by a nydusd-style JSON config (registry,
localfs, s3), or the registry an image reference points at. With a cache directory the
verified local cache sits in front of it. A registry client presents the config's `auth`
if it has one, else what `SourceOptions.credentials` finds for its host (`--creds`, then
the Docker config file).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rafs import RafsError
from rafs._backends import LocalDirBackend, RegistryBackend
from rafs._cache import BlobCache, CachedSource
from rafs._chunksource import BlobBackend, ChunkSource
from rafs._create import write_atomically
from rafs._nydusimage import bootstrap_layer, extract_bootstrap
from rafs._oci import ImageReference
from rafs._origin import OriginSource
from rafs._regaccess import RegistryCredentials


class ConfigError(RafsError):
    """A backend config file is missing, not JSON, or names an unknown backend."""


@dataclass
class SourceOptions:
    blob_dir: Path | None = None
    backend_config: Path | None = None
    cache_dir: Path | None = None
    cache_size: int | None = None
    validate: bool = False
    insecure: bool = False
    platform: str = "linux/amd64"
    credentials: RegistryCredentials = field(default_factory=RegistryCredentials)


Counters = Callable[[], dict[str, float]]


async def open_source(
    opts: SourceOptions, backend: BlobBackend | None
) -> tuple[ChunkSource, Counters]:
    if backend is None:
        backend = backend_from_options(opts)
    origin = OriginSource(backend)
    if opts.cache_dir is None:
        return origin, lambda: _origin_counters(origin)
    cache = BlobCache(opts.cache_dir, size_limit=opts.cache_size)
    cached = CachedSource(cache, origin, validate=opts.validate)
    return cached, lambda: {**_origin_counters(origin), **_cache_counters(cached)}


def _origin_counters(origin: OriginSource) -> dict[str, float]:
    return {
        "origin_requests_total": origin.requests,
        "origin_bytes_total": origin.bytes_read,
        "origin_chunks_verified_total": origin.chunks_verified,
        "origin_chunks_failed_total": origin.chunks_failed,
    }


def _cache_counters(cached: CachedSource) -> dict[str, float]:
    return {
        "cache_hits_total": cached.hits,
        "cache_misses_total": cached.misses,
        "cache_validation_failures_total": cached.validation_failures,
    }


def backend_from_options(opts: SourceOptions) -> BlobBackend:
    if opts.blob_dir is not None:
        return LocalDirBackend(opts.blob_dir)
    if opts.backend_config is None:
        raise ConfigError("no origin: give --blob-dir or --backend-config")
    return backend_from_config(load_config(opts.backend_config), opts)


def load_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read backend config {path}: {exc}") from exc
    backend = data.get("device", data).get("backend") if isinstance(data, dict) else None
    if not isinstance(backend, dict) or "type" not in backend:
        raise ConfigError(f"{path}: no backend.type (or device.backend.type) in the config")
    return backend


def backend_from_config(backend: dict[str, Any], opts: SourceOptions) -> BlobBackend:
    kind, config = backend["type"], backend.get("config", {})
    if kind == "localfs":
        return LocalDirBackend(config.get("dir") or Path(config["blob_file"]).parent)
    if kind == "registry":
        return _registry_backend(config, opts)
    if kind in ("s3", "oss"):
        return _s3_backend(config)
    raise ConfigError(f"unknown backend type {kind!r} (localfs, registry, s3)")


def _registry_backend(config: dict[str, Any], opts: SourceOptions) -> BlobBackend:
    insecure = opts.insecure or config.get("scheme") == "http" or bool(config.get("skip_verify"))
    credentials = opts.credentials
    if config.get("auth"):
        credentials = RegistryCredentials(every_host=_config_auth(config["auth"]))
    client = credentials.client(config["host"], insecure=insecure)
    return RegistryBackend(client, config["repo"], own_client=True)


def _config_auth(auth: str) -> tuple[str, str]:
    try:
        user, _, password = base64.b64decode(auth, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user = password = ""
    if not user:
        raise ConfigError("the registry backend's auth is not base64 of USER:PASSWORD")
    return user, password


def _s3_backend(config: dict[str, Any]) -> BlobBackend:
    from rafs._s3 import S3Backend

    endpoint = config.get("endpoint")
    if endpoint and "://" not in endpoint:
        endpoint = f"{config.get('scheme', 'https')}://{endpoint}"
    return S3Backend(
        config["bucket_name"],
        prefix=config.get("object_prefix", ""),
        endpoint_url=endpoint,
        region=config.get("region") or "us-east-1",
        access_key_id=config.get("access_key_id"),
        secret_access_key=config.get("access_key_secret"),
    )


async def open_image(reference: str, opts: SourceOptions) -> tuple[Path, BlobBackend]:
    """Fetch the bootstrap of a Nydus image; the backend reads its blobs from the registry."""
    ref = ImageReference.parse(reference)
    client = opts.credentials.client(ref.registry, insecure=opts.insecure)
    try:
        manifest = await client.get_manifest(ref.repository, ref.ref, platform=opts.platform)
        layer = bootstrap_layer(manifest)
        path = _bootstrap_path(opts, layer.digest)
        if not path.exists():
            data = extract_bootstrap(await client.get_blob(ref.repository, layer.digest))
            write_atomically(path, data)
    except BaseException:
        await client.close()
        raise
    return path, RegistryBackend(client, ref.repository, own_client=True)


def _bootstrap_path(opts: SourceOptions, digest: str) -> Path:
    base = opts.cache_dir or Path("/var/lib/nydus-mesh/bootstraps")
    name = hashlib.sha256(digest.encode()).hexdigest()[:32]
    return base / "bootstraps" / f"{name}.boot"
