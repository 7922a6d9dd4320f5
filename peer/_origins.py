"""Origins named by URL, and where a seed gets a blob's chunk table.

A blob's origin URL is what peers put in `ScheduleRequest.origin_url` and what a seed
finds in its `SeedTask`. This peer understands registry blob URLs:

    http(s)://HOST[:PORT]/v2/REPO/blobs/sha256:BLOB#nydus-bootstrap=sha256:BOOT

The fragment is the convention that carries the chunk table: `BOOT` is the digest of the
Nydus image's bootstrap layer in the same repository (a gzip tar holding
`image/image.boot`). A seed fetches it once (the registry checks it against its digest),
loads it, and so knows every chunk of `BLOB` (offset, sizes, digest) that the image uses:
enough to fetch those chunks from the origin and verify them. The supernode stores and
hands out origin URLs as opaque strings, so no message changes. A URL without the
fragment names a blob whose chunks no one here can verify: `ChunkTableMissing`.

Rule: one `RegistryClient` per registry, one `OriginSource` per repository, each closed
with the pool; bootstraps are kept under `bootstrap_dir` by digest and loaded once. A
client presents what `credentials` finds for its host when it is made (`--registry-creds`,
then the Docker config file).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from rafs import Bootstrap, RafsError
from rafs._backends import RegistryBackend
from rafs._create import write_atomically
from rafs._load import load_bootstrap
from rafs._nydusimage import extract_bootstrap
from rafs._origin import OriginSource
from rafs._regaccess import RegistryCredentials
from rafs._registry import RegistryClient

from ._catalog import BlobEntry, entries_from_bootstrap
from ._errors import ChunkTableMissing, OriginUrlError

_URL = re.compile(
    r"^(?P<base>https?://[^/\s]+)/v2/(?P<repo>[a-z0-9][a-z0-9._/-]*)/blobs/sha256:"
    r"(?P<blob>[0-9a-f]{64})(?:#(?P<fragment>\S*))?$"
)
_BOOTSTRAP = re.compile(r"(?:^|&)nydus-bootstrap=(?P<digest>sha256:[0-9a-f]{64})(?:&|$)")


@dataclass(frozen=True, slots=True)
class RegistryBlobUrl:
    """A blob in a registry repository, and the bootstrap layer describing its chunks."""

    base_url: str  # scheme://host[:port]
    repo: str
    blob_id: str
    bootstrap: str | None = None  # sha256:... of the bootstrap layer

    @classmethod
    def parse(cls, url: str) -> RegistryBlobUrl:
        match = _URL.match(url)
        if match is None:
            raise OriginUrlError(
                url, "not a registry blob URL (http(s)://HOST/v2/REPO/blobs/sha256:...)"
            )
        boot = _BOOTSTRAP.search(match["fragment"] or "")
        return cls(match["base"], match["repo"], match["blob"], boot["digest"] if boot else None)

    def __str__(self) -> str:
        url = f"{self.base_url}/v2/{self.repo}/blobs/sha256:{self.blob_id}"
        return url + (f"#nydus-bootstrap={self.bootstrap}" if self.bootstrap else "")


class OriginPool:
    """Registry clients and origin sources by URL, and the bootstraps seeds need."""

    def __init__(self, bootstrap_dir: Path, credentials: RegistryCredentials | None = None) -> None:
        self.bootstrap_dir = bootstrap_dir
        self.credentials = credentials or RegistryCredentials()
        self._clients: dict[str, RegistryClient] = {}
        self._sources: dict[tuple[str, str], OriginSource] = {}
        self._bootstraps: dict[str, asyncio.Task[Bootstrap]] = {}

    def client(self, base_url: str) -> RegistryClient:
        if base_url not in self._clients:
            self._clients[base_url] = self.credentials.client(base_url)
        return self._clients[base_url]

    def source(self, url: RegistryBlobUrl) -> OriginSource:
        key = (url.base_url, url.repo)
        if key not in self._sources:
            self._sources[key] = OriginSource(RegistryBackend(self.client(url.base_url), url.repo))
        return self._sources[key]

    async def chunk_table(self, blob_id: str, origin_url: str) -> BlobEntry:
        """The blob's entry, from the bootstrap its origin URL names."""
        url = RegistryBlobUrl.parse(origin_url)
        if url.blob_id != blob_id:
            raise OriginUrlError(origin_url, f"names blob {url.blob_id}, not {blob_id}")
        if url.bootstrap is None:
            raise ChunkTableMissing(blob_id, f"origin {origin_url} has no #nydus-bootstrap=")
        boot = await self._bootstrap(url)
        for entry in entries_from_bootstrap(boot, lambda b: origin_url if b == blob_id else None):
            if entry.blob_id == blob_id:
                return entry
        raise ChunkTableMissing(blob_id, f"bootstrap {url.bootstrap} does not use it")

    async def _bootstrap(self, url: RegistryBlobUrl) -> Bootstrap:
        assert url.bootstrap is not None
        task = self._bootstraps.get(url.bootstrap)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.create_task(self._load_bootstrap(url, url.bootstrap))
            self._bootstraps[url.bootstrap] = task
        return await asyncio.shield(task)

    async def _load_bootstrap(self, url: RegistryBlobUrl, digest: str) -> Bootstrap:
        path = self.bootstrap_dir / f"{digest.partition(':')[2]}.boot"
        if not path.exists():
            layer = await self.client(url.base_url).get_blob(url.repo, digest)
            write_atomically(path, await asyncio.to_thread(extract_bootstrap, layer))
        try:
            return await asyncio.to_thread(load_bootstrap, path)
        except RafsError:
            path.unlink(missing_ok=True)
            raise

    async def close(self) -> None:
        for task in self._bootstraps.values():
            task.cancel()
        await asyncio.gather(*self._bootstraps.values(), return_exceptions=True)
        for client in self._clients.values():
            await client.close()
