"""`make demo`: the main job on this machine, end to end, with embedded defaults.

Today that is the image half: a real directory tree becomes a Nydus RAFS v5 image
(bootstrap + zstd blob), every digest and chunk is checked, the image is unpacked again and
the result compared with the source tree entry by entry. Later stages (registry, lazy
mount, mesh) extend this script.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

DEFAULT_TREE = Path("/usr/share/doc")
WORK = Path(__file__).resolve().parents[1] / "demo-work"
console = Console()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree", type=Path, default=Path(os.environ.get("DEMO_TREE", DEFAULT_TREE))
    )
    args = parser.parse_args()
    tree: Path = args.tree
    if not tree.is_dir():
        console.print(f"[red]demo: source tree {tree} is not a directory[/red]")
        return 1
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    tool = Path(sys.executable).with_name("nydus-image")
    rows: list[tuple[str, str]] = []
    t0 = time.monotonic()
    run(
        tool,
        "create",
        "--bootstrap",
        WORK / "image.boot",
        "--blob-dir",
        WORK / "blobs",
        "--output-json",
        WORK / "build.json",
        tree,
    )
    build_s = time.monotonic() - t0
    import json

    summary = json.loads((WORK / "build.json").read_text())
    run(tool, "check", "--bootstrap", WORK / "image.boot", "--blob-dir", WORK / "blobs")
    t1 = time.monotonic()
    run(
        tool,
        "unpack",
        "--bootstrap",
        WORK / "image.boot",
        "--blob-dir",
        WORK / "blobs",
        "--output",
        WORK / "unpacked.tar",
    )
    unpack_s = time.monotonic() - t1
    compared, mismatches = compare(tree, WORK / "unpacked.tar")
    blob_size = summary["blob_compressed_size"]
    rows += [
        ("source tree", str(tree)),
        ("entries / regular files", f"{summary['entries']} / {summary['files']}"),
        ("file bytes", human(summary["bytes"])),
        ("chunks (unique)", f"{summary['chunks']} ({summary['unique_chunks']})"),
        ("chunks deduplicated", str(summary["chunks_deduped"])),
        ("blob (zstd)", f"{human(blob_size)}  {summary['new_blob'] or '-'}"),
        ("bootstrap", human((WORK / "image.boot").stat().st_size)),
        ("build", f"{build_s:.1f} s  ({summary['bytes'] / max(build_s, 1e-9) / 1e6:.0f} MB/s)"),
        ("check", "every digest and chunk verified"),
        ("unpack", f"{unpack_s:.1f} s"),
        ("compared with source", f"{compared} entries, {len(mismatches)} differences"),
    ]
    table = Table(title="nydus-mesh demo: directory -> RAFS v5 image -> check -> unpack")
    table.add_column("step")
    table.add_column("result")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for line in mismatches[:10]:
        console.print(f"[red]differs: {line}[/red]")
    return 1 if mismatches else 0


def run(*args: object) -> None:
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL)


def compare(tree: Path, archive: Path) -> tuple[int, list[str]]:
    """Each tar entry against the source: type, mode, owner, size, content, link target."""
    problems: list[str] = []
    count = 0
    with tarfile.open(archive) as tar:
        for m in tar:
            if m.name == ".":
                continue
            count += 1
            problems += [f"{m.name}: {p}" for p in differences(tree / m.name, m, tar)]
    return count, problems


def differences(path: Path, m: tarfile.TarInfo, tar: tarfile.TarFile) -> list[str]:
    st = path.lstat()
    found = []
    if stat.S_IMODE(st.st_mode) != m.mode or (st.st_uid, st.st_gid) != (m.uid, m.gid):
        found.append("mode or owner")
    if m.isreg():
        f = tar.extractfile(m)
        assert f is not None
        if hashlib.sha256(f.read()).digest() != hashlib.sha256(path.read_bytes()).digest():
            found.append("content")
    if m.issym() and os.readlink(path) != m.linkname:
        found.append("symlink target")
    return found


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


if __name__ == "__main__":
    sys.exit(main())
