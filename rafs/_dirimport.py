"""Reading a directory on disk into the builder's input tree.

Nothing is followed: symlinks are recorded as symlinks, and the walk never leaves the
directory it was given. Regular files keep only their path; the builder reads them later,
in the order the blob is laid out. Files sharing (st_dev, st_ino) become one hardlinked
inode.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import _v5layout as L
from ._builder import gc_paused
from ._errors import BuildError
from ._source import SourceEntry, new_root


def import_directory(path: Path) -> SourceEntry:
    """The tree below `path`; its root takes the directory's own metadata."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise BuildError(f"cannot read source directory {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise BuildError(f"source is not a directory: {path}")
    root = new_root()
    with gc_paused():
        _fill(root, os.fsencode(path), st)
        _read_dir(root, os.fsencode(path))
    return root


def _read_dir(parent: SourceEntry, dirpath: bytes) -> None:
    try:
        entries = sorted(os.scandir(dirpath), key=lambda e: e.name)
    except OSError as exc:
        raise BuildError(f"cannot list {os.fsdecode(dirpath)}: {exc.strerror}") from exc
    here = Path(os.fsdecode(dirpath))  # files' paths are made from it: cheaper than parsing
    for entry in entries:
        child = _entry(entry, here)
        parent.children[child.name] = child
        if child.is_dir:
            _read_dir(child, entry.path)


def _entry(entry: os.DirEntry[bytes], here: Path) -> SourceEntry:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError as exc:
        raise BuildError(f"cannot stat {os.fsdecode(entry.path)}: {exc.strerror}") from exc
    node = SourceEntry(name=entry.name, mode=st.st_mode)
    _fill(node, entry.path, st)
    if node.is_reg:
        node.path = here / os.fsdecode(entry.name)
    return node


def _fill(node: SourceEntry, path: bytes, st: os.stat_result) -> None:
    node.uid, node.gid = st.st_uid, st.st_gid
    node.mtime, node.mtime_nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    node.xattrs = read_xattrs(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        node.size = st.st_size
        if st.st_nlink > 1:
            node.link_key = (st.st_dev, st.st_ino)
    elif stat.S_ISLNK(mode):
        node.symlink = os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        node.rdev = st.st_rdev


def read_xattrs(path: bytes) -> dict[bytes, bytes]:
    """The xattrs RAFS can carry (user., security., trusted., POSIX ACLs), sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found: dict[bytes, bytes] = {}
    for name in sorted(names):
        raw = name.encode()
        if not raw.startswith(L.XATTR_PREFIXES):
            continue
        try:
            found[raw] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return found
