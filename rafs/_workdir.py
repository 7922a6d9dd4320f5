"""The nydusify work directory: built blobs, the layer conversion cache, spooled layers.

    WORK/blobs/<blob id>      Nydus blobs built here, or copied in for a chunk dictionary
    WORK/layers/<key>.json    one converted source layer: its digest, the options, its blob
    WORK/layers/<key>.boot    that layer's bootstrap (whiteouts kept, for `merge`)
    WORK/spool/               source layers while they are read; each removed after use

A cache key is the sha256 of the source layer digest and every build setting that changes
the result (chunk size, compressor, digester, RAFS version, the chunk dictionary's blobs).

The rule it keeps: a file appears under its final name only complete (temporary file,
then rename), so an interrupted run leaves at most a stray temporary file, never a record
pointing at a half-written bootstrap; a spooled layer is verified against its digest
before anyone reads it, and removed when it fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._create import write_atomically
from ._errors import RafsError
from ._oci import Descriptor
from ._registry import RegistryClient

CACHE_FORMAT = 1  # bumped when a record's meaning changes: old records are then ignored


class WorkDirError(RafsError):
    """The work directory cannot be used, or a spooled layer is not what it claims."""


@dataclass(frozen=True, slots=True)
class LayerRecord:
    """A source layer converted once: its new blob (if it stored any chunk) and bootstrap."""

    source: str  # the source layer's digest
    blob_id: str | None
    blob_size: int
    bootstrap: Path


class WorkDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.layers = root / "layers"
        self.spool = root / "spool"
        try:
            for directory in (self.blobs, self.layers, self.spool):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkDirError(f"cannot use work directory {root}: {exc.strerror}") from exc

    def blob_path(self, blob_id: str) -> Path:
        return self.blobs / blob_id

    # --- the conversion cache -----------------------------------------------------------

    @staticmethod
    def cache_key(source_digest: str, settings: Mapping[str, Any]) -> str:
        text = json.dumps(
            {"format": CACHE_FORMAT, "source": source_digest, **settings}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def lookup(self, key: str) -> LayerRecord | None:
        """The record under `key` if it and its bootstrap are there and readable."""
        try:
            data = json.loads((self.layers / f"{key}.json").read_text())
            record = LayerRecord(
                source=str(data["source"]),
                blob_id=data["blob_id"],
                blob_size=int(data["blob_size"]),
                bootstrap=self.layers / f"{key}.boot",
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if record.bootstrap.is_file() else None

    def store(self, key: str, source: str, bootstrap: bytes, blob_id: str | None) -> LayerRecord:
        """Keep a converted layer: the bootstrap first, then the record naming it."""
        boot_path = self.layers / f"{key}.boot"
        write_atomically(boot_path, bootstrap)
        size = self.blob_path(blob_id).stat().st_size if blob_id else 0
        body = {"source": source, "blob_id": blob_id, "blob_size": size}
        write_atomically(self.layers / f"{key}.json", json.dumps(body).encode() + b"\n")
        return LayerRecord(source, blob_id, size, boot_path)


async def spool_blob(
    client: RegistryClient,
    repo: str,
    layer: Descriptor,
    directory: Path,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Stream a blob into a new file under `directory`, checking its size and digest."""
    algorithm, _, expected = layer.digest.partition(":")
    if algorithm not in ("sha256", "sha512"):
        raise WorkDirError(f"blob {layer.digest}: unsupported digest algorithm {algorithm!r}")
    hasher = hashlib.new(algorithm)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".blob-")
    try:
        with os.fdopen(fd, "wb") as out:
            async for piece in client.stream_blob(repo, layer.digest):
                out.write(piece)
                hasher.update(piece)
                if on_bytes is not None:
                    on_bytes(len(piece))
            size = out.tell()
        _check_blob(layer, size, hasher.hexdigest(), expected)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _check_blob(layer: Descriptor, size: int, actual: str, expected: str) -> None:
    if layer.size and size != layer.size:
        raise WorkDirError(f"blob {layer.digest}: the manifest says {layer.size} bytes, got {size}")
    if actual != expected:
        algorithm = layer.digest.partition(":")[0]
        raise WorkDirError(f"blob {layer.digest}: content hashes to {algorithm}:{actual}")
