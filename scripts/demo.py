"""`make demo`: the main job on this machine, end to end, with embedded defaults.

Today that is the image half: a real directory tree becomes a Nydus RAFS v5 image
(bootstrap + zstd blob), every digest and chunk is checked, the image is unpacked and
compared with the source entry by entry, then mounted lazily with `nydusd`: a few files
are read and only their chunks leave the blob. Later stages (registry, peer mesh) extend
this script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
BIN = Path(sys.executable).parent
console = Console()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("DEMO_TREE", DEFAULT_TREE))
    parser.add_argument("--tree", type=Path, default=default)
    tree: Path = parser.parse_args().tree
    if not tree.is_dir():
        console.print(f"[red]demo: source tree {tree} is not a directory[/red]")
        return 1
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    rows: list[tuple[str, str]] = [("source tree", str(tree))]
    summary = build(tree, rows)
    mismatches = check_and_compare(tree, rows)
    lazy_mount(tree, summary, rows)
    table = Table(title="nydus-mesh demo: directory -> RAFS v5 image -> check -> unpack -> mount")
    table.add_column("step")
    table.add_column("result")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for line in mismatches[:10]:
        console.print(f"[red]differs: {line}[/red]")
    return 1 if mismatches else 0


def nydus_image(*args: object) -> None:
    subprocess.run(
        [str(BIN / "nydus-image"), *map(str, args)], check=True, stdout=subprocess.DEVNULL
    )


def build(tree: Path, rows: list[tuple[str, str]]) -> dict[str, int]:
    start = time.monotonic()
    nydus_image(
        "create",
        "--bootstrap",
        WORK / "image.boot",
        "--blob-dir",
        WORK / "blobs",
        "--output-json",
        WORK / "build.json",
        tree,
    )
    seconds = time.monotonic() - start
    s: dict[str, int] = json.loads((WORK / "build.json").read_text())
    rows += [
        ("entries / regular files", f"{s['entries']} / {s['files']}"),
        ("file bytes", human(s["bytes"])),
        ("chunks (unique)", f"{s['chunks']} ({s['unique_chunks']})"),
        ("chunks deduplicated", str(s["chunks_deduped"])),
        ("blob (zstd)", f"{human(s['blob_compressed_size'])}"),
        ("bootstrap", human((WORK / "image.boot").stat().st_size)),
        ("build", f"{seconds:.1f} s ({s['bytes'] / max(seconds, 1e-9) / 1e6:.0f} MB/s)"),
    ]
    return s


def check_and_compare(tree: Path, rows: list[tuple[str, str]]) -> list[str]:
    nydus_image("check", "--bootstrap", WORK / "image.boot", "--blob-dir", WORK / "blobs")
    nydus_image(
        "unpack",
        "--bootstrap",
        WORK / "image.boot",
        "--blob-dir",
        WORK / "blobs",
        "--output",
        WORK / "unpacked.tar",
    )
    compared, mismatches = compare(tree, WORK / "unpacked.tar")
    rows += [
        ("check", "every Merkle digest and chunk verified"),
        ("unpack vs source", f"{compared} entries, {len(mismatches)} differences"),
    ]
    return mismatches


def lazy_mount(tree: Path, summary: dict[str, int], rows: list[tuple[str, str]]) -> None:
    if not os.path.exists("/dev/fuse"):
        rows.append(("lazy mount", "skipped: /dev/fuse is missing"))
        return
    mnt, sock = WORK / "mnt", WORK / "nydusd.sock"
    mnt.mkdir()
    start = time.monotonic()
    daemon = subprocess.Popen(
        [
            str(BIN / "nydusd"),
            "--bootstrap",
            str(WORK / "image.boot"),
            "--blob-dir",
            str(WORK / "blobs"),
            "--mountpoint",
            str(mnt),
            "--cache-dir",
            str(WORK / "cache"),
            "--apisock",
            str(sock),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        while not (os.path.ismount(mnt) and sock.exists()):
            if daemon.poll() is not None or time.monotonic() - start > 20:
                rows.append(("lazy mount", "nydusd did not mount"))
                return
            time.sleep(0.02)
        mounted = time.monotonic() - start
        files = [p for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink()][:25]
        same = sum((mnt / p.relative_to(tree)).read_bytes() == p.read_bytes() for p in files)
        origin = metric(sock, "nydusd_origin_bytes_total")
        rows += [
            ("mount ready", f"{mounted:.2f} s"),
            ("files read through the mount", f"{len(files)} ({same} equal to the source)"),
            (
                "fetched from the blob",
                f"{human(int(origin))} of {human(summary['blob_compressed_size'])}",
            ),
        ]
    finally:
        daemon.terminate()
        daemon.wait(10)
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, stderr=subprocess.DEVNULL)


def metric(sock: Path, name: str) -> float:
    out = subprocess.run(
        ["curl", "-s", "--unix-socket", str(sock), "http://nydusd/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def compare(tree: Path, archive: Path) -> tuple[int, list[str]]:
    """Each tar entry against the source: type, mode, owner, content, link target."""
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
