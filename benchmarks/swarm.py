"""Peer swarm: N peers fetch one blob through the mesh, directly, and with BitTorrent.

Every host is in its own network namespace, all on one bridge that lives in a "hub"
namespace (nothing is added to the root namespace; addresses 10.99.0.0/24 exist only
inside the namespaces made here). Each host's link is a veth pair shaped with `tc tbf` on
both ends (so both directions): the origin at 100 Mbit/s, every peer (and the seed) at
400 Mbit/s; the supernode's link is not shaped.

    origin    10.99.0.1   docker-registry :5000 (mesh, direct); opentracker :6969 and
                          the seeding aria2c (aria2)
    supernode 10.99.0.2   `supernode serve` :8002
    seed      10.99.0.3   `dfdaemon --seed` (mesh only: Dragonfly's seed peer)
    peerI     10.99.0.1I  `dfdaemon --mount REF:MNT` / curl / aria2c

Modes (each timed from the moment every peer is told to fetch to the last peer's last byte):

- `mesh`: the blob is a Nydus image with one file (`nydus-image create`, pushed to the
  registry); each peer's dfdaemon mounts it (misses go cache -> mesh -> origin) and the
  benchmark reads the whole file through every mount at once, 8 threads a mount. dfget is
  not used: the FUSE read is the fetch.
- `direct`: every peer `curl`s the blob from the registry at once.
- `aria2`: `mktorrent` of the blob (1 MiB pieces), `opentracker` with the info hash
  whitelisted, the origin seeding with `aria2c`, every peer an `aria2c` that keeps seeding;
  completion comes from `--on-bt-download-complete` (aria2 keeps its control file while
  seeding).

Origin egress is the origin veth's transmitted bytes over the run (`ip -s link`), also
given as payload (less 66 header bytes a packet: Ethernet, IPv4, TCP with timestamps).
The floor is the blob sent once at 100 Mbit/s.

Tools it lacks (aria2, opentracker, mktorrent) are installed with apt-get when root. Every
process is stopped, every mount detached and every namespace deleted in `finally`.

    .venv/bin/python benchmarks/swarm.py [--peers 8] [--size-mb 128] [--mode all]
        [--runs 1] [--out-json F] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import metric_values, process_cpu, stop_process

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUBNET = "10.99.0"
ORIGIN_IP, SUPERNODE_IP, SEED_IP = f"{SUBNET}.1", f"{SUBNET}.2", f"{SUBNET}.3"
ORIGIN_MBIT, PEER_MBIT = 100, 400
REGISTRY_PORT, SUPERNODE_PORT, PEER_PORT, TRACKER_PORT = 5000, 8002, 65001, 6969
TOKEN, ADMIN_TOKEN = "swarm-token", "swarm-admin"
REPO = "bench/blob"
HEADER_BYTES = 66  # Ethernet 14 + IPv4 20 + TCP 32 (timestamps)
READ_THREADS = 8
READ_BLOCK = 1 << 20
MODES = ("mesh", "direct", "aria2")
TOOLS = {"aria2c": "aria2", "opentracker": "opentracker", "mktorrent": "mktorrent"}


# --- processes and namespaces ---------------------------------------------------------


def run(argv: list[str], timeout: float = 60.0) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def wait_for(what: str, check: Any, timeout: float = 60.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Host:
    name: str  # the host's role: origin, supernode, seed, peer0...
    ns: str  # its network namespace
    ip: str
    mbit: int | None  # link rate both ways; None: not shaped


@dataclass
class Lab:
    """Namespaces on one bridge, and every process started in them (closed in `close`)."""

    work: Path
    prefix: str = field(default_factory=lambda: f"nmsw{os.getpid() % 100000}")
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)  # of one run
    services: list[subprocess.Popen[bytes]] = field(default_factory=list)  # of the lab
    mounts: list[Path] = field(default_factory=list)
    made: list[str] = field(default_factory=list)
    blob_reference: str = ""  # the image peers mount (mesh)
    log_level: str = "warning"  # the daemons'

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def add_ns(self, ns: str) -> None:
        run(["ip", "netns", "add", ns])
        self.made.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def start(self) -> None:
        self.add_ns(self.hub)
        run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.hub, "link", "set", "br0", "up"])

    def add_host(self, name: str, ip: str, mbit: int | None) -> Host:
        host = Host(name, f"{self.prefix}-{name}", ip, mbit)
        self.add_ns(host.ns)
        port = f"v{len(self.hosts)}"
        run(["ip", "-n", self.hub, "link", "add", port, "type", "veth",
             "peer", "name", "eth0", "netns", host.ns])  # fmt: skip
        run(["ip", "-n", self.hub, "link", "set", port, "master", "br0", "up"])
        run(["ip", "-n", host.ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        run(["ip", "-n", host.ns, "link", "set", "eth0", "up"])
        if mbit is not None:
            shape(self.hub, port, mbit)  # towards the host: its download
            shape(host.ns, "eth0", mbit)  # from the host: its upload
        self.hosts[name] = host
        return host

    def argv(self, host: str, argv: list[str]) -> list[str]:
        """Run in the host's network namespace only (the mount namespace stays shared)."""
        return ["nsenter", f"--net=/run/netns/{self.hosts[host].ns}", *argv]

    def popen(
        self, host: str, argv: list[str], log: str, service: bool = False
    ) -> subprocess.Popen[bytes]:
        with open(self.work / log, "ab") as out:
            process = subprocess.Popen(
                self.argv(host, argv), stdout=out, stderr=subprocess.STDOUT, cwd=self.work
            )
        (self.services if service else self.processes).append(process)
        return process

    def get(self, host: str, url: str, timeout: float = 5.0) -> str | None:
        """GET a URL from inside a host's namespace; None when it fails."""
        argv = self.argv(host, ["curl", "-sf", "--max-time", str(timeout), url])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
        return done.stdout if done.returncode == 0 else None

    def listening(self, host: str, port: int) -> bool:
        out = run(self.argv(host, ["ss", "-Hltn", f"sport = :{port}"]))
        return bool(out.strip())

    def tx(self, host: str) -> tuple[int, int]:
        """Bytes and packets the host has sent on its link."""
        out = run(["ip", "-n", self.hosts[host].ns, "-s", "-j", "link", "show", "eth0"])
        stats = json.loads(out)[0]["stats64"]["tx"]
        return int(stats["bytes"]), int(stats["packets"])

    def stop_processes(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        self.processes.clear()
        for mount in self.mounts:
            if os.path.ismount(mount):
                subprocess.run(["fusermount3", "-uz", str(mount)], capture_output=True)
            if os.path.ismount(mount):
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        self.mounts.clear()

    def close(self) -> None:
        try:
            self.stop_processes()
            for process in self.services:
                stop_process(process)
        finally:
            for ns in reversed(self.made):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            self.made.clear()


def shape(ns: str, dev: str, mbit: int) -> None:
    burst = max(64, mbit * 1000 // 8 // 250 * 2)  # KiB: two jiffies at 250 Hz
    run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
         f"{mbit}mbit", "burst", f"{burst}kb", "latency", "50ms"])  # fmt: skip


# --- the blob and the origin ----------------------------------------------------------


@dataclass
class Blob:
    path: Path  # the Nydus blob (what direct and aria2 fetch)
    blob_id: str
    size: int
    file_size: int  # the one file in the image
    reference: str  # the image, as peers name it


def make_image(work: Path, size_mb: int) -> tuple[Path, Path, str]:
    """One file of random bytes as a Nydus image: (bootstrap, blob, blob id)."""
    src = work / "src"
    src.mkdir()
    with open(src / "data.bin", "wb") as out:
        for _ in range(size_mb):
            out.write(os.urandom(1 << 20))
    boot, blobs = work / "image.boot", work / "blobs"
    run([str(BIN / "nydus-image"), "create", "-B", str(boot), "-D", str(blobs), str(src)], 600)
    (blob_id,) = [p.name for p in blobs.iterdir()]
    shutil.rmtree(src)
    return boot, blobs / blob_id, blob_id


def push_image(registry: str, boot: Path, blob: Path) -> None:
    """Push the blob, bootstrap layer, config and manifest (run inside the origin)."""
    sys.path.insert(0, str(ROOT))
    from rafs._nydusimage import (
        ANNOTATION_BLOB,
        MEDIA_TYPE_BOOTSTRAP_LAYER,
        MEDIA_TYPE_NYDUS_BLOB,
        bootstrap_annotations,
        pack_bootstrap,
    )
    from rafs._oci import OCI_MANIFEST
    from rafs._registry import RegistryClient

    def descriptor(media: str, data: bytes, notes: dict[str, str]) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return {"mediaType": media, "digest": digest, "size": len(data), "annotations": notes}

    async def push() -> None:
        async with RegistryClient(registry, insecure=True) as client:
            data, packed = blob.read_bytes(), pack_bootstrap(boot.read_bytes())
            config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}'
            layers = [
                descriptor(MEDIA_TYPE_NYDUS_BLOB, data, {ANNOTATION_BLOB: "true"}),
                descriptor(MEDIA_TYPE_BOOTSTRAP_LAYER, packed,
                           bootstrap_annotations(5, [blob.name])),
            ]  # fmt: skip
            for payload in (data, packed, config):
                await client.push_blob(REPO, payload)
            cfg = descriptor("application/vnd.oci.image.config.v1+json", config, {})
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg,
                        "layers": layers}  # fmt: skip
            await client.put_manifest(REPO, "v1", json.dumps(manifest).encode(), OCI_MANIFEST)

    asyncio.run(push())


def start_origin(lab: Lab, size_mb: int) -> Blob:
    """The registry in the origin namespace, holding the image."""
    boot, blob_path, blob_id = make_image(lab.work, size_mb)
    root = lab.work / "registry"
    config = {"version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
              "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
              "http": {"addr": f"0.0.0.0:{REGISTRY_PORT}", "secret": "swarm"}}  # fmt: skip
    root.mkdir()
    (root / "config.yml").write_text(json.dumps(config))
    lab.popen(
        "origin", ["docker-registry", "serve", str(root / "config.yml")], "registry.log", True
    )
    local = f"http://127.0.0.1:{REGISTRY_PORT}/v2/"
    wait_for("the registry", lambda: lab.get("origin", local) is not None, 30)
    argv = [sys.executable, __file__, "--push", f"127.0.0.1:{REGISTRY_PORT}", str(boot),
            str(blob_path)]  # fmt: skip
    run(lab.argv("origin", argv), 600)
    file_size = size_mb << 20
    reference = f"{ORIGIN_IP}:{REGISTRY_PORT}/{REPO}:v1"
    return Blob(blob_path, blob_id, blob_path.stat().st_size, file_size, reference)


# --- one run of each mode -------------------------------------------------------------


@dataclass
class RunResult:
    last_peer_s: float
    peer_s: list[float]
    origin_tx_bytes: int
    origin_tx_packets: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, blob: Blob) -> dict[str, Any]:
        payload = self.origin_tx_bytes - HEADER_BYTES * self.origin_tx_packets
        return {
            "last_peer_s": round(self.last_peer_s, 3),
            "peer_s": [round(t, 3) for t in self.peer_s],
            "origin_egress_bytes": self.origin_tx_bytes,
            "origin_egress_payload_bytes": payload,
            "egress_ratio": round(self.origin_tx_bytes / blob.size, 4),
            "egress_ratio_payload": round(payload / blob.size, 4),
            **self.extra,
        }


def peer_names(n: int) -> list[str]:
    return [f"peer{i}" for i in range(n)]


def run_direct(lab: Lab, blob: Blob, n: int, timeout: float) -> RunResult:
    url = f"http://{ORIGIN_IP}:{REGISTRY_PORT}/v2/{REPO}/blobs/sha256:{blob.blob_id}"
    before = lab.tx("origin")
    start = time.monotonic()
    curls = {
        name: lab.popen(name, ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}\n",
                               "--max-time", str(int(timeout)), url], f"curl-{name}.log")
        for name in peer_names(n)
    }  # fmt: skip
    finished = wait_all(curls, start, timeout)
    after = lab.tx("origin")
    lab.stop_processes()
    return RunResult(max(finished), finished, after[0] - before[0], after[1] - before[1])


def wait_all(
    processes: dict[str, subprocess.Popen[bytes]], start: float, timeout: float
) -> list[float]:
    done: dict[str, float] = {}
    deadline = start + timeout
    while len(done) < len(processes) and time.monotonic() < deadline:
        for name, process in processes.items():
            if name not in done and process.poll() is not None:
                if process.returncode != 0:
                    raise RuntimeError(f"{name}: {process.args!r} exited {process.returncode}")
                done[name] = time.monotonic() - start
        time.sleep(0.02)
    if len(done) < len(processes):
        raise RuntimeError(f"only {len(done)} of {len(processes)} peers finished in {timeout}s")
    return [done[name] for name in processes]


def run_mesh(lab: Lab, blob: Blob, n: int, timeout: float, number: int) -> RunResult:
    work = lab.work / f"mesh-{number}"
    work.mkdir()
    before = lab.tx("origin")
    supernode = f"http://{SUPERNODE_IP}:{SUPERNODE_PORT}"
    lab.popen("supernode", [str(BIN / "supernode"), "--log-level", "WARNING", "serve",
              "--listen", f"{SUPERNODE_IP}:{SUPERNODE_PORT}", "--db",
              f"sqlite+aiosqlite:///{work}/supernode.db", "--token", TOKEN,
              "--admin-token", ADMIN_TOKEN], f"mesh-{number}-supernode.log")  # fmt: skip
    wait_for("the supernode", lambda: lab.get("supernode", supernode + "/healthz"), 30)
    daemons = {"seed": start_daemon(lab, work, "seed", supernode, None, number)}
    mounts = {}
    for name in peer_names(n):
        mounts[name] = work / f"mnt-{name}"
        daemons[name] = start_daemon(lab, work, name, supernode, mounts[name], number)
    for name in daemons:
        wait_ready(lab, name, mounts.get(name), daemons[name])
    start = time.monotonic()
    finished = read_mounts([mounts[name] / "data.bin" for name in peer_names(n)], start, timeout)
    after = lab.tx("origin")
    extra = {
        "metrics": {name: daemon_metrics(lab, name) for name in daemons},
        "daemon_cpu_s": {name: cpu_seconds(process.pid) for name, process in daemons.items()},
    }
    lab.stop_processes()
    return RunResult(max(finished), finished, after[0] - before[0], after[1] - before[1], extra)


def start_daemon(
    lab: Lab, work: Path, name: str, supernode: str, mount: Path | None, number: int
) -> subprocess.Popen[bytes]:
    ip = lab.hosts[name].ip
    argv = [str(BIN / "dfdaemon"), "--supernode", supernode, "--listen", f"{ip}:{PEER_PORT}",
            "--data-dir", str(work / name), "--token", TOKEN, "--peer-id", name,
            "--host-name", name, "--insecure", "--log-level", lab.log_level]  # fmt: skip
    if mount is None:
        argv.append("--seed")
    else:
        mount.mkdir()
        lab.mounts.append(mount)
        argv += ["--mount", f"{lab.blob_reference}:{mount}"]
    return lab.popen(name, argv, f"mesh-{number}-{name}.log")


def wait_ready(lab: Lab, name: str, mount: Path | None, process: subprocess.Popen[bytes]) -> None:
    url = f"http://{lab.hosts[name].ip}:{PEER_PORT}/metrics"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"dfdaemon {name} exited {process.returncode}")
        if mount is not None and not os.path.ismount(mount):
            return False
        text = lab.get(name, url)
        return text is not None and "dfdaemon_supernode_registered 1.0" in text

    wait_for(f"dfdaemon {name}", ready, 60, 0.2)


def daemon_metrics(lab: Lab, name: str) -> dict[str, float]:
    text = lab.get(name, f"http://{lab.hosts[name].ip}:{PEER_PORT}/metrics") or ""
    wanted = ("origin_bytes_total", "peer_bytes_in_total", "peer_bytes_out_total",
              "digest_mismatches_total", "parent_failures_total", "supernode_lost_total",
              "mesh_bypassed_chunks_total", "schedule_requests_total")  # fmt: skip
    return metric_values(text, "dfdaemon_", wanted)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (nsenter execs the daemon: same pid)."""
    try:
        return round(process_cpu(pid), 2)
    except OSError:
        return 0.0


def read_mounts(paths: list[Path], start: float, timeout: float) -> list[float]:
    """Read every file through its mount at once; seconds from `start` to each one's end."""
    size = paths[0].stat().st_size
    blocks = (size + READ_BLOCK - 1) // READ_BLOCK
    finished = [0.0] * len(paths)
    errors: list[BaseException] = []

    def read_range(path: Path, first: int, stop_at: int) -> int:
        got = 0
        fd = os.open(path, os.O_RDONLY)
        try:
            for block in range(first, stop_at):
                if time.monotonic() - start > timeout:
                    raise RuntimeError(f"reading {path} took over {timeout}s")
                got += len(os.pread(fd, READ_BLOCK, block * READ_BLOCK))
        finally:
            os.close(fd)
        return got

    def read_file(number: int) -> None:
        step = (blocks + READ_THREADS - 1) // READ_THREADS
        spans = [(k, min(k + step, blocks)) for k in range(0, blocks, step)]
        try:
            with ThreadPoolExecutor(len(spans)) as pool:
                got = sum(pool.map(lambda s: read_range(paths[number], *s), spans))
            if got != size:
                raise RuntimeError(f"read {got} of {size} bytes from {paths[number]}")
            finished[number] = time.monotonic() - start
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_file, args=(k,)) for k in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"mesh read failed: {errors[0]}")
    return finished


def run_aria2(lab: Lab, blob: Blob, n: int, timeout: float, number: int) -> RunResult:
    work = lab.work / f"aria2-{number}"
    seed_dir = work / "origin"
    seed_dir.mkdir(parents=True)
    os.link(blob.path, seed_dir / blob.blob_id)
    torrent, info_hash = make_torrent(work, seed_dir / blob.blob_id)
    start_tracker(lab, work, info_hash, number)
    common = ["aria2c", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
              "--seed-ratio=0.0", "--file-allocation=none", "--console-log-level=warn",
              "--summary-interval=0", "--listen-port=6881", "--bt-max-peers=0",
              "--bt-request-peer-speed-limit=100M", "--check-certificate=false"]  # fmt: skip
    before = lab.tx("origin")
    lab.popen("origin", [*common, "--bt-seed-unverified=true", "-d", str(seed_dir),
              str(torrent)], f"aria2-{number}-origin.log")  # fmt: skip
    time.sleep(1.0)  # the seeder announces first
    start_wall, start = time.time(), time.monotonic()
    done_files = {}
    for name in peer_names(n):
        peer_dir = work / name
        peer_dir.mkdir()
        done_files[name] = peer_dir / "done"
        hook = peer_dir / "hook.sh"
        hook.write_text(f"#!/bin/sh\ndate +%s.%N > {done_files[name]}.tmp && "
                        f"mv {done_files[name]}.tmp {done_files[name]}\n")  # fmt: skip
        hook.chmod(0o755)
        lab.popen(name, [*common, f"--on-bt-download-complete={hook}", "-d", str(peer_dir),
                  str(torrent)], f"aria2-{number}-{name}.log")  # fmt: skip
    wait_for("every aria2c peer", lambda: all(f.exists() for f in done_files.values()),
             timeout, 0.05)  # fmt: skip
    after = lab.tx("origin")
    finished = [float(f.read_text()) - start_wall for f in done_files.values()]
    lab.stop_processes()
    for name in peer_names(n):
        if (work / name / blob.blob_id).stat().st_size != blob.size:
            raise RuntimeError(f"aria2c {name} has a short file")
    del start
    return RunResult(max(finished), finished, after[0] - before[0], after[1] - before[1])


def make_torrent(work: Path, data: Path) -> tuple[Path, str]:
    torrent = work / "blob.torrent"
    announce = f"http://{ORIGIN_IP}:{TRACKER_PORT}/announce"
    run(["mktorrent", "-a", announce, "-l", "20", "-o", str(torrent), str(data)], 600)
    shown = run(["aria2c", "-S", str(torrent)])
    found = re.search(r"Info Hash:\s*([0-9a-f]{40})", shown)
    if found is None:
        raise RuntimeError(f"no info hash in `aria2c -S`: {shown[:300]}")
    return torrent, found.group(1)


def start_tracker(lab: Lab, work: Path, info_hash: str, number: int) -> None:
    """opentracker in the origin namespace, tracking only this info hash."""
    whitelist = work / "whitelist.txt"
    whitelist.write_text(info_hash + "\n")
    conf = work / "opentracker.conf"
    conf.write_text(f"listen.tcp_udp {ORIGIN_IP}:{TRACKER_PORT}\n"
                    f"access.whitelist {whitelist}\ntracker.rootdir /\n")  # fmt: skip
    for path in (work, whitelist, conf):
        path.chmod(0o755 if path.is_dir() else 0o644)
    lab.popen("origin", ["opentracker", "-f", str(conf)], f"aria2-{number}-tracker.log")
    wait_for("opentracker", lambda: lab.listening("origin", TRACKER_PORT), 20)


# --- the whole benchmark --------------------------------------------------------------


def ensure_tools(modes: list[str]) -> None:
    needed = ["ip", "tc", "nsenter", "curl", "docker-registry"]
    if "mesh" in modes:
        needed.append("fusermount3")
    if "aria2" in modes:
        needed += list(TOOLS)
    missing = [t for t in needed if shutil.which(t) is None]
    packages = [TOOLS[t] for t in missing if t in TOOLS]
    if packages and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env,
                       capture_output=True, timeout=600)  # fmt: skip
        missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"swarm: missing tools: {', '.join(missing)}")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build_lab(work: Path, n: int, shaped: bool) -> Lab:
    lab = Lab(work)
    lab.start()
    peer_rate, origin_rate = (PEER_MBIT, ORIGIN_MBIT) if shaped else (None, None)
    lab.add_host("origin", ORIGIN_IP, origin_rate)
    lab.add_host("supernode", SUPERNODE_IP, None)
    lab.add_host("seed", SEED_IP, peer_rate)
    for i, name in enumerate(peer_names(n)):
        lab.add_host(name, f"{SUBNET}.{10 + i}", peer_rate)
    return lab


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": runs,
        "median_last_peer_s": round(statistics.median(r["last_peer_s"] for r in runs), 3),
        "median_egress_ratio": round(statistics.median(r["egress_ratio"] for r in runs), 4),
        "median_egress_ratio_payload": round(
            statistics.median(r["egress_ratio_payload"] for r in runs), 4
        ),
    }


def benchmark(args: argparse.Namespace, modes: list[str]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="swarm-"))
    work.chmod(0o755)
    lab = build_lab(work, args.peers, not args.no_tc)
    report: dict[str, Any] = {"load_before": load_average(), "netns_prefix": lab.prefix}
    try:
        blob = start_origin(lab, args.size_mb)
        lab.blob_reference, lab.log_level = blob.reference, args.log_level
        results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for number in range(args.runs):
            for mode in modes:
                print(f"swarm: run {number + 1}/{args.runs} {mode} ...", file=sys.stderr)
                result = run_mode(lab, blob, mode, args, number)
                results[mode].append(result.as_dict(blob))
                print(f"swarm: {mode} {json.dumps(results[mode][-1])[:300]}", file=sys.stderr)
        report.update(
            blob_bytes=blob.size,
            floor_s=round(blob.size * 8 / (ORIGIN_MBIT * 1e6), 3),
            modes={mode: summarise(runs) for mode, runs in results.items()},
        )
    finally:
        lab.close()
        if args.keep_work:
            print(f"swarm: work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = load_average()
    return report


def run_mode(lab: Lab, blob: Blob, mode: str, args: argparse.Namespace, number: int) -> RunResult:
    try:
        if mode == "direct":
            return run_direct(lab, blob, args.peers, args.timeout)
        if mode == "mesh":
            return run_mesh(lab, blob, args.peers, args.timeout, number)
        return run_aria2(lab, blob, args.peers, args.timeout, number)
    finally:
        lab.stop_processes()


def targets(report: dict[str, Any]) -> dict[str, Any]:
    modes = report["modes"]
    found: dict[str, Any] = {}
    if "mesh" in modes:
        found["mesh_egress_at_most_1_05x"] = modes["mesh"]["median_egress_ratio_payload"] <= 1.05
    if "mesh" in modes and "aria2" in modes:
        mesh, aria2 = modes["mesh"]["median_last_peer_s"], modes["aria2"]["median_last_peer_s"]
        found["mesh_faster_than_aria2"] = mesh < aria2
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", type=int, default=8)
    p.add_argument("--size-mb", type=int, default=128, help="blob size in MiB")
    p.add_argument("--mode", choices=[*MODES, "all"], default="all")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take")
    p.add_argument("--no-tc", action="store_true", help="links not shaped")
    p.add_argument("--small", action="store_true", help="smoke: 3 peers, 8 MiB, 1 run")
    p.add_argument("--out-json", type=Path)
    p.add_argument("--keep-work", action="store_true", help="keep the work dir and its logs")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    p.add_argument("--push", nargs=3, metavar=("REGISTRY", "BOOT", "BLOB"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.small:
        args.peers, args.size_mb, args.runs = 3, 8, 1
        args.timeout = min(args.timeout, 120.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.push:
        push_image(args.push[0], Path(args.push[1]), Path(args.push[2]))
        return 0
    if os.geteuid() != 0:
        print("swarm: needs root (network namespaces, tc, FUSE)", file=sys.stderr)
        return 2
    modes = list(MODES) if args.mode == "all" else [args.mode]
    ensure_tools(modes)
    started = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "peers": args.peers,
        "size_mb": args.size_mb,
        "origin_mbit": ORIGIN_MBIT,
        "peer_mbit": PEER_MBIT,
        "shaped": not args.no_tc,
        "read_threads_per_mount": READ_THREADS,
    }
    with _signals_raise():
        report.update(benchmark(args, modes))
    report["targets"] = targets(report)
    text = json.dumps(report, indent=2)
    if args.out_json:
        args.out_json.write_text(text + "\n")
    print(text)
    return 0


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks clean up."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
