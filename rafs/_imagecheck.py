"""`nydusify check`: is a Nydus image the same filesystem as the OCI image it came from?

Each side is reduced to the same facts per path (`EntryFacts`: type, permission bits,
owner, size, symlink target, device numbers, xattrs, content sha256) plus its hardlink
groups, and the two are compared. The source side applies the OCI layers in order (OCI
whiteouts and opaque directories) and hashes every file as it streams past, storing
nothing. The Nydus side is read either from its bootstrap, with file content fetched from
the registry chunk by chunk (every chunk verified against its digest), or from a directory
(a real `nydusd` mount).

The rule it keeps: a difference is reported, never raised; only a failure to read a side
(registry, corrupt bootstrap, chunk digest mismatch) raises, so the caller can tell "the
images differ" from "could not tell".
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

from ._chunksource import BlobRef
from ._convert import oci_layers, run_all
from ._errors import BuildError
from ._load import load_bootstrap_bytes
from ._model import Bootstrap, ChunkInfo, Inode
from ._nydusimage import blob_layers, bootstrap_layer, extract_bootstrap
from ._oci import Descriptor, ImageReference
from ._origin import OriginSource
from ._registry import RegistryClient
from ._source import SourceEntry, new_root
from ._tarimport import apply_layer, open_layer
from ._workdir import spool_blob

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
BATCH_BYTES = 8 << 20  # file content fetched and hashed as one group
BATCHES_AT_ONCE = 4
READ_RUN = 8  # chunks of one large file fetched at a time
HASH_THREADS = 8  # files of a mounted tree read at once

_KINDS = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "chardev"),
    (stat.S_ISBLK, "blockdev"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)


@dataclass(frozen=True, slots=True)
class EntryFacts:
    """What `check` compares for one path."""

    kind: str
    mode: int  # permission bits, setuid/setgid/sticky included
    uid: int
    gid: int
    size: int | None  # regular files and symlinks only
    target: bytes | None  # symlinks
    rdev: tuple[int, int] | None  # devices: (major, minor)
    xattrs: tuple[tuple[bytes, bytes], ...]
    sha256: str | None  # regular files


@dataclass
class TreeFacts:
    entries: dict[bytes, EntryFacts] = field(default_factory=dict)
    links: set[frozenset[bytes]] = field(default_factory=set)  # names of one inode, 2 or more

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries.values() if e.kind == "file")

    @property
    def bytes(self) -> int:
        return sum(e.size or 0 for e in self.entries.values() if e.kind == "file")


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "unknown")


def _facts(
    mode: int,
    uid: int,
    gid: int,
    size: int,
    target: bytes | None,
    rdev: int,
    xattrs: dict[bytes, bytes],
    sha256: str | None,
) -> EntryFacts:
    kind = kind_of(mode)
    return EntryFacts(
        kind=kind,
        mode=stat.S_IMODE(mode),
        uid=uid,
        gid=gid,
        size=size if kind == "file" else len(target or b"") if kind == "symlink" else None,
        target=target if kind == "symlink" else None,
        rdev=(os.major(rdev), os.minor(rdev)) if kind in ("chardev", "blockdev") else None,
        xattrs=tuple(sorted(xattrs.items())),
        sha256=sha256 if kind == "file" else None,
    )


# --- comparing ---------------------------------------------------------------------------


def compare(source: TreeFacts, target: TreeFacts) -> list[str]:
    """Every difference, one line each, in path order; hardlink differences last."""
    found: list[str] = []
    for path in sorted(source.entries.keys() | target.entries.keys()):
        shown = path.decode(errors="backslashreplace")
        a, b = source.entries.get(path), target.entries.get(path)
        if b is None:
            found.append(f"{shown}: only in the source")
        elif a is None:
            found.append(f"{shown}: only in the target")
        else:
            found.extend(f"{shown}: {line}" for line in _field_differences(a, b))
    for group in sorted(source.links - target.links, key=sorted):
        found.append(f"hardlinks in the source only: {_names(group)}")
    for group in sorted(target.links - source.links, key=sorted):
        found.append(f"hardlinks in the target only: {_names(group)}")
    return found


def _field_differences(a: EntryFacts, b: EntryFacts) -> Iterator[str]:
    for f in fields(EntryFacts):
        left, right = getattr(a, f.name), getattr(b, f.name)
        if left != right:
            shown = _show(f.name, left), _show(f.name, right)
            yield f"{f.name} {shown[0]} in the source, {shown[1]} in the target"


def _show(name: str, value: object) -> str:
    if name == "mode" and isinstance(value, int):
        return oct(value)
    return repr(value)


def _names(group: frozenset[bytes]) -> str:
    return ", ".join(p.decode(errors="backslashreplace") for p in sorted(group))


# --- the source: OCI layers applied in order ---------------------------------------------


class _ContentDigests:
    """A `ChunkSink` that stores nothing: a file's sha256 becomes its one record's digest."""

    def add_file(self, stream: BinaryIO, size: int) -> tuple[ChunkInfo, ...]:
        hasher, left = hashlib.sha256(), size
        while left:
            data = stream.read(min(left, 1 << 20))
            if not data:
                raise BuildError(f"file ended {left} bytes early")
            hasher.update(data)
            left -= len(data)
        return (ChunkInfo(hasher.digest(), 0, 0, 0, size, 0, 0, 0, 0),)


async def source_facts(
    client: RegistryClient, ref: ImageReference, platform: str, spool: Path
) -> TreeFacts:
    """The tree the source image's layers make, applied one after another."""
    manifest = await client.get_manifest(ref.repository, ref.ref, platform)
    root, sink = new_root(), _ContentDigests()
    for layer in oci_layers(manifest, str(ref)):
        path = await spool_blob(client, ref.repository, layer, spool)
        try:
            await asyncio.to_thread(_apply, root, path, sink)
        finally:
            path.unlink(missing_ok=True)
    return _tree_facts(root)


def _apply(root: SourceEntry, path: Path, sink: _ContentDigests) -> None:
    with open_layer(path) as stream:
        apply_layer(root, stream, sink)


def _tree_facts(root: SourceEntry) -> TreeFacts:
    tree = TreeFacts()
    groups: dict[object, set[bytes]] = {}
    for path, entry in root.walk():
        digest = entry.chunks[0].digest.hex() if entry.chunks else EMPTY_SHA256
        tree.entries[path] = _facts(
            entry.mode,
            entry.uid,
            entry.gid,
            entry.size,
            entry.symlink,
            entry.rdev,
            entry.xattrs,
            digest,
        )
        if entry.is_reg and entry.link_key is not None:
            groups.setdefault(entry.link_key, set()).add(path)
    tree.links = {frozenset(g) for g in groups.values() if len(g) > 1}
    return tree


# --- the target: a Nydus image read through its bootstrap ---------------------------------


@dataclass
class NydusImage:
    boot: Bootstrap
    blob_layers: list[Descriptor]


async def fetch_nydus_image(
    client: RegistryClient, ref: ImageReference, platform: str
) -> NydusImage:
    manifest = await client.get_manifest(ref.repository, ref.ref, platform)
    layer = bootstrap_layer(manifest)
    packed = await client.get_blob(ref.repository, layer.digest)
    boot = await asyncio.to_thread(load_bootstrap_bytes, extract_bootstrap(packed))
    return NydusImage(boot, blob_layers(manifest))


async def blob_problems(client: RegistryClient, repo: str, image: NydusImage) -> list[str]:
    """Blobs the bootstrap uses that the manifest does not list or the registry lacks."""
    listed = {d.digest for d in image.blob_layers}
    found: list[str] = []
    for blob in image.boot.blobs:
        digest = f"sha256:{blob.blob_id}"
        if digest not in listed:
            found.append(f"blob {blob.blob_id}: used by the bootstrap, not a manifest layer")
        if not await client.blob_exists(repo, digest):
            found.append(f"blob {blob.blob_id}: used by the bootstrap, not in the registry")
    return found


async def nydus_facts(image: NydusImage, origin: OriginSource) -> TreeFacts:
    """The image's tree; file content read through `origin`, files that lie close together
    in a blob fetched together (`OriginSource` turns neighbours into one ranged read)."""
    boot = image.boot
    slots = asyncio.Semaphore(BATCHES_AT_ONCE)

    async def digests(batch: list[Inode]) -> dict[int, str]:
        async with slots:
            return await _batch_digests(boot, origin, batch)

    found: dict[int, str] = {}
    for part in await run_all(digests(batch) for batch in _batches(_distinct_files(boot))):
        found.update(part)
    return _bootstrap_facts(boot, found)


def _distinct_files(boot: Bootstrap) -> list[Inode]:
    """One name per regular inode, in the order their content lies in the blobs."""
    firsts: dict[int, Inode] = {}
    for _, inode in boot.walk():
        if inode.is_reg:
            firsts.setdefault(inode.ino, inode)
    return sorted(firsts.values(), key=_content_place)


def _content_place(inode: Inode) -> tuple[int, int]:
    first = min(inode.chunks, key=lambda c: c.file_offset, default=None)
    return (-1, 0) if first is None else (first.blob_index, first.compressed_offset)


def _batches(files: list[Inode]) -> Iterator[list[Inode]]:
    """Files in groups of about BATCH_BYTES of content; a larger file is a group alone."""
    batch: list[Inode] = []
    size = 0
    for inode in files:
        if batch and size + inode.size > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(inode)
        size += inode.size
    if batch:
        yield batch


async def _batch_digests(
    boot: Bootstrap, origin: OriginSource, batch: list[Inode]
) -> dict[int, str]:
    if len(batch) == 1 and batch[0].size > BATCH_BYTES:
        return {batch[0].ino: await _streamed_sha256(boot, origin, batch[0])}
    wanted: dict[int, list[ChunkInfo]] = {}
    for inode in batch:
        for chunk in inode.chunks:
            wanted.setdefault(chunk.blob_index, []).append(chunk)
    data: dict[tuple[int, int, bytes], bytes] = {}
    for blob_index, chunks in wanted.items():
        for fetched in await origin.get(BlobRef.of(boot, blob_index), chunks):
            info = fetched.info
            data[(blob_index, info.compressed_offset, info.digest)] = fetched.data
    return {inode.ino: _sha256(inode, data) for inode in batch}


def _sha256(inode: Inode, data: dict[tuple[int, int, bytes], bytes]) -> str:
    hasher, pos = hashlib.sha256(), 0
    for chunk in sorted(inode.chunks, key=lambda c: c.file_offset):
        piece = data[(chunk.blob_index, chunk.compressed_offset, chunk.digest)]
        hasher.update(bytes(chunk.file_offset - pos))  # a hole reads as zeros
        hasher.update(piece)
        pos = chunk.file_offset + len(piece)
    hasher.update(bytes(max(0, inode.size - pos)))
    return hasher.hexdigest()


async def _streamed_sha256(boot: Bootstrap, origin: OriginSource, inode: Inode) -> str:
    """A large file's digest, its chunks fetched a run at a time."""
    hasher, pos = hashlib.sha256(), 0
    for run in _runs(sorted(inode.chunks, key=lambda c: c.file_offset)):
        for chunk in await origin.get(BlobRef.of(boot, run[0].blob_index), run):
            hasher.update(bytes(chunk.info.file_offset - pos))
            hasher.update(chunk.data)
            pos = chunk.info.file_offset + len(chunk.data)
    hasher.update(bytes(max(0, inode.size - pos)))
    return hasher.hexdigest()


def _runs(chunks: Sequence[ChunkInfo]) -> Iterator[list[ChunkInfo]]:
    """Consecutive chunks of one blob, at most READ_RUN at a time."""
    run: list[ChunkInfo] = []
    for chunk in chunks:
        if run and (chunk.blob_index != run[0].blob_index or len(run) == READ_RUN):
            yield run
            run = []
        run.append(chunk)
    if run:
        yield run


def _bootstrap_facts(boot: Bootstrap, digests: dict[int, str]) -> TreeFacts:
    tree = TreeFacts()
    groups: dict[int, set[bytes]] = {}
    for path, inode in boot.walk():
        tree.entries[path] = _facts(
            inode.mode,
            inode.uid,
            inode.gid,
            inode.size,
            inode.symlink,
            inode.rdev,
            inode.xattrs,
            digests.get(inode.ino),
        )
        if inode.is_reg:
            groups.setdefault(inode.ino, set()).add(path)
    tree.links = {frozenset(g) for g in groups.values() if len(g) > 1}
    return tree


# --- the target: a mounted directory ------------------------------------------------------


def directory_facts(root: Path) -> TreeFacts:
    """The tree under `root` (a `nydusd` mount), read with lstat, xattr calls and reads;
    files are read a few at a time, so that a lazy mount fetches in parallel."""
    base = os.fsencode(root)
    paths = [base]
    for dirpath, dirnames, filenames in os.walk(base):
        paths.extend(os.path.join(dirpath, name) for name in dirnames + filenames)
    with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="check-read") as pool:
        facts = list(pool.map(_path_facts, paths))
    tree = TreeFacts()
    groups: dict[int, set[bytes]] = {}
    for full, (entry, ino) in zip(paths, facts, strict=True):
        rel = b"/" if full == base else b"/" + os.path.relpath(full, base)
        tree.entries[rel] = entry
        if entry.kind == "file":
            groups.setdefault(ino, set()).add(rel)
    tree.links = {frozenset(g) for g in groups.values() if len(g) > 1}
    return tree


def _path_facts(path: bytes) -> tuple[EntryFacts, int]:
    st = os.lstat(path)
    kind = kind_of(st.st_mode)
    target = os.readlink(path) if kind == "symlink" else None
    sha = _file_sha256(path) if kind == "file" else None
    facts = _facts(
        st.st_mode, st.st_uid, st.st_gid, st.st_size, target, st.st_rdev, _xattrs(path), sha
    )
    return facts, st.st_ino


def _file_sha256(path: bytes) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False) for n in names}
