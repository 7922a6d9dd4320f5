"""Tar layers and OCI image layouts as the builder's input tree.

A layer is read once, as a stream: each regular file's content goes through the
`ChunkSink` as the tar passes by, and the tree keeps only the chunk records. Layers apply
in order with the OCI rules (whiteouts, opaque directories). Nothing leaves the root: a
member name or hardlink target climbing above it is refused with a `BuildError` naming
the member, as is any input that is not what it claims to be (a blob failing its digest,
a broken tar). An OCI layout is checked whole before any content reaches the sink.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import gzip
import hashlib
import io
import json
import os
import queue
import re
import stat
import struct
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, Self, cast
from urllib.parse import unquote_to_bytes

import zstandard

from ._errors import BuildError
from ._model import ChunkInfo
from ._source import ChunkSink, SourceEntry, new_root

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["apply_layer", "import_oci_layout", "import_tar", "is_oci_layout", "open_layer"]

Keep = Callable[[bytes], bool]

# Compression, told apart by the first bytes of the layer file.
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_REFUSED_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_DECODE_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)

# OCI whiteouts: `.wh.NAME` hides NAME of the lower layers, `.wh..wh..opq` all of them.
_WHITEOUT = b".wh."
_OPAQUE = b".wh..opq"  # what follows `.wh.` in the opaque marker

_TYPE_BITS = {
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}
_MAX_ID = 0xFFFF_FFFF
_SYMLINK_MODE = stat.S_IFLNK | 0o777
_PAX_MTIME = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_SCHILY_XATTR = "SCHILY.xattr."
_LIBARCHIVE_XATTR = "LIBARCHIVE.xattr."
LAYER_BUFFER = 1 << 20  # bytes of decompressed layer read ahead of tarfile
READ_AHEAD = 2  # blocks of LAYER_BUFFER decompressed ahead of the reader

# Marks a directory a layer does not list itself (see `import_tar(mark_implicit=True)`).
IMPLICIT_DIR = b"trusted.nydus-mesh.implicit-dir"


class _Decoder(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------- layer streams


def open_layer(path: Path) -> BinaryIO:
    """The tar bytes of a plain, gzip or zstd layer file, decompressed as they are read."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - the returned stream owns it
    except OSError as exc:
        raise BuildError(f"cannot open layer {path}: {exc.strerror}") from exc
    try:
        return _decoded(raw, str(path))
    except BaseException:
        raw.close()
        raise


def _decoded(raw: io.BufferedReader[Any], label: str) -> BinaryIO:
    """Reads `raw` decompressed; closing it closes `raw`; decoder errors name `label`."""
    magic = _peek(raw, label)
    decoder: _Decoder
    if magic.startswith(_GZIP_MAGIC):
        decoder = gzip.GzipFile(fileobj=raw, mode="rb")
    elif magic.startswith(_ZSTD_MAGIC):
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False
        )
        decoder = cast(_Decoder, reader)
    else:
        _refuse_compression(magic, label)
        decoder = raw
    if decoder is not raw:
        decoder = _ReadAhead(decoder)
    # A large buffer: tarfile reads 10 KiB at a time, and with a small one each read
    # would call `_LayerReader.readinto`, Python code, for every piece of every member.
    layer = _LayerReader(decoder, raw, label)
    return cast(BinaryIO, io.BufferedReader(layer, buffer_size=LAYER_BUFFER))


def _peek(raw: io.BufferedReader[Any], label: str) -> bytes:
    try:
        return raw.peek(8)
    except OSError as exc:
        raise BuildError(f"cannot read layer {label}: {exc}") from exc


def _refuse_compression(magic: bytes, label: str) -> None:
    for prefix, name in _REFUSED_MAGIC.items():
        if magic.startswith(prefix):
            raise BuildError(f"layer {label} is {name}-compressed: only gzip and zstd are read")


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s")  # a header to byte 500


class _TarHeader(tarfile.TarInfo):
    """tarfile's TarInfo with a quicker `frombuf` for the common header: one struct
    unpack, numbers in octal, the unsigned checksum right. Any other header (binary or
    malformed numbers, old GNU sparse, a checksum only the signed sum matches, the end
    marker) goes to tarfile's own parse, which also raises its own errors for it; so the
    result is the same TarInfo either way (tested field by field). tarfile's parse was
    0.3 s of 47k members."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) != tarfile.BLOCKSIZE or buf[156:157] == tarfile.GNUTYPE_SPARSE:
            return super().frombuf(buf, encoding, errors)
        fields = _USTAR.unpack_from(buf)
        (name, mode, uid, gid, size, mtime, checksum, kind, link, _, uname, gname) = fields[:12]
        major, minor, prefix = fields[12:]
        numbers = [_octal(f) for f in (mode, uid, gid, size, mtime, checksum, major, minor)]
        chksum = numbers[5]
        if None in numbers or chksum != 256 + sum(buf) - sum(buf[148:156]) or not buf.strip(b"\0"):
            return super().frombuf(buf, encoding, errors)
        obj = cls()
        obj.name = _text(name, encoding, errors)
        (obj.mode, obj.uid, obj.gid, obj.size, obj.mtime, obj.chksum, obj.devmajor,
         obj.devminor) = cast("list[int]", numbers)  # fmt: skip
        obj.type = kind
        obj.linkname = _text(link, encoding, errors)
        obj.uname, obj.gname = _text(uname, encoding, errors), _text(gname, encoding, errors)
        if obj.type == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE  # the old V7 way of naming a directory
        if obj.isdir():
            obj.name = obj.name.rstrip("/")
        before = _text(prefix, encoding, errors)
        if before and obj.type not in tarfile.GNU_TYPES:
            obj.name = before + "/" + obj.name  # a ustar long name
        return obj


def _octal(field: bytes) -> int | None:
    """A number field in octal ASCII, as tarfile reads it; None if it is not one."""
    if field[:1] in (b"\x80", b"\xff"):  # GNU's binary form
        return None
    end = field.find(b"\0")
    try:
        return int((field if end < 0 else field[:end]).strip() or b"0", 8)
    except ValueError:
        return None


def _text(field: bytes, encoding: str, errors: str) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode(encoding, errors)


class _ReadAhead:
    """A decoder run on a thread of its own, a few blocks ahead of its reader.

    zlib and zstandard release the GIL while they inflate, so a layer decompresses on one
    core while the tar is parsed on another, instead of in turns on the reader's thread
    (1.1 s of a 204 MB gzip layer's build). Errors reach the reader at the point of the
    stream where they happened.
    """

    def __init__(self, decoder: _Decoder) -> None:
        self._decoder = decoder
        self._blocks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=READ_AHEAD)
        self._stop = threading.Event()
        self._pending = b""
        self._end: bytes | BaseException | None = None  # b"" at the end, or the error
        self._thread = threading.Thread(target=self._run, name="layer-decode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._decoder.read(LAYER_BUFFER)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1, /) -> bytes:
        if not self._pending:
            if self._end is None:
                item = self._blocks.get()
                if isinstance(item, BaseException) or not item:
                    self._end = item
                else:
                    self._pending = item
            if isinstance(self._end, BaseException):
                raise self._end
            if not self._pending:
                return b""
        if 0 <= size < len(self._pending):
            out, self._pending = self._pending[:size], self._pending[size:]
            return out
        out, self._pending = self._pending, b""
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._decoder.close()


class _MemberReader:
    """The `size` bytes of one member at the tar stream's position; tarfile skips what is
    left of them (and the padding) when it reads the next header."""

    def __init__(self, stream: Any, size: int) -> None:
        self._stream = stream
        self._left = size

    def read(self, size: int = -1, /) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data: bytes = self._stream.read(size)
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")
        self._left -= size
        return data


class _LayerReader(io.RawIOBase):
    """Decompressed layer bytes; a decoder failure becomes a BuildError naming the layer."""

    def __init__(self, decoder: _Decoder, raw: io.BufferedReader[Any], label: str) -> None:
        super().__init__()
        self._decoder = decoder
        self._raw = raw
        self.name = label

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._decoder.read(len(view))
        except _DECODE_ERRORS as exc:
            raise BuildError(f"layer {self.name} does not decompress: {exc}") from exc
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._decoder.close()
            finally:
                self._raw.close()
        super().close()


def _stream_label(stream: BinaryIO) -> str:
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) else "<stream>"


# ---------------------------------------------------------------- applying a layer


def import_tar(
    path: Path, sink: ChunkSink, *, keep_whiteouts: bool = False, mark_implicit: bool = False
) -> SourceEntry:
    """The tree of one tar layer (plain, gzip or zstd), its content stored through `sink`.

    With `keep_whiteouts` the layer's `.wh.` entries stay in the tree as they are, so a
    per-layer image can later be merged over the layers below it (`nydus-image merge`).
    With `mark_implicit` the directories the tar does not list (the root, missing parents)
    carry the `IMPLICIT_DIR` xattr, so that merge keeps the lower layer's metadata for them.
    """
    root = new_root()
    if mark_implicit:
        root.xattrs[IMPLICIT_DIR] = b"y"
    with open_layer(path) as stream:
        applier = _LayerApplier(root, sink, None, _stream_label(stream))
        applier.keep_whiteouts, applier.mark_implicit = keep_whiteouts, mark_implicit
        applier.apply(stream)
    return root


def apply_layer(
    root: SourceEntry,
    stream: BinaryIO,
    sink: ChunkSink,
    *,
    keep: Keep | None = None,
    keep_whiteouts: bool = False,
) -> None:
    """Apply one uncompressed tar stream onto `root` with the OCI layer rules.

    Regular files' content goes through `sink`, except for paths (absolute, as
    `SourceEntry.walk` spells them) that `keep` rejects: those get `chunks = None`, and the
    caller promises that a later layer removes them.
    """
    applier = _LayerApplier(root, sink, keep, _stream_label(stream))
    applier.keep_whiteouts = keep_whiteouts
    applier.apply(stream)


class _LayerApplier:
    """One layer being laid onto a tree; remembers what this layer touched."""

    def __init__(
        self,
        root: SourceEntry,
        sink: ChunkSink | None,
        keep: Keep | None,
        label: str,
        origins: _Origins | None = None,
    ) -> None:
        self.root = root
        self.sink = sink  # None: store no content at all
        self.keep = keep
        self.label = label
        self.origins = origins
        # Entries this layer created, updated or passed through: whiteouts spare them.
        self.touched: set[SourceEntry] = set()
        self.keep_whiteouts = False  # record `.wh.` entries as files instead of applying them
        self.mark_implicit = False  # give directories made for missing parents IMPLICIT_DIR
        # With a sink that takes streams (`add_streams`), a member's content is handed over
        # as the tar is read and its chunks come back while later members are read: the
        # entry waits in `_waiting`, and hardlinks made to it meanwhile in `_late_links`.
        self._feed: list[tuple[SourceEntry, BinaryIO, int]] | None = None
        self._waiting: set[SourceEntry] = set()
        self._late_links: list[tuple[SourceEntry, SourceEntry]] = []

    def apply(self, stream: BinaryIO) -> None:
        add_streams = getattr(self.sink, "add_streams", None)
        try:
            with tarfile.open(
                fileobj=stream,
                mode="r|",
                encoding="utf-8",
                errors="surrogateescape",
                tarinfo=_TarHeader,
            ) as tar:
                if add_streams is None:
                    for _ in self._members(tar):
                        pass
                    return
                self._feed = []
                for entry, chunks in add_streams(self._members(tar)):
                    entry.chunks = chunks
                    self._waiting.discard(entry)
                for target, link in self._late_links:  # in the order made: links of links too
                    link.chunks = target.chunks
        except tarfile.TarError as exc:
            raise BuildError(f"layer {self.label} is not a readable tar: {exc}") from exc

    def _members(self, tar: tarfile.TarFile) -> Iterator[tuple[SourceEntry, BinaryIO, int]]:
        """Apply the members one by one; yield the content of each to store, if fed."""
        while (info := tar.next()) is not None:
            self._member(tar, info)
            tar.members.clear()  # type: ignore[attr-defined]  # read once: keep no index
            if self._feed:
                yield from self._feed  # read to its end before the next member is read
                self._feed.clear()

    def _refuse(self, info: tarfile.TarInfo, why: str) -> BuildError:
        return BuildError(f"layer {self.label}: member {info.name!r} {why}")

    def _member(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        parts = self._member_parts(info)
        if parts and parts[-1].startswith(_WHITEOUT) and not self.keep_whiteouts:
            self._whiteout(info, parts)
            return
        entry = self._entry(tar, info, parts)
        if parts:
            self._place(info, parts, entry)
        else:
            self._update_root(info, entry)

    def _member_parts(self, info: tarfile.TarInfo) -> list[bytes]:
        raw = _fs_bytes(info.name)
        if b"\0" in raw:
            raise self._refuse(info, "has a NUL byte in its name")
        parts = _components(raw)
        if parts is None:
            raise self._refuse(info, "climbs above the root")
        if any(part.startswith(_WHITEOUT) for part in parts[:-1]):
            raise self._refuse(info, "lies inside a whiteout name")
        return parts

    # -- entries

    def _entry(
        self, tar: tarfile.TarFile, info: tarfile.TarInfo, parts: list[bytes]
    ) -> SourceEntry:
        name = parts[-1] if parts else b"/"
        if info.islnk():
            return self._hardlink(info, name)
        if info.isreg():
            return self._regular(tar, info, name, b"/" + b"/".join(parts))
        bits = _TYPE_BITS.get(info.type)
        if bits is None:
            raise self._refuse(info, f"has unsupported tar type {info.type!r}")
        entry = self._metadata(info, name, bits)
        if info.issym():
            entry.mode = _SYMLINK_MODE  # what Linux shows whatever the header says
            entry.symlink = self._symlink_target(info)
        elif info.ischr() or info.isblk():
            entry.rdev = self._rdev(info)
        return entry

    def _metadata(self, info: tarfile.TarInfo, name: bytes, type_bits: int) -> SourceEntry:
        mtime, mtime_nsec = self._mtime(info)
        return SourceEntry(
            name=name,
            mode=type_bits | (info.mode & 0o7777),
            uid=self._id(info, "uid", info.uid),
            gid=self._id(info, "gid", info.gid),
            mtime=mtime,
            mtime_nsec=mtime_nsec,
            xattrs=self._xattrs(info),
        )

    def _regular(
        self, tar: tarfile.TarFile, info: tarfile.TarInfo, name: bytes, path: bytes
    ) -> SourceEntry:
        entry = self._metadata(info, name, stat.S_IFREG)
        entry.size = info.size
        if self.sink is not None and (self.keep is None or self.keep(path)):
            if self._feed is not None and info.size:
                self._feed.append((entry, self._content(tar, info), info.size))
                self._waiting.add(entry)
            else:
                entry.chunks = self._store(tar, info, self.sink)
        if self.origins is not None:
            self.origins.record(entry, path)
        return entry

    def _store(
        self, tar: tarfile.TarFile, info: tarfile.TarInfo, sink: ChunkSink
    ) -> tuple[ChunkInfo, ...]:
        if info.size == 0:
            return ()
        return sink.add_file(self._content(tar, info), info.size)

    def _content(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> BinaryIO:
        stream = tar.fileobj
        if not info.sparse and stream is not None and stream.tell() == info.offset_data:
            # A plain member is read straight from the stream, where its bytes are next
            # (checked above): `extractfile` wraps each member in two more objects and
            # reads through them 10 KiB at a time (0.3 s of 41k small members).
            return cast(BinaryIO, _MemberReader(stream, info.size))
        content = tar.extractfile(info)
        if content is None:
            raise self._refuse(info, "has no readable content")
        return cast(BinaryIO, content)

    def _hardlink(self, info: tarfile.TarInfo, name: bytes) -> SourceEntry:
        target = self._link_target(info)
        if target.is_reg and target.link_key is None:
            target.link_key = object()
        # One inode: the new name takes the target's metadata, key and chunks.
        entry = dataclasses.replace(target, name=name, xattrs=dict(target.xattrs), children={})
        if target in self._waiting:  # its chunks are still being made: copied when back
            self._late_links.append((target, entry))
            self._waiting.add(entry)
        if self.origins is not None:
            self.origins.share(target, entry)
        return entry

    def _link_target(self, info: tarfile.TarInfo) -> SourceEntry:
        raw = _fs_bytes(info.linkname)
        parts = _components(raw) if b"\0" not in raw else None
        if parts is None:
            raise self._refuse(info, f"is a hardlink to {info.linkname!r}, outside the root")
        target = _lookup(self.root, parts)
        if target is None:
            raise self._refuse(info, f"is a hardlink to {info.linkname!r}, which does not exist")
        if target.is_dir:
            raise self._refuse(info, f"is a hardlink to {info.linkname!r}, a directory")
        return target

    def _symlink_target(self, info: tarfile.TarInfo) -> bytes:
        target = _fs_bytes(info.linkname)
        if b"\0" in target or not target:
            raise self._refuse(info, f"is a symlink with a bad target {info.linkname!r}")
        return target

    def _rdev(self, info: tarfile.TarInfo) -> int:
        try:
            return os.makedev(info.devmajor, info.devminor)
        except (OverflowError, ValueError) as exc:
            raise self._refuse(
                info, f"has device numbers {info.devmajor}:{info.devminor} out of range"
            ) from exc

    def _id(self, info: tarfile.TarInfo, what: str, value: int) -> int:
        if not 0 <= value <= _MAX_ID:
            raise self._refuse(info, f"has {what} {value} out of range")
        return value

    def _mtime(self, info: tarfile.TarInfo) -> tuple[int, int]:
        raw = info.pax_headers.get("mtime")
        if raw is None:
            return int(info.mtime), 0
        if not _PAX_MTIME.fullmatch(raw):
            raise self._refuse(info, f"has a bad PAX mtime {raw!r}")
        exact = Decimal(raw)
        seconds = exact.to_integral_value(rounding=ROUND_FLOOR)
        return int(seconds), int((exact - seconds) * 1_000_000_000)

    def _xattrs(self, info: tarfile.TarInfo) -> dict[bytes, bytes]:
        xattrs: dict[bytes, bytes] = {}
        # libarchive's base64 form is exact for any bytes, so it wins over SCHILY's.
        for key, value in sorted(info.pax_headers.items(), key=lambda kv: _xattr_rank(kv[0])):
            item = self._xattr(info, key, value)
            if item is not None:
                xattrs[item[0]] = item[1]
        return xattrs

    def _xattr(self, info: tarfile.TarInfo, key: str, value: str) -> tuple[bytes, bytes] | None:
        if key.startswith(_SCHILY_XATTR):
            name, data = _fs_bytes(key[len(_SCHILY_XATTR) :]), _fs_bytes(value)
        elif key.startswith(_LIBARCHIVE_XATTR):
            name = unquote_to_bytes(key[len(_LIBARCHIVE_XATTR) :])
            data = self._base64(info, key, value)
        else:
            return None
        if not name or b"\0" in name:
            raise self._refuse(info, f"has a bad xattr name in PAX record {key!r}")
        return name, data

    def _base64(self, info: tarfile.TarInfo, key: str, value: str) -> bytes:
        try:
            return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self._refuse(info, f"has PAX record {key!r} that is not base64") from exc

    # -- placing entries in the tree

    def _place(self, info: tarfile.TarInfo, parts: list[bytes], entry: SourceEntry) -> None:
        parent = self._parent_dir(info, parts[:-1])
        old = parent.children.get(entry.name)
        if old is not None and old.is_dir and entry.is_dir:
            _copy_metadata(entry, old)  # a directory over a directory keeps its children
            entry = old
        else:
            parent.children[entry.name] = entry
        self.touched.add(entry)

    def _update_root(self, info: tarfile.TarInfo, entry: SourceEntry) -> None:
        if not entry.is_dir:
            raise self._refuse(info, "names the root but is not a directory")
        _copy_metadata(entry, self.root)

    def _parent_dir(self, info: tarfile.TarInfo, parts: list[bytes]) -> SourceEntry:
        """The directory `parts` names, made (mode 0755) where the tar left it out."""
        node = self.root
        for depth, part in enumerate(parts, start=1):
            child = node.children.get(part)
            if child is None:
                child = SourceEntry(name=part, mode=stat.S_IFDIR | 0o755)
                if self.mark_implicit:
                    child.xattrs[IMPLICIT_DIR] = b"y"  # a later entry for it replaces this
                node.children[part] = child
            elif not child.is_dir:
                shown = b"/".join(parts[:depth]).decode(errors="backslashreplace")
                raise self._refuse(info, f"needs {shown!r} to be a directory, and it is not")
            self.touched.add(child)
            node = child
        return node

    def _whiteout(self, info: tarfile.TarInfo, parts: list[bytes]) -> None:
        parent = self._parent_dir(info, parts[:-1])
        hidden = parts[-1][len(_WHITEOUT) :]
        if hidden == _OPAQUE:
            self._drop_lower(parent)
            return
        if hidden.startswith(_WHITEOUT):
            return  # other `.wh..wh.` names are aufs bookkeeping: nothing to hide
        if hidden in (b"", b".", b".."):
            raise self._refuse(info, "is a whiteout of no name")
        self._hide(parent, hidden)

    def _hide(self, parent: SourceEntry, name: bytes) -> None:
        old = parent.children.get(name)
        if old is None:
            return
        if old not in self.touched:
            del parent.children[name]
        elif old.is_dir:
            self._drop_lower(old)  # this layer's own entries stay; lower ones below go

    def _drop_lower(self, directory: SourceEntry) -> None:
        """Remove everything below `directory` that this layer did not touch."""
        stack = [directory]
        while stack:
            node = stack.pop()
            for name, child in list(node.children.items()):
                if child not in self.touched:
                    del node.children[name]
                elif child.is_dir:
                    stack.append(child)


def _fs_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _components(raw: bytes) -> list[bytes] | None:
    """`raw` as components below the root (leading `/` ignored), None if `..` climbs out."""
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part == b"..":
            if not parts:
                return None
            parts.pop()
        elif part not in (b"", b"."):
            parts.append(part)
    return parts


def _lookup(root: SourceEntry, parts: list[bytes]) -> SourceEntry | None:
    node = root
    for part in parts:
        child = node.children.get(part) if node.is_dir else None
        if child is None:
            return None
        node = child
    return node


def _copy_metadata(source: SourceEntry, target: SourceEntry) -> None:
    target.mode = source.mode
    target.uid, target.gid = source.uid, source.gid
    target.mtime, target.mtime_nsec = source.mtime, source.mtime_nsec
    target.xattrs = source.xattrs


def _xattr_rank(key: str) -> int:
    return 1 if key.startswith(_LIBARCHIVE_XATTR) else 0


# ---------------------------------------------------------------- OCI image layouts

_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
_LAYER_TYPE = re.compile(r".*\.tar(\+gzip|\+zstd|\.gzip)?")
_DIGEST = re.compile(r"(sha256):([0-9a-f]{64})|(sha512):([0-9a-f]{128})")
_REF_NAME = "org.opencontainers.image.ref.name"
_MAX_JSON = 4 << 20  # manifests and indexes are small; refuse to read more than this
_MAX_NESTING = 4  # index -> index -> ... -> manifest


@dataclasses.dataclass(frozen=True, slots=True)
class _Descriptor:
    """A validated OCI content descriptor: what a blob is and what it must hash to."""

    media_type: str
    algorithm: str
    hex: str
    size: int
    annotations: dict[str, str]
    platform: dict[str, object] | None

    @property
    def digest(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class _Origins:
    """Which (layer, path) each regular file's content came from (metadata pass)."""

    def __init__(self) -> None:
        self.layer = 0
        self._by_entry: dict[SourceEntry, tuple[int, bytes]] = {}

    def record(self, entry: SourceEntry, path: bytes) -> None:
        self._by_entry[entry] = (self.layer, path)

    def share(self, target: SourceEntry, link: SourceEntry) -> None:
        if target in self._by_entry:
            self._by_entry[link] = self._by_entry[target]

    def surviving(self, root: SourceEntry) -> set[tuple[int, bytes]]:
        return {self._by_entry[entry] for _, entry in root.walk() if entry.is_reg}


def is_oci_layout(path: Path) -> bool:
    """Whether `path` looks like an OCI image layout directory."""
    return (path / "oci-layout").is_file() and (path / "index.json").is_file()


def import_oci_layout(
    path: Path, sink: ChunkSink, *, platform: str = "linux/amd64", ref: str | None = None
) -> SourceEntry:
    """The tree of the image in OCI layout `path`, all layers applied in order.

    `ref` picks an image by its `org.opencontainers.image.ref.name`, `platform`
    ("os/arch[/variant]") a manifest of an image index. A first pass reads every layer
    for metadata only and verifies its digest; the second stores only the content that
    survives the later layers.
    """
    layers = _image_layers(path, _parse_platform(platform), ref)
    surviving = _surviving_content(path, layers)
    root = new_root()
    for index, layer in enumerate(layers):
        keep = _keeper(surviving, index)
        with _verified_layer(path, layer) as stream:
            _LayerApplier(root, sink, keep, layer.digest).apply(stream)
    _check_stored(root, path)
    return root


def _surviving_content(path: Path, layers: list[_Descriptor]) -> set[tuple[int, bytes]]:
    root, origins = new_root(), _Origins()
    for index, layer in enumerate(layers):
        origins.layer = index
        with _verified_layer(path, layer) as stream:
            _LayerApplier(root, None, None, layer.digest, origins).apply(stream)
    return origins.surviving(root)


def _keeper(surviving: set[tuple[int, bytes]], layer: int) -> Keep:
    return lambda path: (layer, path) in surviving


def _check_stored(root: SourceEntry, layout: Path) -> None:
    for path, entry in root.walk():
        if entry.is_reg and entry.chunks is None:
            shown = path.decode(errors="backslashreplace")
            raise BuildError(f"{layout}: content of {shown!r} was not stored (layout changed?)")


def _image_layers(layout: Path, platform: tuple[str, ...], ref: str | None) -> list[_Descriptor]:
    _check_layout_marker(layout)
    index = _read_json(layout / "index.json", "index.json")
    chosen = _pick_image(_manifest_list(index, "index.json"), platform, ref)
    manifest = _resolve_manifest(layout, chosen, platform)
    return _layer_list(manifest, chosen.digest)


def _check_layout_marker(layout: Path) -> None:
    if not is_oci_layout(layout):
        raise BuildError(f"{layout} is not an OCI image layout (no oci-layout and index.json)")
    marker = _read_json(layout / "oci-layout", "oci-layout")
    version = marker.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise BuildError(f"{layout}/oci-layout: unsupported imageLayoutVersion {version!r}")


def _pick_image(
    candidates: list[_Descriptor], platform: tuple[str, ...], ref: str | None
) -> _Descriptor:
    names = sorted({d.annotations[_REF_NAME] for d in candidates if _REF_NAME in d.annotations})
    if ref is not None:
        candidates = [d for d in candidates if d.annotations.get(_REF_NAME) == ref]
        if not candidates:
            raise BuildError(f"index.json has no image named {ref!r} (names: {names})")
    elif len(names) > 1:
        raise BuildError(f"index.json holds several images {names}: choose one by ref")
    return _pick_platform(candidates, platform, "index.json")


def _pick_platform(
    candidates: list[_Descriptor], platform: tuple[str, ...], where: str
) -> _Descriptor:
    matching = [d for d in candidates if d.platform and _platform_matches(d.platform, platform)]
    if matching:
        return matching[0]
    unmarked = [d for d in candidates if d.platform is None]
    if len(unmarked) == 1:
        return unmarked[0]
    offered = [_platform_text(d.platform) for d in candidates]
    wanted = "/".join(platform)
    raise BuildError(f"{where}: no single manifest for platform {wanted} (offered: {offered})")


def _parse_platform(text: str) -> tuple[str, ...]:
    parts = tuple(text.split("/"))
    if len(parts) not in (2, 3) or not all(parts):
        raise BuildError(f"platform {text!r} is not os/arch[/variant]")
    return parts


def _platform_matches(offered: dict[str, object], wanted: tuple[str, ...]) -> bool:
    fields = (offered.get("os"), offered.get("architecture"), offered.get("variant"))
    return fields[: len(wanted)] == wanted


def _platform_text(platform: dict[str, object] | None) -> str:
    if platform is None:
        return "(none)"
    fields = (platform.get("os"), platform.get("architecture"), platform.get("variant"))
    return "/".join(str(f) for f in fields if f)


def _resolve_manifest(
    layout: Path, chosen: _Descriptor, platform: tuple[str, ...]
) -> dict[str, object]:
    """Follow image indexes from `chosen` down to one image manifest."""
    for _ in range(_MAX_NESTING):
        document = _read_json_blob(layout, chosen)
        kind = _document_kind(chosen, document)
        if kind == "manifest":
            return document
        chosen = _pick_platform(_manifest_list(document, chosen.digest), platform, chosen.digest)
    raise BuildError(f"{layout}: image indexes nested deeper than {_MAX_NESTING}")


def _document_kind(descriptor: _Descriptor, document: dict[str, object]) -> str:
    media_type = descriptor.media_type or str(document.get("mediaType", ""))
    if media_type in _INDEX_TYPES or (not media_type and "manifests" in document):
        return "index"
    if media_type in _MANIFEST_TYPES or (not media_type and "layers" in document):
        return "manifest"
    raise BuildError(f"{descriptor.digest}: media type {media_type!r} is not an image")


def _manifest_list(document: dict[str, object], where: str) -> list[_Descriptor]:
    items = document.get("manifests")
    if not isinstance(items, list):
        raise BuildError(f"{where}: 'manifests' is not a list")
    return [_descriptor(item, f"{where} manifests[{i}]") for i, item in enumerate(items)]


def _layer_list(manifest: dict[str, object], where: str) -> list[_Descriptor]:
    items = manifest.get("layers")
    if not isinstance(items, list):
        raise BuildError(f"{where}: 'layers' is not a list")
    layers = [_descriptor(item, f"{where} layers[{i}]") for i, item in enumerate(items)]
    for layer in layers:
        if not _LAYER_TYPE.fullmatch(layer.media_type):
            raise BuildError(f"{layer.digest}: media type {layer.media_type!r} is not a tar layer")
    return layers


def _descriptor(item: object, where: str) -> _Descriptor:
    if not isinstance(item, dict):
        raise BuildError(f"{where}: descriptor is not an object: {item!r}")
    digest, size = item.get("digest"), item.get("size")
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise BuildError(f"{where}: bad digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BuildError(f"{where}: bad size {size!r}")
    algorithm, hex_digest = (g for g in match.groups() if g is not None)
    return _Descriptor(
        media_type=_text_field(item, "mediaType", where),
        algorithm=algorithm,
        hex=hex_digest,
        size=size,
        annotations=_annotations(item, where),
        platform=_platform_field(item, where),
    )


def _text_field(item: dict[str, object], key: str, where: str) -> str:
    value = item.get(key, "")
    if not isinstance(value, str):
        raise BuildError(f"{where}: {key} is not a string: {value!r}")
    return value


def _annotations(item: dict[str, object], where: str) -> dict[str, str]:
    value = item.get("annotations", {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BuildError(f"{where}: bad annotations {value!r}")
    return cast(dict[str, str], value)


def _platform_field(item: dict[str, object], where: str) -> dict[str, object] | None:
    value = item.get("platform")
    if value is not None and not isinstance(value, dict):
        raise BuildError(f"{where}: bad platform {value!r}")
    return value


def _blob_path(layout: Path, descriptor: _Descriptor) -> Path:
    path = layout / "blobs" / descriptor.algorithm / descriptor.hex
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BuildError(f"{layout}: blob {descriptor.digest} unreadable: {exc.strerror}") from exc
    if size != descriptor.size:
        raise BuildError(
            f"{layout}: blob {descriptor.digest} is {size} bytes, descriptor says {descriptor.size}"
        )
    return path


def _read_json(path: Path, what: str) -> dict[str, object]:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_JSON + 1)
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from exc
    return _parse_json(data, what)


def _read_json_blob(layout: Path, descriptor: _Descriptor) -> dict[str, object]:
    if descriptor.size > _MAX_JSON:
        raise BuildError(f"{descriptor.digest}: {descriptor.size} bytes is too big for JSON")
    data = _blob_path(layout, descriptor).read_bytes()
    _check_digest(hashlib.new(descriptor.algorithm, data).hexdigest(), descriptor, layout)
    return _parse_json(data, descriptor.digest)


def _parse_json(data: bytes, what: str) -> dict[str, object]:
    if len(data) > _MAX_JSON:
        raise BuildError(f"{what}: more than {_MAX_JSON} bytes of JSON")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BuildError(f"{what}: not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BuildError(f"{what}: JSON document is not an object")
    return document


def _check_digest(actual_hex: str, descriptor: _Descriptor, layout: Path) -> None:
    if actual_hex != descriptor.hex:
        raise BuildError(
            f"{layout}: blob {descriptor.digest} has digest {descriptor.algorithm}:{actual_hex}"
        )


class _HashingReader(io.RawIOBase):
    """A file read through a hash: after reading to the end, `hexdigest` is its digest."""

    def __init__(self, path: Path, algorithm: str) -> None:
        super().__init__()
        self._file = io.FileIO(path, "r")
        self._hash = hashlib.new(algorithm)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        count = self._file.readinto(view) or 0
        self._hash.update(view[:count])
        return count

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()
        super().close()


@contextmanager
def _verified_layer(layout: Path, descriptor: _Descriptor) -> Iterator[BinaryIO]:
    """The layer's tar stream; on leaving, the blob must have hashed to its digest."""
    try:
        hashing = _HashingReader(_blob_path(layout, descriptor), descriptor.algorithm)
    except OSError as exc:
        raise BuildError(f"{layout}: cannot open blob {descriptor.digest}: {exc}") from exc
    raw = io.BufferedReader(hashing)
    try:
        stream = _decoded(raw, descriptor.digest)
    except BaseException:
        raw.close()
        raise
    with stream:
        try:
            yield stream
        except BuildError:
            _finish_digest(raw, hashing, descriptor, layout)  # a bad blob explains the error
            raise
        _finish_digest(raw, hashing, descriptor, layout)


def _finish_digest(
    raw: io.BufferedReader[Any], hashing: _HashingReader, descriptor: _Descriptor, layout: Path
) -> None:
    try:
        while raw.read(1 << 20):
            pass
    except OSError as exc:
        raise BuildError(f"{layout}: cannot read blob {descriptor.digest}: {exc}") from exc
    _check_digest(hashing.hexdigest(), descriptor, layout)
