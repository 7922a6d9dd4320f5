"""`merge`: one image from per-layer bootstraps, upper layers over lower ones.

Each layer's tree is laid over the result in order, applying OCI whiteouts (`.wh.NAME`
removes NAME below, `.wh..wh..opq` hides everything below in its directory) and overlayfs
ones (a 0:0 character device removes, `trusted.overlay.opaque=y` hides). Chunks keep
pointing at their layer's blob; the merged blob table is the union in layer order.
A directory a layer holds only as a parent of its entries (marked `IMPLICIT_DIR` by the
tar importer) keeps the metadata it has below, as OCI layer rules want.
"""

from __future__ import annotations

import dataclasses
import stat
import tempfile
from pathlib import Path

from ._builder import BuildOptions, BuildResult, ChunkDict, build, writer_for
from ._errors import BuildError
from ._model import BlobInfo, Bootstrap, Inode
from ._source import SourceEntry, new_root
from ._tarimport import IMPLICIT_DIR

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
OVERLAY_OPAQUE = b"trusted.overlay.opaque"


def merge(layers: list[Bootstrap], opts: BuildOptions) -> BuildResult:
    if not layers:
        raise BuildError("merge needs at least one layer bootstrap")
    blob_ids: list[str] = []
    blobs: list[BlobInfo] = []
    root = new_root()
    for layer in layers:
        _check_compatible(layers[0], layer)
        place = _place_blobs(layer, blob_ids, blobs)
        overlay = _to_source(layer, place)
        _apply(root, overlay, is_root=True)
    with tempfile.TemporaryDirectory() as tmp:
        return build(root, opts, writer_for(Path(tmp), opts, None), ChunkDict(blobs=blobs))


def _check_compatible(first: Bootstrap, layer: Bootstrap) -> None:
    for what in ("chunk_size", "digester", "compressor"):
        if getattr(first, what) != getattr(layer, what):
            raise BuildError(
                f"layers differ in {what}: {getattr(first, what)} vs {getattr(layer, what)}"
            )


def _place_blobs(layer: Bootstrap, ids: list[str], blobs: list[BlobInfo]) -> dict[int, int]:
    place: dict[int, int] = {}
    for i, blob in enumerate(layer.blobs):
        if blob.blob_id not in ids:
            ids.append(blob.blob_id)
            blobs.append(blob)
        place[i] = ids.index(blob.blob_id)
    return place


def _to_source(boot: Bootstrap, place: dict[int, int]) -> SourceEntry:
    def convert(inode: Inode) -> SourceEntry:
        entry = SourceEntry(
            name=inode.name,
            mode=inode.mode,
            uid=inode.uid,
            gid=inode.gid,
            mtime=inode.mtime,
            mtime_nsec=inode.mtime_nsec,
            rdev=inode.rdev,
            size=inode.size,
            symlink=inode.symlink,
            xattrs=dict(inode.xattrs),
        )
        if inode.is_reg:
            entry.link_key = ("layer", id(boot), inode.ino) if inode.nlink > 1 else None
            entry.chunks = tuple(
                dataclasses.replace(c, blob_index=place[c.blob_index]) for c in inode.chunks
            )
        for child in boot.children(inode):
            entry.children[child.name] = convert(child)
        return entry

    return convert(boot.root)


def _is_whiteout(entry: SourceEntry) -> bool:
    return stat.S_ISCHR(entry.mode) and entry.rdev == 0


def _apply(lower: SourceEntry, upper: SourceEntry, is_root: bool = False) -> None:
    """Lay `upper` (a directory) over `lower` (a directory), in place."""
    if OPAQUE_MARKER in upper.children or upper.xattrs.get(OVERLAY_OPAQUE) == b"y":
        lower.children.clear()
    if (not is_root or upper.name == lower.name) and IMPLICIT_DIR not in upper.xattrs:
        _take_metadata(lower, upper)
    for name, entry in upper.children.items():
        if name == OPAQUE_MARKER:
            continue
        if name.startswith(WHITEOUT_PREFIX):
            lower.children.pop(name[len(WHITEOUT_PREFIX) :], None)
        elif _is_whiteout(entry):
            lower.children.pop(name, None)
        elif entry.is_dir and name in lower.children and lower.children[name].is_dir:
            _apply(lower.children[name], entry)
        else:
            lower.children[name] = _unmarked(entry)


def _unmarked(entry: SourceEntry) -> SourceEntry:
    """`entry` with IMPLICIT_DIR dropped below it: nothing lower to take metadata from."""
    stack = [entry]
    while stack:
        node = stack.pop()
        node.xattrs.pop(IMPLICIT_DIR, None)
        stack.extend(child for child in node.children.values() if child.is_dir)
    return entry


def _take_metadata(lower: SourceEntry, upper: SourceEntry) -> None:
    lower.mode, lower.uid, lower.gid = upper.mode, upper.uid, upper.gid
    lower.mtime, lower.mtime_nsec = upper.mtime, upper.mtime_nsec
    lower.xattrs = {k: v for k, v in upper.xattrs.items() if k != OVERLAY_OPAQUE}
