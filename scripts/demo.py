"""`make demo`: the main job on this machine, end to end, with embedded defaults.

A real directory tree (a snapshot of it, so packages installed meanwhile do not matter)
becomes a Nydus RAFS v5 image: built, every digest and chunk checked, unpacked and compared
with the source, mounted lazily with `nydusd`. Then the whole story: the tree becomes an OCI
image (umoci), is pushed to a Distribution registry on loopback (skopeo) and converted to a
Nydus image there (`nydusify convert`); a supernode, a seed and three peers (`dfdaemon`)
start, peer1 mounts the image and reads a fixed set of files, the registry is stopped, and
peer2 and peer3 read the same files from the mesh. A table shows, per peer, bytes from the
origin against bytes from peers and the time to first byte. Everything started is stopped
(and unmounted) at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster import (
    PEER_PORTS,
    PORTS,
    ClusterError,
    LocalCluster,
    Service,
    detach_below,
    http_get,
)
from rich.console import Console
from rich.table import Table

DEFAULT_TREE = Path("/usr/share/doc")
WORK = Path(__file__).resolve().parents[1] / "demo-work"
BIN = Path(sys.executable).parent
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO = "demo/tree"
console = Console(width=None if sys.stdout.isatty() else 110)  # a log keeps the table whole


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("DEMO_TREE", DEFAULT_TREE))
    parser.add_argument("--tree", type=Path, default=default)
    tree: Path = parser.parse_args().tree
    if not tree.is_dir():
        console.print(f"[red]demo: source tree {tree} is not a directory[/red]")
        return 1
    missing = [t for t in ("umoci", "skopeo", "fusermount3") if shutil.which(t) is None]
    if missing:
        console.print(f"[red]demo: missing {', '.join(missing)} (make system installs them)[/red]")
        return 1
    try:
        return run_demo(tree)
    except (DemoError, ClusterError) as exc:
        console.print(f"[red]demo: {exc}[/red]")
        return 1


def run_demo(tree: Path) -> int:
    if WORK.exists():
        detach_below(WORK)
        shutil.rmtree(WORK)
    WORK.mkdir()
    rows: list[tuple[str, str]] = [("source tree", str(tree))]
    snapshot = take_snapshot(tree, rows)
    summary = build(snapshot, rows)
    mismatches = check_and_compare(snapshot, rows)
    lazy_mount(snapshot, summary, rows)
    image_table(rows)
    for line in mismatches[:10]:
        console.print(f"[red]differs: {line}[/red]")
    if mismatches:
        return 1
    return mesh_story(snapshot)


def image_table(rows: list[tuple[str, str]]) -> None:
    table = Table(title="nydus-mesh demo: directory -> RAFS v5 image -> check -> unpack -> mount")
    table.add_column("step")
    table.add_column("result")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def run(*args: object) -> str:
    """Run a tool; its failure is one line naming the command and its stderr."""
    done = subprocess.run(list(map(str, args)), capture_output=True, text=True)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise DemoError(f"{Path(str(args[0])).name} {args[1]} failed: {detail[0]}")
    return done.stdout


class DemoError(Exception):
    """A step that failed; the message names the tool and what it said."""


def take_snapshot(tree: Path, rows: list[tuple[str, str]]) -> Path:
    """Copy the tree into an empty umoci bundle: the image's source, fixed from now on."""
    layout, bundle = WORK / "oci", WORK / "bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:demo")
    run("umoci", "unpack", "--image", f"{layout}:demo", bundle)
    run("cp", "-a", f"{tree}/.", bundle / "rootfs")
    rows.append(("snapshot", "copied into an umoci bundle (the source for every comparison)"))
    return bundle / "rootfs"


def nydus_image(*args: object) -> None:
    run(BIN / "nydus-image", *args)


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


# --- the mesh: registry, supernode, seed, three peers ----------------------------------


@dataclass
class Reads:
    """What one peer's reads through its mount found."""

    files: int = 0
    equal: int = 0
    nbytes: int = 0
    first_bytes: list[float] = field(default_factory=list)  # seconds, per file
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def mesh_story(snapshot: Path) -> int:
    if not os.path.exists("/dev/fuse"):
        console.print("[yellow]demo: /dev/fuse is missing: the mesh half is skipped[/yellow]")
        return 0
    files = pick_files(snapshot)
    with LocalCluster(WORK / "mesh", token="demo-token") as cluster:
        steps, reads, metrics = run_mesh(cluster, snapshot, files)
    console.print(steps_table(steps))
    console.print(mesh_table(reads, metrics))
    total = sum(r.files for r in reads.values())
    equal = sum(r.equal for r in reads.values())
    print_summary(reads, metrics, files)
    for name, r in reads.items():
        for error in r.errors[:5]:
            console.print(f"[red]{name}: {error}[/red]")
    return 0 if equal == total else 1


def run_mesh(
    cluster: LocalCluster, snapshot: Path, files: list[str]
) -> tuple[list[tuple[str, str]], dict[str, Reads], dict[str, dict[str, float]]]:
    steps: list[tuple[str, str]] = []
    registry = cluster.start_registry()
    reference = publish(registry, steps)
    start = time.monotonic()
    supernode = cluster.start_supernode()
    seed = cluster.start_peer("seed", supernode, port=PORTS["seed"], seed=True, wait=False)
    transports = ("http", "http", "libp2p")  # every daemon serves both; peer3 fetches over libp2p
    peers = [
        cluster.start_peer(f"peer{n + 1}", supernode, port=port, mounts=(reference,),
                           transport=transports[n], wait=False)
        for n, port in enumerate(PEER_PORTS)
    ]  # fmt: skip
    for peer in (seed, *peers):
        cluster.wait_peer(peer)
    steps.append(("supernode, seed, 3 peers up and mounted", f"{time.monotonic() - start:.1f} s"))
    steps.append(("peer fetch transport", "peer1, peer2: HTTP; peer3: libp2p (noise)"))
    reads = {"peer1": read_through(peers[0], snapshot, files)}
    blobs = nydus_blobs(registry, reference)
    steps.append(("Nydus blobs in the registry", human(sum(blobs.values()))))
    wait_announced(peers[0], list(blobs))
    cluster.stop(registry)
    steps.append(("registry", f"stopped after peer1 read {len(files)} files"))
    for peer in peers[1:]:
        reads[peer.name] = read_through(peer, snapshot, files)
    metrics = {p.name: p.metrics() for p in (seed, *peers)}
    return steps, reads, metrics


def publish(registry: Service, steps: list[tuple[str, str]]) -> str:
    """umoci repack -> skopeo copy -> nydusify convert; returns the Nydus image reference."""
    layout, start = WORK / "oci", time.monotonic()
    run("umoci", "repack", "--image", f"{layout}:demo", WORK / "bundle")
    run("umoci", "config", "--image", f"{layout}:demo", "--os", "linux", "--architecture", "amd64")
    layer = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    steps.append(("OCI image (umoci repack)", f"one gzip layer, {human(layer.stat().st_size)}"))
    source, target = f"{registry.host}/{REPO}:oci", f"{registry.host}/{REPO}:nydus"
    run("skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
        f"oci:{layout}:demo", f"docker://{source}")  # fmt: skip
    steps.append((f"pushed to {registry.host} (skopeo)", source))
    report = WORK / "convert.json"
    run(BIN / "nydusify", "convert", "--source", source, "--target", target, "--source-insecure",
        "--target-insecure", "--work-dir", WORK / "nydusify", "--output-json", report)  # fmt: skip
    converted = json.loads(report.read_text())
    blob = f"{converted['blobs']} blob(s), {human(converted['bytes_pushed'])} pushed"
    steps.append(("converted (nydusify convert)", f"{target}: {blob}"))
    steps.append(("image published in", f"{time.monotonic() - start:.1f} s"))
    return target


def pick_files(root: Path, spread: int = 24, largest: int = 6) -> list[str]:
    """A fixed set: the largest files and others spread evenly over the sorted tree."""
    found = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink()
    )
    by_size = sorted(found, key=lambda name: (root / name).stat().st_size, reverse=True)
    evenly = found[:: max(1, len(found) // spread)][:spread]
    return list(dict.fromkeys([*by_size[:largest], *evenly]))


def read_through(peer: Service, snapshot: Path, files: list[str]) -> Reads:
    """Read each file through the peer's mount: time to its first byte, then all of it."""
    mountpoint, reads, start = peer.mountpoints[0], Reads(), time.monotonic()
    for name in files:
        reads.files += 1
        try:
            opened = time.monotonic()
            with open(mountpoint / name, "rb") as f:
                data = f.read(1)
                reads.first_bytes.append(time.monotonic() - opened)
                data += f.read()
        except OSError as exc:
            reads.errors.append(f"{name}: {exc}")
            continue
        reads.nbytes += len(data)
        if data == (snapshot / name).read_bytes():
            reads.equal += 1
        else:
            reads.errors.append(f"{name}: differs from the source")
    reads.seconds = time.monotonic() - start
    return reads


def nydus_blobs(registry: Service, reference: str) -> dict[str, int]:
    """The blobs of the Nydus image (id: compressed size), from its manifest."""
    tag = reference.rpartition(":")[2]
    url = f"{registry.address}/v2/{REPO}/manifests/{tag}"
    layers = json.loads(http_get(url, headers={"Accept": OCI_MANIFEST}))["layers"]
    return {
        layer["digest"].removeprefix("sha256:"): int(layer["size"])
        for layer in layers
        if layer["mediaType"] == NYDUS_BLOB
    }


def wait_announced(peer: Service, blob_ids: list[str], timeout: float = 20.0) -> None:
    """Until the supernode has heard of every chunk the peer holds (so others can ask it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = sum(
            int.from_bytes(
                http_get(f"{peer.address}/api/v1/blobs/{blob}/bitmap"), "little"
            ).bit_count()
            for blob in blob_ids
        )
        if held and peer.metrics().get("dfdaemon_announced_chunks", 0) >= held:
            return
        time.sleep(0.1)
    raise DemoError(f"{peer.name} did not announce its chunks in {timeout:.0f} s")


def steps_table(steps: list[tuple[str, str]]) -> Table:
    table = Table(title="the image in a registry, the mesh started")
    table.add_column("step")
    table.add_column("result", overflow="fold")
    for key, value in steps:
        table.add_row(key, value)
    return table


def mesh_table(reads: dict[str, Reads], metrics: dict[str, dict[str, float]]) -> Table:
    """One row per dfdaemon, from its /metrics (compressed chunk bytes) and its reads."""
    table = Table(title="per peer: chunk bytes from the origin and from peers (/metrics)")
    for column in ("peer", "registry", "from origin", "from peers", "to peers", "first byte",
                   "read", "in", "equal"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("peer", "registry") else "right")
    for name, m in metrics.items():
        r = reads.get(name)
        table.add_row(
            name,
            "up" if name in ("seed", "peer1") else "stopped",
            human(int(m.get("dfdaemon_origin_bytes_total", 0))),
            human(int(m.get("dfdaemon_peer_bytes_in_total", 0))),
            human(int(m.get("dfdaemon_peer_bytes_out_total", 0))),
            f"{r.first_bytes[0] * 1000:.0f} ms" if r and r.first_bytes else "-",
            human(r.nbytes) if r else "-",
            f"{r.seconds:.2f} s" if r else "-",
            f"{r.equal}/{r.files}" if r else "-",
        )
    return table


def print_summary(
    reads: dict[str, Reads],
    metrics: dict[str, dict[str, float]],
    files: list[str],
) -> None:
    origin = sum(m.get("dfdaemon_origin_bytes_total", 0) for m in metrics.values())
    to_seed = metrics["seed"].get("dfdaemon_origin_bytes_total", 0)
    meshed = sum(m.get("dfdaemon_peer_bytes_in_total", 0) for m in metrics.values())
    read = sum(r.nbytes for r in reads.values())
    waits = [t for r in reads.values() for t in r.first_bytes] or [0.0]
    share = "all" if to_seed == origin else human(int(to_seed))
    console.print(
        f"{len(reads)} peers read the same {len(files)} files ({human(read)} in all) through "
        f"their mounts. The origin sent {human(int(origin))}, {share} of it to the seed "
        f"(which reads ahead); peers sent each other {human(int(meshed))}. "
        f"peer2 and peer3 read with the registry stopped. First byte of a file: median "
        f"{statistics.median(waits) * 1000:.1f} ms, slowest {max(waits) * 1000:.0f} ms."
    )


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


if __name__ == "__main__":
    sys.exit(main())
