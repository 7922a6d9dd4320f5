"""Chunk dictionaries for `nydusify convert --chunk-dict`: earlier images whose chunks a new
image points at instead of storing them again.

A dictionary is named as Nydus's nydusify names it, `bootstrap:registry:REF` or
`bootstrap:local:PATH`, or simply by a bootstrap file or a Nydus image reference. Each
blob of a registry dictionary remembers where it lives, so the conversion can mount or
copy it into the target repository when the new image uses it.

The rule it keeps: a dictionary that is not a readable RAFS bootstrap or Nydus image is
refused with a `ChunkDictError` naming it, before any layer is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._builder import ChunkDict
from ._digest import Digester
from ._errors import RafsError
from ._load import load_bootstrap, load_bootstrap_bytes
from ._model import Bootstrap
from ._nydusimage import bootstrap_layer, extract_bootstrap
from ._oci import ImageReference
from ._regaccess import RegistryAccess
from ._registry import InvalidReference, RegistryClient


class ChunkDictError(RafsError):
    """A chunk dictionary that cannot be used."""


@dataclass(frozen=True, slots=True)
class BlobOrigin:
    """Where a dictionary blob can be fetched (or cross-mounted) from."""

    client: RegistryClient
    repo: str


@dataclass
class ChunkDicts:
    """The dictionaries of one conversion, merged."""

    chunk_dict: ChunkDict | None = None
    origins: dict[str, BlobOrigin] = field(default_factory=dict)
    clients: list[RegistryClient] = field(default_factory=list)

    @property
    def blob_ids(self) -> list[str]:
        return [b.blob_id for b in self.chunk_dict.blobs] if self.chunk_dict else []

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def parse_spec(spec: str) -> Path | ImageReference:
    """A dictionary spec as a local bootstrap path or an image reference."""
    kind, _, rest = spec.partition(":")
    if kind == "bootstrap":
        where, _, name = rest.partition(":")
        if where == "local" and name:
            return Path(name)
        if where == "registry" and name:
            return _reference(name, spec)
        raise ChunkDictError(
            f"chunk dict {spec!r}: expected bootstrap:registry:REF or bootstrap:local:PATH"
        )
    if Path(spec).is_file():
        return Path(spec)
    return _reference(spec, spec)


def _reference(text: str, spec: str) -> ImageReference:
    try:
        return ImageReference.parse(text)
    except InvalidReference as exc:
        raise ChunkDictError(
            f"chunk dict {spec!r} is neither a bootstrap file nor an image reference: {exc}"
        ) from None


async def load_chunk_dicts(
    specs: list[str],
    digester: Digester,
    access_for: Callable[[str], RegistryAccess],
    platform: str,
) -> ChunkDicts:
    """Read every dictionary; `access_for(registry)` says how to reach a registry."""
    found = ChunkDicts()
    boots: list[Bootstrap] = []
    try:
        for spec in specs:
            boots.append(await _load_one(spec, found, access_for, platform))
        if boots:
            found.chunk_dict = ChunkDict.from_bootstraps(boots, digester)
    except BaseException:
        await found.close()
        raise
    return found


async def _load_one(
    spec: str, found: ChunkDicts, access_for: Callable[[str], RegistryAccess], platform: str
) -> Bootstrap:
    where = parse_spec(spec)
    if isinstance(where, Path):
        try:
            return load_bootstrap(where)
        except RafsError as exc:
            raise ChunkDictError(f"chunk dict {spec!r}: {exc}") from None
    client = access_for(where.registry).client(where.registry)
    found.clients.append(client)
    manifest = await client.get_manifest(where.repository, where.ref, platform)
    layer = bootstrap_layer(manifest)
    packed = await client.get_blob(where.repository, layer.digest)
    boot = load_bootstrap_bytes(extract_bootstrap(packed))
    for blob in boot.blobs:
        found.origins.setdefault(blob.blob_id, BlobOrigin(client, where.repository))
    return boot
