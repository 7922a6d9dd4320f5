"""Several images in one FUSE session: pyfuse3 holds one session per process, so a daemon
with several `--mount`s mounts one filesystem whose root lists the images (`0`, `1`, ...)
at a private directory, and bind-mounts each image's directory onto its mountpoint.

Inode numbers: 1 is the synthetic root; inode `i` of image `k` is `(k + 1) << 40 | i`, so
the table is still the images' own, and a handle is the inode it was opened on. Every
operation on an image's inode is the image's `RafsFilesystem` operation; only `FUSEError`
leaves a handler. Rule: the bind mounts are made after the FUSE mount and removed before it
is unmounted, each step undone on failure, so nothing is left mounted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pyfuse3

from fuse._fs import CACHE_TIMEOUT, RafsFilesystem

log = logging.getLogger("dfdaemon.mount")

ROOT = 1
SHIFT = 40
MS_BIND = 4096
MNT_DETACH = 2


class MultiFilesystem(pyfuse3.Operations):
    """The images' filesystems under one root, read only."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, images: Sequence[RafsFilesystem]) -> None:
        super().__init__()
        self.images = list(images)

    # --- inode numbers ------------------------------------------------------------------

    def _split(self, inode: int) -> tuple[RafsFilesystem, int]:
        image = (inode >> SHIFT) - 1
        if not 0 <= image < len(self.images):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.images[image], inode & ((1 << SHIFT) - 1)

    def _translated(self, inode: int, attr: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        attr.st_ino = pyfuse3.InodeT(((inode >> SHIFT) << SHIFT) | attr.st_ino)
        return attr

    def _root_attr(self) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.InodeT(ROOT)
        attr.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555)
        attr.st_nlink = 2 + len(self.images)
        attr.entry_timeout = attr.attr_timeout = CACHE_TIMEOUT
        attr.st_blksize = 4096
        return attr

    def _image_root(self, image: int) -> int:
        return (image + 1) << SHIFT | self.images[image].boot.root.ino

    # --- metadata -----------------------------------------------------------------------

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if inode == ROOT:
            return self._root_attr()
        fs, ino = self._split(inode)
        return self._translated(inode, await fs.getattr(pyfuse3.InodeT(ino), ctx))

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT:
            return await self._lookup_root(bytes(name), ctx)
        fs, ino = self._split(parent_inode)
        return self._translated(parent_inode, await fs.lookup(pyfuse3.InodeT(ino), name, ctx))

    async def _lookup_root(
        self, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name in (b".", b".."):
            return self._root_attr()
        if not name.isdigit() or int(name) >= len(self.images):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(pyfuse3.InodeT(self._image_root(int(name))), ctx)

    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        fs, ino = self._split(inode)
        return await fs.readlink(pyfuse3.InodeT(ino), ctx)

    # --- directories --------------------------------------------------------------------

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if inode != ROOT:
            fs, ino = self._split(inode)
            await fs.opendir(pyfuse3.InodeT(ino), ctx)
        return pyfuse3.FileHandleT(inode)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        if fh == ROOT:
            self._readdir_root(start_id, token)
            return
        fs, ino = self._split(fh)
        directory = fs.by_ino.get(ino)
        if directory is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        for position in range(start_id, len(directory.children)):
            child = fs.boot.inodes[directory.children[position]]
            attr = self._translated(fh, fs.attributes(fs.by_ino[child.ino]))
            if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(child.name), attr, position + 1):
                return

    def _readdir_root(self, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for image in range(start_id, len(self.images)):
            fs = self.images[image]
            root = self._image_root(image)
            attr = self._translated(root, fs.attributes(fs.boot.root))
            if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(str(image).encode()), attr,
                                         image + 1):  # fmt: skip
                return

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    # --- files --------------------------------------------------------------------------

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if inode == ROOT:
            raise pyfuse3.FUSEError(errno.EISDIR)
        fs, ino = self._split(inode)
        info = await fs.open(pyfuse3.InodeT(ino), flags, ctx)
        info.fh = pyfuse3.FileHandleT(inode)
        return info

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        fs, ino = self._split(fh)
        return await fs.read(pyfuse3.FileHandleT(ino), off, size)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    # --- xattrs and the filesystem ------------------------------------------------------

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        if inode == ROOT:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        fs, ino = self._split(inode)
        return await fs.getxattr(pyfuse3.InodeT(ino), name, ctx)

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        if inode == ROOT:
            return []
        fs, ino = self._split(inode)
        return await fs.listxattr(pyfuse3.InodeT(ino), ctx)

    async def access(self, inode: pyfuse3.InodeT, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return not mode & os.W_OK

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return await self.images[0].statfs(ctx)


# --- bind mounts --------------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def bind_mount(source: Path, target: Path) -> None:
    """`mount --bind source target`, or OSError naming both."""
    if _libc().mount(bytes(source), bytes(target), None, MS_BIND, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot bind {source} onto {target}: {os.strerror(code)}")


def detach(target: Path) -> None:
    """`umount -l target` (lazy: a busy mount goes as soon as its users do)."""
    if _libc().umount2(bytes(target), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        log.warning("cannot unmount %s: %s", target, os.strerror(code))
