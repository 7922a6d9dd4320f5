"""The read-only filesystem: pyfuse3 operations over a RAFS bootstrap.

Inode numbers are the image's inos (the root is 1, hardlinked names share one), so the
table is the bootstrap itself and lookup counts need no bookkeeping: nothing is ever
freed. The image never changes, so entries and attributes are cached by the kernel for a
long time and open files keep their page cache. Only `FUSEError` leaves a handler: a
failed chunk fetch becomes EIO, logged with the blob, chunk and digests.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence

import pyfuse3

from rafs import Bootstrap, Inode, RafsError

from ._reader import FileReader

log = logging.getLogger("nydusd.fs")

CACHE_TIMEOUT = 3600.0  # seconds: the image is immutable
EXPLICIT_UID_GID = 0x10


class RafsFilesystem(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, boot: Bootstrap, reader: FileReader) -> None:
        super().__init__()
        self.boot = boot
        self.reader = reader
        self.by_ino: dict[int, Inode] = {}
        for inode in boot.inodes.values():
            self.by_ino.setdefault(inode.ino, inode)
        self.parent_of = {i.ino: i.parent for i in boot.inodes.values() if i.is_dir}
        explicit = boot.version == 6 or bool(boot.flags & EXPLICIT_UID_GID)
        self.owner = None if explicit else (os.geteuid(), os.getegid())

    # --- metadata -------------------------------------------------------------------------

    def _inode(self, ino: int) -> Inode:
        inode = self.by_ino.get(ino)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return inode

    def attributes(self, inode: Inode) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.InodeT(inode.ino)
        attr.generation = 0
        attr.entry_timeout = CACHE_TIMEOUT
        attr.attr_timeout = CACHE_TIMEOUT
        attr.st_mode = pyfuse3.ModeT(inode.mode)
        attr.st_nlink = inode.nlink
        attr.st_uid, attr.st_gid = self.owner or (inode.uid, inode.gid)
        attr.st_rdev = inode.rdev
        attr.st_size = inode.size
        attr.st_blksize = 4096
        attr.st_blocks = inode.blocks or -(-inode.size // 512)
        mtime_ns = inode.mtime * 1_000_000_000 + inode.mtime_nsec
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
        return attr

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.attributes(self._inode(inode))

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if name == b".":
            return self.attributes(parent)
        if name == b"..":
            return self.attributes(self._inode(self.parent_of.get(parent.ino) or 1))
        child = self._child(parent, bytes(name))
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(self.by_ino[child.ino])

    def _child(self, parent: Inode, name: bytes) -> Inode | None:
        kids = parent.children
        lo, hi = 0, len(kids)
        while lo < hi:  # children are sorted by name bytes
            mid = (lo + hi) // 2
            here = self.boot.inodes[kids[mid]]
            if here.name == name:
                return here
            lo, hi = (mid + 1, hi) if here.name < name else (lo, mid)
        return None

    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        target = self._inode(inode).symlink
        if target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return pyfuse3.FileNameT(target)

    # --- directories ----------------------------------------------------------------------

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if not self._inode(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        kids = self._inode(fh).children
        for position in range(start_id, len(kids)):
            child = self.boot.inodes[kids[position]]
            attr = self.attributes(self.by_ino[child.ino])
            if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(child.name), attr, position + 1):
                return

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    # --- files ----------------------------------------------------------------------------

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self._inode(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if not node.is_reg:
            raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EACCES)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        inode = self._inode(fh)
        try:
            return await self.reader.read(inode, off, size)
        except RafsError as exc:
            log.error("read of ino %d at %d+%d failed: %s", inode.ino, off, size, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("read of ino %d at %d+%d failed", inode.ino, off, size)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    # --- xattrs and the filesystem --------------------------------------------------------

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        value = self._inode(inode).xattrs.get(bytes(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(k) for k in self._inode(inode).xattrs]

    async def access(self, inode: pyfuse3.InodeT, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return not mode & os.W_OK

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        total = sum(i.size for i in self.by_ino.values() if stat.S_ISREG(i.mode))
        data.f_blocks = -(-total // 4096)
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.by_ino)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data
