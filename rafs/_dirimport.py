"""Reading a directory on disk into the builder's input tree.

Nothing is followed: symlinks are recorded as symlinks, and the walk never leaves the
directory it was given. Regular files keep only their path; the builder reads them later,
in the order the blob is laid out. Files sharing (st_dev, st_ino) become one hardlinked
inode. The builder can list the tree itself, a directory at a time (`list_directory`),
and so store content while the walk goes on; `import_directory` reads it all first.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISLNK, S_ISREG

from . import _v5layout as L
from ._builder import gc_paused
from ._errors import BuildError
from ._source import SourceEntry, new_root


def import_directory(path: Path) -> SourceEntry:
    """The tree below `path`, read whole; its root takes the directory's own metadata."""
    root = directory_root(path)
    with gc_paused():
        _read_tree(root)
    return root


def directory_root(path: Path) -> SourceEntry:
    """The root of the tree below `path`, not listed yet: `list_directory` lists it."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise BuildError(f"cannot read source directory {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise BuildError(f"source is not a directory: {path}")
    root = new_root()
    raw = os.fsencode(path)
    root.uid, root.gid = st.st_uid, st.st_gid
    root.mtime, root.mtime_nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    root.xattrs = read_xattrs(raw)
    root.path = raw
    return root


def _read_tree(parent: SourceEntry) -> None:
    for child in list_directory(parent):
        parent.children[child.name] = child
        if child.is_dir:
            _read_tree(child)


def list_directory(parent: SourceEntry) -> list[SourceEntry]:
    """The entries of the directory `parent.path`, sorted by name (runs once per entry
    of the tree, so it is written for speed)."""
    dirpath = parent.path
    assert dirpath is not None, "a directory read from disk keeps its path"
    try:
        with os.scandir(dirpath) as found:
            entries = sorted(found, key=_name)
    except OSError as exc:
        raise BuildError(f"cannot list {os.fsdecode(dirpath)}: {exc.strerror}") from exc
    return [_entry(entry) for entry in entries]


def _name(entry: os.DirEntry[bytes]) -> bytes:
    return entry.name


def _entry(entry: os.DirEntry[bytes]) -> SourceEntry:
    path = entry.path
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError as exc:
        raise BuildError(f"cannot stat {os.fsdecode(path)}: {exc.strerror}") from exc
    mode = st.st_mode
    mtime, mtime_nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    node = SourceEntry(entry.name, mode, st.st_uid, st.st_gid, mtime, mtime_nsec)
    node.xattrs = read_xattrs(path)
    if S_ISREG(mode):
        node.size = st.st_size
        node.path = path
        if st.st_nlink > 1:
            node.link_key = (st.st_dev, st.st_ino)
    elif S_ISDIR(mode):
        node.path = path
    elif S_ISLNK(mode):
        node.symlink = os.readlink(path)
    elif S_ISCHR(mode) or S_ISBLK(mode):
        node.rdev = st.st_rdev
    return node


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
