"""Real filesystem trees for round-trip tests, and a comparison of a tree with a tar."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path


def make_rich_tree(root: Path) -> Path:
    """Every entry type the format carries: modes, owners, links, xattrs, holes, devices."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    os.chown(root / "etc" / "hosts", 1000, 1001)
    os.chmod(root / "etc" / "hosts", 0o640)
    (root / "bin").mkdir(mode=0o751)
    os.chmod(root / "bin", 0o751)
    exe = root / "bin" / "tool"
    exe.write_bytes(os.urandom(3 * 4096 + 17))
    os.chmod(exe, 0o4755)
    os.link(exe, root / "bin" / "tool-hardlink")
    os.link(exe, root / "etc" / "tool-third-name")
    os.symlink("../bin/tool", root / "etc" / "tool-link")
    os.symlink("/nonexistent/absolute/target", root / "dangling")
    big = root / "data" / "sparse.img"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.seek(3 * 65536)
        f.write(b"tail after a hole")
    (root / "data" / "empty").write_bytes(b"")
    (root / "data" / "same-1").write_bytes(b"x" * 70000)
    (root / "data" / "same-2").write_bytes(b"x" * 70000)
    (root / "data" / "nested" / "deeper").mkdir(parents=True)
    (root / "data" / "nested" / "deeper" / "file with spaces").write_bytes(b"spaces\n")
    (root / "data" / "naïve-ütf8").write_bytes(b"utf8 name\n")
    os.setxattr(root / "etc" / "hosts", "user.origin", b"test-suite")
    os.setxattr(root / "data", "user.empty", b"")
    os.mkfifo(root / "data" / "fifo")
    os.mknod(root / "data" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "data" / "loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.utime(root / "etc" / "hosts", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    content_md5: str | None
    target: str | None
    rdev: tuple[int, int] | None
    xattrs: tuple[tuple[str, bytes], ...]


def tree_entries(root: Path) -> tuple[dict[str, Entry], list[set[str]]]:
    """Every entry below root by relative path, and the hardlink groups (by name)."""
    found: dict[str, Entry] = {}
    links: dict[tuple[int, int], set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = full.lstat()
            found[rel] = _entry_from_stat(full, st)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                links.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    return found, sorted(links.values(), key=sorted)


def _entry_from_stat(path: Path, st: os.stat_result) -> Entry:
    mode = st.st_mode
    kind = _kind(mode)
    md5 = hashlib.md5(path.read_bytes()).hexdigest() if kind == "reg" else None
    target = os.readlink(path) if kind == "lnk" else None
    rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None
    xattrs = tuple(
        sorted(
            (n, os.getxattr(path, n, follow_symlinks=False))
            for n in os.listxattr(path, follow_symlinks=False)
            if n.startswith("user.")
        )
    )
    return Entry(
        kind, stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_mtime_ns, md5, target, rdev, xattrs
    )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "reg"),
        (stat.S_ISLNK, "lnk"),
        (stat.S_ISCHR, "chr"),
        (stat.S_ISBLK, "blk"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return name
    return "other"


_TAR_KINDS = {
    tarfile.DIRTYPE: "dir",
    tarfile.REGTYPE: "reg",
    tarfile.SYMTYPE: "lnk",
    tarfile.CHRTYPE: "chr",
    tarfile.BLKTYPE: "blk",
    tarfile.FIFOTYPE: "fifo",
}


def tar_entries(path: Path) -> tuple[dict[str, Entry], list[set[str]]]:
    """The same view of a tar archive as `tree_entries` gives of a directory."""
    found: dict[str, Entry] = {}
    groups: dict[str, set[str]] = {}
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            if name in (".", ""):
                continue
            if m.islnk():
                first = m.linkname.removeprefix("./")
                found[name] = found[first]
                groups.setdefault(first, {first}).add(name)
                continue
            found[name] = _entry_from_member(tar, m)
    return found, sorted(groups.values(), key=sorted)


def _entry_from_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> Entry:
    kind = _TAR_KINDS[m.type]
    md5 = None
    if kind == "reg":
        f = tar.extractfile(m)
        assert f is not None
        md5 = hashlib.md5(f.read()).hexdigest()
    raw_mtime = m.pax_headers.get("mtime")
    if raw_mtime and "." in raw_mtime:
        sec, frac = raw_mtime.split(".")
        mtime_ns = int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
    else:
        mtime_ns = int(m.mtime) * 1_000_000_000
    xattrs = tuple(
        sorted(
            (k.removeprefix("SCHILY.xattr."), v.encode("utf-8", "surrogateescape"))
            for k, v in m.pax_headers.items()
            if k.startswith("SCHILY.xattr.user.")
        )
    )
    rdev = (m.devmajor, m.devminor) if kind in ("chr", "blk") else None
    target = m.linkname if kind == "lnk" else None
    return Entry(kind, m.mode, m.uid, m.gid, mtime_ns, md5, target, rdev, xattrs)
