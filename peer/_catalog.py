"""What this peer knows about blobs: chunk count, origin URL and chunk table.

A chunk table (per chunk index: offset, sizes, digest) comes from a bootstrap, either one
being mounted or one a seed fetched for a task (see `_origins`). Without it a chunk cannot
be verified, so nothing of a blob is fetched before its entry is here.

Rule: entries only grow (a second bootstrap adds the chunks the first did not name); the
chunk count and origin URL of a blob are persisted under the data dir, so a restarted peer
re-announces what its cache holds before any image is mounted again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from rafs import Bootstrap, ChunkInfo
from rafs._chunksource import BlobRef
from rafs._create import write_atomically

log = logging.getLogger("dfdaemon.catalog")


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """One blob: how to verify its chunks, how many it has, where its origin is."""

    ref: BlobRef
    chunk_count: int
    origin_url: str | None = None
    chunks: Mapping[int, ChunkInfo] = field(default_factory=dict)

    @property
    def blob_id(self) -> str:
        return self.ref.blob_id


def entries_from_bootstrap(
    boot: Bootstrap, origin_url: Callable[[str], str | None]
) -> list[BlobEntry]:
    """An entry per blob of the image, with every chunk the bootstrap names."""
    tables: list[dict[int, ChunkInfo]] = [{} for _ in boot.blobs]
    for inode in boot.inodes.values():
        for chunk in inode.chunks:
            tables[chunk.blob_index].setdefault(chunk.index, chunk)
    entries = []
    for position, blob in enumerate(boot.blobs):
        table = tables[position]
        count = max(blob.chunk_count, max(table, default=-1) + 1)
        if count == 0:
            continue
        ref = BlobRef.of(boot, position)
        entries.append(BlobEntry(ref, count, origin_url(blob.blob_id), table))
    return entries


class BlobCatalog:
    """Blob entries by id, with the chunk counts of earlier runs kept in `state_dir`."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self._entries: dict[str, BlobEntry] = {}
        self._counts: dict[str, int] = {}
        self.on_add: list[Callable[[str], None]] = []
        if state_dir is not None:
            self._load(state_dir)

    def _load(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        for path in state_dir.glob("*.json"):
            try:
                self._counts[path.stem] = int(json.loads(path.read_text())["chunk_count"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring blob state %s: %s", path, exc)

    def add(self, entry: BlobEntry) -> BlobEntry:
        """Record a blob (merging chunk tables with an entry already known); the result."""
        old = self._entries.get(entry.blob_id)
        if old is not None:
            entry = _merged(old, entry)
        self._entries[entry.blob_id] = entry
        if self._counts.get(entry.blob_id) != entry.chunk_count:
            self._counts[entry.blob_id] = entry.chunk_count
            self._persist(entry)
        for listener in self.on_add:
            listener(entry.blob_id)
        return entry

    def _persist(self, entry: BlobEntry) -> None:
        if self.state_dir is None:
            return
        body = {"chunk_count": entry.chunk_count, "origin_url": entry.origin_url}
        try:
            write_atomically(self.state_dir / f"{entry.blob_id}.json", json.dumps(body).encode())
        except OSError as exc:
            log.warning("cannot persist blob %s: %s", entry.blob_id, exc)

    def get(self, blob_id: str) -> BlobEntry | None:
        return self._entries.get(blob_id)

    def chunk_count(self, blob_id: str) -> int | None:
        """The blob's chunk count, from an entry or from an earlier run."""
        entry = self._entries.get(blob_id)
        return entry.chunk_count if entry is not None else self._counts.get(blob_id)

    def known_counts(self) -> dict[str, int]:
        """Every blob with a known chunk count (announced after registering)."""
        return dict(self._counts)


def _merged(old: BlobEntry, new: BlobEntry) -> BlobEntry:
    """The first entry's count (the one announced) with both chunk tables."""
    chunks = {**new.chunks, **old.chunks}
    return replace(old, chunks=chunks, origin_url=old.origin_url or new.origin_url)
