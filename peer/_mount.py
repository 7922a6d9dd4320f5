"""Embedded FUSE: a Nydus image from a registry, mounted with misses going cache -> mesh ->
origin.

The bootstrap comes the way `nydusd --image` gets it (`fuse._sources.open_image`); the
image's blobs enter the catalog with origin URLs that name the bootstrap layer (so a seed
can verify what it fetches, see `_origins`); the mount is a `fuse._daemon.Daemon` whose
source is `CachedSource(cache, MeshSource(mesh, catalog, OriginSource(registry)))`. Like
`nydusd`, the mount fetches the files of the bootstrap's prefetch table in the background,
through that same stack (so from peers first), before they are read.

Rule: the mount reads only through that stack, so every byte it hands out was verified
(by the cache when stored, by the mesh fetcher or the origin when fetched).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fuse._daemon import DaemonConfig
from fuse._prefetch import table_chunks
from fuse._sources import SourceOptions, open_image
from rafs._backends import RegistryBackend
from rafs._cache import CachedSource
from rafs._load import load_bootstrap
from rafs._nydusimage import bootstrap_layer
from rafs._oci import ImageReference
from rafs._origin import OriginSource

from ._catalog import entries_from_bootstrap
from ._errors import UsageError
from ._mesh import MeshSource
from ._node import PeerNode
from ._options import MountSpec
from ._origins import RegistryBlobUrl


@dataclass
class PreparedMount:
    """A mount ready to run, and the source to close after it."""

    spec: MountSpec
    config: DaemonConfig
    source: CachedSource


async def prepare_mount(node: PeerNode, spec: MountSpec, number: int) -> PreparedMount:
    """Fetch the image's bootstrap, add its blobs to the catalog, build the read stack."""
    options = node.options
    opts = SourceOptions(
        cache_dir=options.data_dir, insecure=options.insecure, credentials=options.credentials
    )
    boot_path, backend = await open_image(spec.reference, opts)
    try:
        if not isinstance(backend, RegistryBackend):
            raise UsageError(f"--mount {spec.reference}: the image's blobs are not in a registry")
        digest = await _bootstrap_digest(backend, spec.reference, opts.platform)
        boot = await asyncio.to_thread(load_bootstrap, boot_path)
        prefetch = table_chunks(boot) if node.options.prefetch else []
    except BaseException:
        await backend.close()
        raise
    base = backend.client.base_url
    for entry in entries_from_bootstrap(
        boot, lambda blob_id: str(RegistryBlobUrl(base, backend.repo, blob_id, digest))
    ):
        node.catalog.add(entry)
    mesh = MeshSource(node.mesh, node.catalog, OriginSource(backend))
    source = CachedSource(node.cache, mesh)
    sockets = node.options.data_dir / "mounts"
    sockets.mkdir(parents=True, exist_ok=True)
    config = DaemonConfig(
        boot=boot,
        source=source,
        mountpoint=spec.mountpoint,
        image=spec.reference,
        apisock=sockets / f"{number}.sock",
        counters=lambda: _counters(source),
        prefetch=prefetch,
    )
    return PreparedMount(spec, config, source)


async def _bootstrap_digest(backend: RegistryBackend, reference: str, platform: str) -> str:
    ref = ImageReference.parse(reference)
    manifest = await backend.client.get_manifest(ref.repository, ref.ref, platform=platform)
    return bootstrap_layer(manifest).digest


def _counters(source: CachedSource) -> dict[str, float]:
    return {
        "cache_hits_total": source.hits,
        "cache_misses_total": source.misses,
        "cache_validation_failures_total": source.validation_failures,
    }
