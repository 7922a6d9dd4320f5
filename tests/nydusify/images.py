"""Multi-layer OCI images made by umoci from real trees, for the nydusify tests.

`layered_image` builds, in one OCI layout:

- layer 1: a copy of /usr/share/zoneinfo (real files, real symlinks) plus entries with
  modes, owners, symlinks, hardlinks, xattrs, a fifo and device nodes, written into an
  unpacked empty image and repacked (`umoci unpack` / `umoci repack`);
- layer 2: that rootfs changed and repacked: files and directories deleted (whiteouts),
  files rewritten, modes/owners/xattrs changed, a hardlink group split, new files;
- layer 3: a directory replaced whole: a tar made by GNU tar holding the directory with its
  `.wh..wh..opq` marker, added with `umoci raw add-layer`.

(`umoci insert` is not used: umoci 0.4.7 writes layers cut short, without the tar's final
padding and end blocks, which strict tar readers refuse.)

`umoci unpack` of the result gives the expected tree, made by a real tool, not by us.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.images import require_tools

ZONEINFO = Path("/usr/share/zoneinfo")


def umoci(*args: str) -> None:
    done = subprocess.run(["umoci", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"umoci {' '.join(args)} failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class LayeredImage:
    layout: Path
    tag: str
    rootfs: Path  # the final tree, as `umoci unpack` lays it out


def first_tree(root: Path) -> None:
    """What layer 1 holds, written into `root` (an existing, empty rootfs)."""
    shutil.copytree(ZONEINFO, root / "zoneinfo", symlinks=True)
    etc = root / "etc"
    etc.mkdir()
    (etc / "hosts").write_bytes(b"127.0.0.1 localhost\n::1 localhost\n")
    os.chown(etc / "hosts", 1000, 1001)
    os.chmod(etc / "hosts", 0o640)
    os.setxattr(etc / "hosts", "user.origin", b"layer-one")
    os.setxattr(etc, "user.dir-note", b"etc dir")
    (etc / "to-delete").write_bytes(b"gone in layer 2\n")
    (etc / "to-rewrite").write_bytes(b"old content\n" * 100)
    gone = root / "gone-dir"
    (gone / "sub").mkdir(parents=True)
    (gone / "sub" / "file").write_bytes(os.urandom(5000))
    bin_ = root / "bin"
    bin_.mkdir()
    tool = bin_ / "tool"
    tool.write_bytes(os.urandom(3 * 1024 * 1024 + 123))  # several chunks
    os.chmod(tool, 0o4755)
    os.link(tool, bin_ / "tool-hardlink")
    os.link(tool, etc / "tool-third-name")
    (bin_ / "pair-a").write_bytes(b"split in layer 2\n")
    os.link(bin_ / "pair-a", bin_ / "pair-b")
    os.symlink("../bin/tool", etc / "tool-link")
    os.symlink("/nonexistent/absolute/target", root / "dangling")
    (root / "replaced").mkdir()
    (root / "replaced" / "old-1").write_bytes(b"hidden by the opaque layer\n")
    (root / "replaced" / "old-2").write_bytes(b"hidden too\n")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    (root / "empty").write_bytes(b"")
    # Larger than what `check` fetches in one go: read a run of chunks at a time.
    (root / "large.img").write_bytes(os.urandom(1 << 20) + bytes(8 << 20) + b"tail")


def second_changes(rootfs: Path) -> None:
    """What layer 2 does, applied to an unpacked rootfs."""
    etc = rootfs / "etc"
    (etc / "to-delete").unlink()
    shutil.rmtree(rootfs / "gone-dir")
    shutil.rmtree(rootfs / "zoneinfo" / "Antarctica")
    (rootfs / "zoneinfo" / "UTC").unlink()
    (etc / "to-rewrite").write_bytes(b"new content, another size\n")
    os.chmod(etc / "hosts", 0o600)
    os.chown(etc / "hosts", 2000, 2001)
    os.setxattr(etc / "hosts", "user.origin", b"layer-two")
    os.setxattr(etc / "hosts", "user.added", b"\x00binary\xff")
    (rootfs / "bin" / "pair-b").unlink()
    (rootfs / "bin" / "pair-b").write_bytes(b"no longer a hardlink\n")
    (rootfs / "new").mkdir()
    (rootfs / "new" / "data.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    os.link(rootfs / "new" / "data.bin", rootfs / "new" / "data-link.bin")


def opaque_layer(base: Path) -> Path:
    """A tar replacing /replaced whole: its opaque marker and one new file."""
    top = base / "opaque"
    (top / "replaced").mkdir(parents=True)
    (top / "replaced" / ".wh..wh..opq").write_bytes(b"")
    (top / "replaced" / "only-new").write_bytes(b"the opaque layer's own file\n")
    os.chmod(top / "replaced", 0o750)
    tar = base / "opaque.tar"
    subprocess.run(["tar", "--numeric-owner", "-C", str(top), "-cf", str(tar), "replaced"],
                   check=True, capture_output=True)  # fmt: skip
    return tar


def layered_image(base: Path, tag: str = "v1") -> LayeredImage:
    require_tools("umoci", "tar")
    layout, bundle = base / "layout", base / "bundle"
    image = f"{layout}:{tag}"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    umoci("config", "--image", image, "--os", "linux", "--architecture", "amd64",
          "--config.cmd", "/bin/tool")  # fmt: skip
    umoci("unpack", "--image", image, str(bundle))
    first_tree(bundle / "rootfs")
    umoci("repack", "--refresh-bundle", "--image", image, str(bundle))
    second_changes(bundle / "rootfs")
    umoci("repack", "--refresh-bundle", "--image", image, str(bundle))
    umoci("raw", "add-layer", "--image", image, str(opaque_layer(base)))
    expected = base / "expected"
    umoci("unpack", "--image", image, str(expected))
    return LayeredImage(layout, tag, expected / "rootfs")


def variant_image(base: Path, source: Path, tag: str = "v1") -> LayeredImage:
    """One layer: `source` (a rootfs) with a few small changes; shares most content."""
    require_tools("umoci")
    layout, bundle = base / "layout", base / "bundle"
    image = f"{layout}:{tag}"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    umoci("config", "--image", image, "--os", "linux", "--architecture", "amd64")
    umoci("unpack", "--image", image, str(bundle))
    rootfs = bundle / "rootfs"
    subprocess.run(["cp", "-a", f"{source}/.", str(rootfs)], check=True)  # devices, xattrs
    (rootfs / "etc" / "variant").write_bytes(b"only in the variant\n")
    (rootfs / "etc" / "to-rewrite").write_bytes(b"the variant rewrote this\n")
    umoci("repack", "--refresh-bundle", "--image", image, str(bundle))
    return LayeredImage(layout, tag, rootfs)
