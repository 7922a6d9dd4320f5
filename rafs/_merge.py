"""`merge`: one image from per-layer bootstraps, upper layers over lower ones.

Each layer's tree is laid over the result in order, applying OCI whiteouts (`.wh.NAME`
removes NAME below, `.wh..wh..opq` hides everything below in its directory) and overlayfs
ones (a 0:0 character device removes, `trusted.overlay.opaque=y` hides). Chunks keep
pointing at their layer's blob; the merged blob table is the union in layer order.
A directory a layer holds only as a parent of its entries (marked `IMPLICIT_DIR` by the
tar importer) keeps the metadata it has below, as OCI layer rules want.

A prefetch list (Nydus's `--prefetch-patterns`) belongs to the merged image, not to a
layer: a path may live in any layer, or be removed by an upper one. `choose_prefetch`
matches it against the merged tree the way Nydus's builder does: absolute paths only, a
path below an earlier one adds nothing, and a path that is not in the image is left out
(Nydus drops it silently; here the caller is told, to warn).
"""

from __future__ import annotations

import dataclasses
import posixpath
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ._builder import BuildOptions, BuildResult, ChunkDict, build, writer_for
from ._errors import BuildError
from ._model import BlobInfo, Bootstrap, Inode
from ._source import SourceEntry, new_root
from ._tarimport import IMPLICIT_DIR

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
OVERLAY_OPAQUE = b"trusted.overlay.opaque"


@dataclasses.dataclass
class MergedTree:
    """The layers laid over each other, before it is built into a bootstrap."""

    root: SourceEntry
    blobs: list[BlobInfo]  # every layer's blobs, in layer order


@dataclasses.dataclass(frozen=True)
class PrefetchChoice:
    paths: tuple[str, ...]  # for `BuildOptions.prefetch_files`, in the order given
    ignored: tuple[str, ...]  # one line per pattern left out, saying why


def merge(layers: list[Bootstrap], opts: BuildOptions) -> BuildResult:
    return build_merged(overlay(layers), opts)


def overlay(layers: list[Bootstrap]) -> MergedTree:
    if not layers:
        raise BuildError("merge needs at least one layer bootstrap")
    tree = MergedTree(new_root(), [])
    blob_ids: list[str] = []
    for layer in layers:
        _check_compatible(layers[0], layer)
        place = _place_blobs(layer, blob_ids, tree.blobs)
        _apply(tree.root, _to_source(layer, place), is_root=True)
    return tree


def build_merged(tree: MergedTree, opts: BuildOptions) -> BuildResult:
    with tempfile.TemporaryDirectory() as tmp:
        writer = writer_for(Path(tmp), opts, None)
        return build(tree.root, opts, writer, ChunkDict(blobs=tree.blobs))


def choose_prefetch(tree: MergedTree, patterns: Sequence[str]) -> PrefetchChoice:
    """The patterns the merged image's prefetch table can name, and why others cannot."""
    paths: list[str] = []
    ignored: list[str] = []
    for raw in (p.strip() for p in patterns):
        if not raw:
            continue
        path = "/" + posixpath.normpath(raw).lstrip("/")
        if not raw.startswith("/"):
            ignored.append(f"prefetch path {raw} is not absolute: ignored")
        elif _find(tree.root, path) is None:
            ignored.append(f"prefetch path {raw} is not in the image: ignored")
        elif not any(_below(path, earlier) for earlier in paths):
            paths.append(path)
    return PrefetchChoice(tuple(paths), tuple(ignored))


def _find(root: SourceEntry, path: str) -> SourceEntry | None:
    node: SourceEntry | None = root
    for name in path.encode(errors="surrogateescape").split(b"/"):
        if name and node is not None:
            node = node.children.get(name)
    return node


def _below(path: str, ancestor: str) -> bool:
    """`path` is `ancestor` or inside it (a directory's prefetch covers its subtree)."""
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


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
