"""Unpacking an image into a tar archive: every entry, its metadata and verified content.

The archive is PAX: xattrs as SCHILY.xattr records, mtime with nanoseconds, long names.
Each hardlink group's first name (in walk order) carries the content; the others are
tar hardlinks to it. The archive goes to a temporary file renamed into place at the end,
so a failed unpack leaves nothing behind.
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from pathlib import Path

from ._model import Bootstrap, Inode
from ._reader import ChunkReader, FileStream, LocalBlobs

_TYPES = {
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
}


def unpack_to_tar(boot: Bootstrap, blob_dir: Path, output: Path) -> int:
    """Write the whole tree to `output`; returns the number of entries written."""
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    os.close(fd)
    try:
        with (
            LocalBlobs(blob_dir) as blobs,
            tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar,
        ):
            count = _write_entries(tar, boot, ChunkReader(boot, blobs))
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _write_entries(tar: tarfile.TarFile, boot: Bootstrap, reader: ChunkReader) -> int:
    first_name: dict[int, str] = {}
    count = 0
    for raw_path, inode in boot.walk():
        if stat.S_IFMT(inode.mode) == stat.S_IFSOCK:
            continue  # tar cannot hold sockets
        name = "." if raw_path == b"/" else os.fsdecode(raw_path.lstrip(b"/"))
        info = tar_info(name, inode)
        if inode.is_reg and inode.ino in first_name:
            info.type, info.linkname, info.size = tarfile.LNKTYPE, first_name[inode.ino], 0
            tar.addfile(info)
        elif inode.is_reg:
            first_name[inode.ino] = name
            tar.addfile(info, FileStream(reader, inode))
        else:
            tar.addfile(info)
        count += 1
    return count


def tar_info(name: str, inode: Inode) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = _TYPES[stat.S_IFMT(inode.mode)]
    info.mode = stat.S_IMODE(inode.mode)
    info.uid, info.gid = inode.uid, inode.gid
    info.size = inode.size if inode.is_reg else 0
    info.mtime = inode.mtime
    pax: dict[str, str] = {}
    if inode.mtime_nsec:
        pax["mtime"] = f"{inode.mtime}.{inode.mtime_nsec:09d}"
    if inode.symlink is not None:
        info.linkname = os.fsdecode(inode.symlink)
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = os.major(inode.rdev), os.minor(inode.rdev)
    for key, value in inode.xattrs.items():
        name = "SCHILY.xattr." + key.decode("utf-8", "surrogateescape")
        pax[name] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    return info
