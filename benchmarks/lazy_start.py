"""Lazy start: a fresh `nydusd --image` mount against `skopeo copy` + `umoci unpack`.

An image of about 1 GB is built from real trees of this machine, laid out like a Python
application image, in three layers made with GNU tar and `umoci raw add-layer`:

    libs    /usr/lib/x86_64-linux-gnu                 (shared libraries)
    python  /usr/local (this Python's base prefix, without its site-packages)
    app     /usr/local/lib/python3.X/site-packages    (this virtualenv's packages)

It is pushed to a Distribution registry (`docker-registry`) on 127.0.0.1 and converted
with `nydusify convert`. Both ways of starting then fetch through one TCP proxy written
here that paces each direction of the link to 100 Mbit/s (a virtual-time token bucket
shared by every connection), so the registry sits behind a 100 Mbit/s link:

- OCI: `skopeo copy docker://PROXY/lazy:oci oci:DIR:lazy`, `umoci unpack`, then read
  the working set from the bundle's rootfs;
- Nydus: start `nydusd --image PROXY/lazy:nydus` with an empty cache dir, wait for the
  mount, read the working set through it (timed from starting nydusd to the last byte);
  and the same with the working set as nydusd's `--prefetch-files` list, reported beside;
  with `--table-prefetch`, also an image converted with the working set as its own prefetch
  list (`nydusify convert --prefetch-patterns`), which nydusd prefetches unasked.

The working set is what a real program opens at start: `strace -f -e trace=openat` of
this Python importing boto3, jinja2, yaml, sqlite3, ssl and asyncio and making a boto3
client, mapped onto image paths, topped up in a fixed scattered order (by the SHA-256 of
each path) to 6% of the image's bytes. It is recorded once into
`benchmarks/data/lazy_start_workset.txt`, so later runs read the same files
(`--record-workset` records it again).

Second part, on the same tree and local disk: `squashfuse` (and `squashfuse_ll`) of a
`mksquashfs -comp zstd` image against `nydusd --bootstrap --blob-dir` of a `nydus-image
create` image; after one full read of each mount (so all are warm), the sequential read
MB/s of every file (hardlinked names once) and a metadata walk (`os.scandir` + `os.lstat`
of every entry, what `find -ls` does).

Tools it lacks (strace, squashfuse, squashfs-tools) are installed with apt-get when run as
root. Every process it starts (registry, proxy, nydusd, squashfuse) is stopped and every
mount unmounted in `finally` blocks, also on Ctrl-C or SIGTERM; the work dir is removed.

    .venv/bin/python benchmarks/lazy_start.py [--runs 3] [--out-json F] [--small]
                                              [--table-prefetch]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BenchmarkError,
    children_cpu,
    machine,
    metric_values,
    process_cpu,
    report_main,
    stop_process,
)

MB = 1_000_000
FULL_BYTES = 1_000 * MB
SMALL_BYTES = 30 * MB
WORKSET_FRACTION = 0.06
LINK_MBIT = 100.0
WORKSET_FILE = Path(__file__).resolve().parent / "data" / "lazy_start_workset.txt"
PROGRAM = (
    "import asyncio, json, sqlite3, ssl; import boto3, jinja2, yaml; "
    "boto3.session.Session().client('s3', region_name='us-east-1')"
)
REGISTRY_BIN = "/usr/bin/docker-registry"
REPO = "lazy"
APT_PACKAGES = {
    "strace": "strace",
    "squashfuse": "squashfuse",
    "squashfuse_ll": "squashfuse",
    "mksquashfs": "squashfs-tools",
}
NEEDED = ("skopeo", "umoci", "tar", "fusermount3", "squashfuse", "squashfuse_ll", "mksquashfs")
BUF = 1 << 20


# --- running tools -------------------------------------------------------------------


def run(
    cmd: list[str], timeout: float, *, cwd: Path | None = None, stdin: str | None = None
) -> str:
    """Run a tool to completion; its stdout, or BenchmarkError with its stderr."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              errors="replace", input=stdin)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{shown(cmd)} timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchmarkError(f"{shown(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def shown(cmd: list[str]) -> str:
    return " ".join(cmd)


def venv_tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise BenchmarkError(f"{name} not found next to this Python or on PATH")
    return found


def unmount(path: Path) -> None:
    """Lazily unmount a FUSE mount if it is still there (fusermount3, else umount -l)."""
    if not os.path.ismount(path):
        return
    for cmd in (["fusermount3", "-uz", str(path)], ["umount", "-l", str(path)]):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return


def wait_mounted(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc.poll() is not None:
            raise BenchmarkError(f"{proc.args!r} exited {proc.returncode} before mounting")
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{path} was not mounted within {timeout:.0f} s")
        time.sleep(0.002)


def ensure_tools(record: bool) -> list[str]:
    """Install the Debian packages of missing tools (as root); notes on what was done."""
    wanted = [*NEEDED, "strace"] if record else list(NEEDED)
    missing = [t for t in wanted if shutil.which(t) is None]
    notes = []
    installable = sorted({APT_PACKAGES[t] for t in missing if t in APT_PACKAGES})
    if installable and os.geteuid() == 0:
        cmd = ["apt-get", "install", "-y", "-q", *installable]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(cmd, capture_output=True, env=env, timeout=600)
        notes.append(f"installed with apt-get: {' '.join(installable)}")
    still = [t for t in wanted if shutil.which(t) is None]
    if not Path(REGISTRY_BIN).exists():
        still.append(REGISTRY_BIN)
    if not os.path.exists("/dev/fuse"):
        still.append("/dev/fuse")
    if still:
        raise BenchmarkError(f"missing: {', '.join(still)}")
    return notes


# --- the tree ------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A real directory of this machine and where its files land in the image."""

    layer: str
    host: Path
    image: str  # image path of `host`, without the leading slash
    share: float  # fraction of the image's bytes it may take (the last one: the rest)
    exclude: tuple[str, ...] = ()  # image paths left to another layer

    def image_path(self, host_path: str) -> str | None:
        rel = os.path.relpath(host_path, self.host)
        if rel.startswith(".."):
            return None
        path = "/" + self.image if rel == "." else f"/{self.image}/{rel}"
        return None if any(_under(path, e) for e in self.exclude) else path

    def host_path(self, image_path: str) -> Path | None:
        if not _under(image_path, "/" + self.image) or any(
            _under(image_path, e) for e in self.exclude
        ):
            return None
        return self.host / os.path.relpath(image_path, "/" + self.image)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def sources() -> list[Source]:
    """Shared libraries, this Python's base install and this virtualenv's packages."""
    base = Path(os.path.realpath(sys.base_prefix))
    purelib = Path(os.path.realpath(sysconfig.get_paths()["purelib"]))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = f"/usr/local/lib/{version}/site-packages"
    return [
        Source("python", base, "usr/local", 0.30, exclude=(site,)),
        Source("app", purelib, site.lstrip("/"), 0.55),
        Source("libs", Path("/usr/lib/x86_64-linux-gnu"), "usr/lib/x86_64-linux-gnu", 1.0),
    ]


LAYER_ORDER = ("libs", "python", "app")  # base first, as an image would be built


@dataclass
class TreeStats:
    bytes: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    layers: dict[str, int] = field(default_factory=dict)  # bytes per layer


def build_tree(
    rootfs: Path, srcs: list[Source], target: int, required: set[str], stats: TreeStats
) -> None:
    """Copy each source in name order while it fits its share; files in `required` always."""
    rootfs.mkdir()
    links: dict[tuple[int, int], Path] = {}
    for n, src in enumerate(srcs):
        left = target - stats.bytes
        cap = left if n == len(srcs) - 1 else min(left, int(src.share * target))
        before = stats.bytes
        _copy_source(rootfs, src, cap, required, links, stats)
        stats.layers[src.layer] = stats.bytes - before


def _copy_source(
    rootfs: Path,
    src: Source,
    cap: int,
    required: set[str],
    links: dict[tuple[int, int], Path],
    stats: TreeStats,
) -> None:
    must = {p for p in required if src.host_path(p) is not None}
    reserved = sum(_size(src.host_path(p)) for p in must)
    budget = cap - reserved
    used = 0
    for path, st in _walk(src.host):
        image = src.image_path(str(path))
        if image is None:
            continue
        target = rootfs / image.lstrip("/")
        new = stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in links
        if new and image not in must:  # a further name of a copied file costs nothing
            if used + st.st_size > budget:
                continue
            used += st.st_size
        _copy_entry(path, st, target, links, stats)


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None and path.is_file() else 0
    except OSError:
        return 0


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    try:
        st = root.lstat()
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    yield root, st
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(Path(entry.path))
        else:
            yield Path(entry.path), st


def _copy_entry(
    path: Path,
    st: os.stat_result,
    target: Path,
    links: dict[tuple[int, int], Path],
    stats: TreeStats,
) -> None:
    if stat.S_ISDIR(st.st_mode):
        if os.access(path, os.R_OK | os.X_OK) and not target.exists():
            target.mkdir(parents=True)
            os.chmod(target, stat.S_IMODE(st.st_mode))
            stats.dirs += 1
        return
    if not target.parent.is_dir() or target.exists() or target.is_symlink():
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(path), target)
        stats.symlinks += 1
    elif stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK):
        key = (st.st_dev, st.st_ino)
        if key in links:
            os.link(links[key], target)  # a hardlink stays one
            return
        shutil.copy2(path, target)
        links[key] = target
        stats.files += 1
        stats.bytes += st.st_size


def regular_files(rootfs: Path, *, distinct: bool = False) -> list[tuple[str, int]]:
    """(image path, size) of every regular file in name order; `distinct`: one name a file."""
    found = []
    seen: set[int] = set()
    for path, st in _walk(rootfs):
        if stat.S_ISREG(st.st_mode) and not (distinct and st.st_ino in seen):
            seen.add(st.st_ino)
            found.append(("/" + str(path.relative_to(rootfs)), st.st_size))
    return found


# --- the working set -----------------------------------------------------------------


@dataclass
class Workset:
    opened: list[str]  # image paths the program opened, in first-open order
    topup: list[str] = field(default_factory=list)
    recorded: str = ""  # how and when `opened` was recorded

    @property
    def files(self) -> list[str]:
        return [*self.opened, *self.topup]


_OPENAT = re.compile(r'openat\([^,]+, "((?:[^"\\]|\\.)*)"')


def record_opened(srcs: list[Source], timeout: float) -> Workset:
    """Run the program under strace once; the regular files it opened, as image paths."""
    with tempfile.NamedTemporaryFile(prefix="lazy-strace-", suffix=".log") as log:
        cmd = ["strace", "-f", "-qq", "-e", "trace=openat", "-e", "status=successful"]
        cmd += ["-o", log.name, sys.executable, "-c", PROGRAM]
        run(cmd, timeout, cwd=Path("/"))
        lines = Path(log.name).read_text(errors="replace").splitlines()
    opened: list[str] = []
    for line in lines:
        match = _OPENAT.search(line)
        real = os.path.realpath(match.group(1)) if match else ""
        image = _image_of(real, srcs) if real and os.path.isfile(real) else None
        if image is not None and image not in opened:
            opened.append(image)
    when = datetime.date.today().isoformat()
    how = f"strace -f -e trace=openat python{sys.version_info.major}.{sys.version_info.minor}"
    return Workset(opened, recorded=f"{when}: {how} -c {PROGRAM!r}")


def _image_of(host_path: str, srcs: list[Source]) -> str | None:
    for src in srcs:
        image = src.image_path(host_path)
        if image is not None:
            return image
    return None


def load_workset(path: Path) -> Workset:
    ws, section = Workset([]), None
    for line in path.read_text().splitlines():
        if line.startswith("# recorded "):
            ws.recorded = line.removeprefix("# recorded ")
        elif line.startswith("# section: "):
            section = line.split()[2]
        elif line and not line.startswith("#"):
            (ws.opened if section == "opened" else ws.topup).append(line)
    return ws


def save_workset(path: Path, ws: Workset, sizes: dict[str, int]) -> None:
    def section(name: str, paths: list[str]) -> list[str]:
        total = sum(sizes.get(p, 0) for p in paths)
        return [f"# section: {name} ({len(paths)} files, {total} bytes)", *paths]

    lines = [
        "# Startup working set of benchmarks/lazy_start.py: image paths, one a line.",
        "# 'opened': regular files the program opened, in first-open order;",
        "# 'top-up': more files in SHA-256-of-path order, up to 6% of the image's bytes.",
        f"# recorded {ws.recorded}",
        *section("opened", ws.opened),
        *section("top-up", ws.topup),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def complete_workset(ws: Workset, sizes: dict[str, int], target: int) -> Workset:
    """Keep the files the tree has; top up in SHA-256-of-path order until `target` bytes."""
    opened = [p for p in ws.opened if p in sizes]
    chosen = set(opened)
    topup = [p for p in ws.topup if p in sizes and p not in chosen]
    chosen.update(topup)
    total = sum(sizes[p] for p in chosen)
    for path in sorted(sizes, key=lambda p: hashlib.sha256(p.encode()).digest()):
        if total >= target:
            break
        if path not in chosen and sizes[path] > 0:
            topup.append(path)
            chosen.add(path)
            total += sizes[path]
    return Workset(opened, topup, ws.recorded)


def read_files(root: Path, paths: list[str]) -> int:
    """Read the files whole, one after the other, as a starting program would."""
    total = 0
    buf = bytearray(BUF)
    for path in paths:
        with open(root / path.lstrip("/"), "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def digest_files(root: Path, paths: list[str]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update((root / path.lstrip("/")).read_bytes())
    return h.hexdigest()


# --- the registry and the 100 Mbit/s link --------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_registry(root: Path, timeout: float = 20.0) -> tuple[subprocess.Popen[bytes], str]:
    """`docker-registry` on 127.0.0.1 with storage under `root`; returns once /v2/ answers."""
    root.mkdir(parents=True)
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=log, stderr=log
        )
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=1).close()
            return proc, host
        except (OSError, urllib.error.URLError):
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                raise BenchmarkError(f"docker-registry did not start on {host}") from None
            time.sleep(0.05)


class Pacer:
    """One direction of the link: bytes pass no faster than `rate` bytes per second.

    Virtual time: each send books the next `n / rate` seconds after the last booking (or
    now, less a small burst allowance) and sleeps until its slot ends; connections share
    the link in the order they ask.
    """

    def __init__(self, rate: float, burst: int = 64 << 10) -> None:
        self.rate = rate
        self.burst = burst
        self.booked = 0.0
        self.bytes = 0

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.booked = max(self.booked, now - self.burst / self.rate) + n / self.rate
        self.bytes += n
        if self.booked > now:
            await asyncio.sleep(self.booked - now)


class LinkProxy:
    """A TCP proxy on 127.0.0.1 in front of `target`, paced both ways, in its own thread."""

    def __init__(self, target: str, rate: float) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.down = Pacer(rate)  # registry -> client
        self.up = Pacer(rate)  # client -> registry
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="link-proxy", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise BenchmarkError("the rate-limiting proxy did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _connection(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        try:
            await asyncio.gather(_pump(cr, uw, self.up, cw), _pump(ur, cw, self.down, uw))
        except asyncio.CancelledError:
            pass  # the proxy stops; ending as cancelled would make 3.11's streams log it
        finally:
            cw.close()
            uw.close()


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    pacer: Pacer,
    other: asyncio.StreamWriter,
) -> None:
    try:
        while data := await reader.read(64 << 10):
            await pacer.take(len(data))
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:  # a reset on one side drops the other too
        writer.close()
        other.close()


# --- the images ----------------------------------------------------------------------


def make_oci_image(rootfs: Path, layout: Path, srcs: list[Source], timeout: float) -> None:
    """One layer per source (GNU tar, `umoci raw add-layer`), base layer first.

    (`umoci insert` is not used: umoci 0.4.7 writes its layers cut short.)"""
    image = f"{layout}:{REPO}"
    run(["umoci", "init", "--layout", str(layout)], timeout)
    run(["umoci", "new", "--image", image], timeout)
    by_name = {s.layer: s for s in srcs}
    for name in LAYER_ORDER:
        src = by_name[name]
        tar = layout.parent / f"{name}.tar"
        cmd = ["tar", "-C", str(rootfs), "--sort=name", "--numeric-owner", "-cf", str(tar)]
        cmd += [f"--exclude=./{e.lstrip('/')}" for e in src.exclude]
        parents = [f"./{p}" for p in reversed(Path(src.image).parents) if str(p) != "."]
        run([*cmd, "--no-recursion", *parents, "--recursion", f"./{src.image}"], timeout)
        run(["umoci", "raw", "add-layer", "--image", image, str(tar)], timeout)
        tar.unlink()
    run(["umoci", "config", "--image", image, "--os", "linux", "--architecture", "amd64"],
        timeout)  # fmt: skip


def layer_sizes(layout: Path) -> list[int]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return [int(layer["size"]) for layer in manifest["layers"]]


def skopeo(src: str, dest: str) -> list[str]:
    return ["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
            "--dest-tls-verify=false", src, dest]  # fmt: skip


# --- the lazy-start runs -------------------------------------------------------------


@dataclass
class StartRun:
    total_s: float
    steps: dict[str, float]  # seconds per step, cumulative from the start
    link_bytes: int  # bytes the registry sent through the paced link
    read_bytes: int
    extra: dict[str, float] = field(default_factory=dict)


def oci_run(proxy: LinkProxy, work: Path, files: list[str], timeout: float) -> StartRun:
    layout, bundle = work / "pulled", work / "bundle"
    sent, cpu0 = proxy.down.bytes, children_cpu()
    t0 = time.perf_counter()
    try:
        run(skopeo(f"docker://{proxy.address}/{REPO}:oci", f"oci:{layout}:{REPO}"), timeout)
        pulled = time.perf_counter() - t0
        run(["umoci", "unpack", "--image", f"{layout}:{REPO}", str(bundle)], timeout)
        unpacked = time.perf_counter() - t0
        n = read_files(bundle / "rootfs", files)
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(layout, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
    steps = {"skopeo_copy": pulled, "umoci_unpack": unpacked, "read": total}
    extra = {"cpu_s": round(children_cpu() - cpu0, 2)}  # skopeo and umoci
    return StartRun(total, steps, proxy.down.bytes - sent, n, extra)


def nydusify_cmd(host: str, tag: str, work: Path, summary: Path) -> list[str]:
    return [venv_tool("nydusify"), "convert", "--source", f"{host}/{REPO}:oci", "--target",
            f"{host}/{REPO}:{tag}", "--work-dir", str(work / "nydusify"), "--output-json",
            str(summary)]  # fmt: skip


def nydusd_image_cmd(
    ref: str, mnt: Path, cache: Path, sock: Path, prefetch: Path | None = None
) -> list[str]:
    cmd = [venv_tool("nydusd"), "--image", ref, "--mountpoint", str(mnt), "--cache-dir",
           str(cache), "--insecure", "--apisock", str(sock), "--log-level", "warning"]  # fmt: skip
    return cmd if prefetch is None else [*cmd, "--prefetch-files", str(prefetch)]


def nydus_run(
    proxy: LinkProxy,
    work: Path,
    files: list[str],
    timeout: float,
    *,
    check: str | None = None,
    prefetch: Path | None = None,
    tag: str = "nydus",
) -> StartRun:
    """Start nydusd on an empty cache, read the set through the mount; then stop it."""
    mnt, cache, sock = work / "mnt-lazy", work / "cache-lazy", work / "nydusd.sock"
    mnt.mkdir()
    sent = proxy.down.bytes
    with open(work / "nydusd-lazy.log", "ab") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            nydusd_image_cmd(f"{proxy.address}/{REPO}:{tag}", mnt, cache, sock, prefetch),
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            wait_mounted(mnt, proc, timeout)
            mounted = time.perf_counter() - t0
            n = read_files(mnt, files)
            total = time.perf_counter() - t0
            extra = {**scrape_metrics(sock), "cpu_s": round(process_cpu(proc.pid), 2)}
            if check is not None and digest_files(mnt, files) != check:
                raise BenchmarkError("the working set read through nydusd differs from the tree")
        finally:
            stop_process(proc)
            unmount(mnt)
            shutil.rmtree(cache, ignore_errors=True)
            with contextlib.suppress(OSError):
                mnt.rmdir()
    steps = {"mounted": mounted, "read": total}
    return StartRun(total, steps, proxy.down.bytes - sent, n, extra)


def scrape_metrics(sock: Path) -> dict[str, float]:
    """A few counters from nydusd's API socket (plain HTTP/1.0 over the unix socket)."""
    wanted = ("origin_requests_total", "origin_bytes_total", "reads_total",
              "chunks_fetched_total", "memo_hits_total")  # fmt: skip
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(b"GET /api/v1/metrics HTTP/1.0\r\nHost: nydusd\r\n\r\n")
        body = b"".join(iter(lambda: s.recv(65536), b"")).decode(errors="replace")
    return metric_values(body, "nydusd_", wanted)


def summarize(runs: list[StartRun]) -> dict[str, Any]:
    steps = {k: round(statistics.median(r.steps[k] for r in runs), 3) for k in runs[0].steps}
    extra = {k: statistics.median(r.extra[k] for r in runs) for k in runs[0].extra}
    return {
        "median_s": round(statistics.median(r.total_s for r in runs), 3),
        "runs_s": [round(r.total_s, 3) for r in runs],
        "median_steps_s": steps,
        "link_bytes": int(statistics.median(r.link_bytes for r in runs)),
        "read_bytes": runs[0].read_bytes,
        "metrics": extra,
    }


# --- squashfuse against nydusd on local disk -----------------------------------------


def read_all(root: Path, files: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = read_files(root, files)
    return time.perf_counter() - t0, n


def walk(root: Path) -> tuple[float, int]:
    """`find -ls`: list every directory, lstat every entry; seconds and entries seen."""
    t0 = time.perf_counter()
    seen = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = os.lstat(entry.path)
                seen += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return time.perf_counter() - t0, seen


@contextlib.contextmanager
def mounted(cmd: list[str], mnt: Path, log: Path, timeout: float) -> Iterator[Path]:
    mnt.mkdir()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out)
    try:
        wait_mounted(mnt, proc, timeout)
        yield mnt
    finally:
        unmount(mnt)
        stop_process(proc)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def local_mounts(rootfs: Path, work: Path, timeout: float) -> dict[str, list[str]]:
    """Build both local images of the tree; the command that mounts each."""
    sqfs, boot, blobs = work / "tree.sqfs", work / "local.boot", work / "local-blobs"
    run(["mksquashfs", str(rootfs), str(sqfs), "-comp", "zstd", "-noappend", "-quiet",
         "-no-progress"], timeout)  # fmt: skip
    run([venv_tool("nydus-image"), "create", "--bootstrap", str(boot), "--blob-dir",
         str(blobs), str(rootfs)], timeout)  # fmt: skip
    return {
        "nydusd": [venv_tool("nydusd"), "--bootstrap", str(boot), "--blob-dir", str(blobs),
                   "--log-level", "warning", "--mountpoint"],
        "squashfuse": ["squashfuse", "-f", str(sqfs)],
        "squashfuse_ll": ["squashfuse_ll", "-f", str(sqfs)],
    }  # fmt: skip


def compare_local(
    rootfs: Path, work: Path, files: list[str], runs: int, timeout: float
) -> dict[str, Any]:
    """Mount both; cold walk, one full read (warming), then `runs` warm reads and walks."""
    cmds = local_mounts(rootfs, work, timeout)
    found: dict[str, dict[str, list[float]]] = {n: {} for n in cmds}
    total = sum_bytes = 0
    with contextlib.ExitStack() as stack:
        mnts = {
            name: stack.enter_context(
                mounted([*cmd, str(work / f"mnt-{name}")], work / f"mnt-{name}",
                        work / f"{name}.log", timeout)
            )
            for name, cmd in cmds.items()
        }  # fmt: skip
        for name, mnt in mnts.items():
            walk_s, total = walk(mnt)
            read_s, sum_bytes = read_all(mnt, files)
            found[name] = {"walk_cold_s": [walk_s], "read_first_s": [read_s]}
        for _ in range(runs):
            for name, mnt in mnts.items():
                found[name].setdefault("read_warm_s", []).append(read_all(mnt, files)[0])
                found[name].setdefault("walk_warm_s", []).append(walk(mnt)[0])
    return {
        "entries": total,
        "files": len(files),
        "bytes": sum_bytes,
        "image_bytes": {
            "squashfs": (work / "tree.sqfs").stat().st_size,
            "nydusd": _dir_bytes(work / "local-blobs") + (work / "local.boot").stat().st_size,
        },
        "mounts": {name: _local_figures(f, sum_bytes) for name, f in found.items()},
        "commands": {name: shown([*cmd, "MNT"]) for name, cmd in cmds.items()},
    }


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _local_figures(found: dict[str, list[float]], nbytes: int) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in found.items()}
    return {
        "read_first_mb_s": round(nbytes / MB / med["read_first_s"], 1),
        "read_warm_mb_s": round(nbytes / MB / med["read_warm_s"], 1),
        "walk_cold_s": round(med["walk_cold_s"], 3),
        "walk_warm_s": round(med["walk_warm_s"], 3),
        "read_warm_runs_s": [round(v, 3) for v in found["read_warm_s"]],
        "walk_warm_runs_s": [round(v, 3) for v in found["walk_warm_s"]],
    }


# --- putting it together -------------------------------------------------------------


def prepare(args: argparse.Namespace, work: Path, report: dict[str, Any]) -> Workset:
    """The tree, and the working set on it (recorded or loaded, then completed)."""
    srcs = sources()
    target = SMALL_BYTES if args.small else FULL_BYTES
    ws = Workset([])
    if not args.small:
        if args.record_workset or not args.workset.exists():
            ws = record_opened(srcs, args.timeout)
        else:
            ws = load_workset(args.workset)
    stats = TreeStats()
    build_tree(work / "rootfs", srcs, target, set(ws.opened), stats)
    sizes = dict(regular_files(work / "rootfs"))
    ws = complete_workset(ws, sizes, int(WORKSET_FRACTION * stats.bytes))
    if not args.small and (args.record_workset or not args.workset.exists()):
        save_workset(args.workset, ws, sizes)
    ws_bytes = sum(sizes[p] for p in ws.files)
    report["tree"] = {**asdict(stats), "sources": {s.layer: str(s.host) for s in srcs}}
    report["workset"] = {
        "files": len(ws.files),
        "bytes": ws_bytes,
        "fraction": round(ws_bytes / stats.bytes, 4),
        "opened_files": len(ws.opened),
        "opened_bytes": sum(sizes[p] for p in ws.opened),
        "topup_files": len(ws.topup),
        "recorded": ws.recorded or "(small mode: top-up only)",
        "list": str(args.workset) if not args.small else "(generated)",
    }
    return ws


def lazy_start(args: argparse.Namespace, work: Path, ws: Workset) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        return _lazy_start(args, work, ws, stack)


def _lazy_start(
    args: argparse.Namespace, work: Path, ws: Workset, stack: contextlib.ExitStack
) -> dict[str, Any]:
    registry, host = start_registry(work / "registry")
    stack.callback(stop_process, registry)
    layout = work / "oci"
    make_oci_image(work / "rootfs", layout, sources(), args.timeout)
    run(skopeo(f"oci:{layout}:{REPO}", f"docker://{host}/{REPO}:oci"), args.timeout)
    convert = nydusify_cmd(host, "nydus", work, work / "convert.json")
    run(convert, args.timeout)
    table = [*nydusify_cmd(host, "nydus-table", work, work / "convert-table.json"),
             "--prefetch-patterns"]  # fmt: skip
    if args.table_prefetch:  # the layers come from the conversion cache: only a new merge
        run(table, args.timeout, stdin="\n".join(ws.files) + "\n")
    shutil.rmtree(work / "nydusify", ignore_errors=True)
    proxy = LinkProxy(host, args.link_mbit * 1e6 / 8)
    proxy.start()
    stack.callback(proxy.stop)
    check = digest_files(work / "rootfs", ws.files)
    hints = work / "prefetch.list"
    hints.write_text("\n".join(ws.files) + "\n")
    oci: list[StartRun] = []
    nydus: list[StartRun] = []
    hinted: list[StartRun] = []
    tabled: list[StartRun] = []
    for n in range(args.runs):  # interleaved: a noisy neighbour hits all of them
        oci.append(oci_run(proxy, work, ws.files, args.timeout))
        first = check if n == 0 else None
        nydus.append(nydus_run(proxy, work, ws.files, args.timeout, check=first))
        hinted.append(nydus_run(proxy, work, ws.files, args.timeout, prefetch=hints))
        if args.table_prefetch:
            tabled.append(nydus_run(proxy, work, ws.files, args.timeout, check=first,
                                    tag="nydus-table"))  # fmt: skip
        print(f"  run {n + 1}/{args.runs}: skopeo+umoci {oci[-1].total_s:7.2f} s, nydusd "
              f"{nydus[-1].total_s:6.2f} s, with the prefetch list {hinted[-1].total_s:6.2f} s"
              + (f", with it in the image {tabled[-1].total_s:6.2f} s" if tabled else ""),
              file=sys.stderr)  # fmt: skip
    converted = json.loads((work / "convert.json").read_text())
    ours, theirs, ours_hinted = summarize(nydus), summarize(oci), summarize(hinted)
    found = {
        "link_mbit": args.link_mbit,
        "oci_layer_bytes": layer_sizes(layout),
        "nydus_pushed_bytes": converted.get("bytes_pushed"),
        "oci": theirs,
        "nydus": ours,
        "nydus_prefetch": ours_hinted,
        "speedup": round(theirs["median_s"] / ours["median_s"], 2),
        "speedup_prefetch": round(theirs["median_s"] / ours_hinted["median_s"], 2),
        "commands": {
            "oci": [shown(skopeo(f"docker://PROXY/{REPO}:oci", f"oci:DIR:{REPO}")),
                    f"umoci unpack --image DIR:{REPO} BUNDLE", "read the set from BUNDLE/rootfs"],
            "nydus": [shown(nydusd_image_cmd(f"PROXY/{REPO}:nydus", Path("MNT"), Path("CACHE"),
                                             Path("SOCK"))), "read the set from MNT"],
            "nydus_prefetch": [shown(nydusd_image_cmd(f"PROXY/{REPO}:nydus", Path("MNT"),
                                                      Path("CACHE"), Path("SOCK"), Path("LIST"))),
                               "read the set from MNT (LIST: the working set)"],
            "convert": shown(convert),
        },
    }  # fmt: skip
    if tabled:
        found |= _table_figures(theirs, summarize(tabled), table)
    return found


def _table_figures(
    theirs: dict[str, Any], tabled: dict[str, Any], convert: list[str]
) -> dict[str, Any]:
    """The `--table-prefetch` runs: the working set in the image's own prefetch table."""
    cmd = nydusd_image_cmd(f"PROXY/{REPO}:nydus-table", Path("MNT"), Path("CACHE"), Path("SOCK"))
    return {
        "nydus_table": tabled,
        "speedup_table": round(theirs["median_s"] / tabled["median_s"], 2),
        "table_commands": {
            "convert": shown(convert) + " < LIST (LIST: the working set)",
            "nydus_table": [shown(cmd), "read the set from MNT"],
        },
    }


def ratios(lazy: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    mounts = local["mounts"]
    ours, sq, ll = mounts["nydusd"], mounts["squashfuse"], mounts["squashfuse_ll"]
    read = round(ours["read_warm_mb_s"] / sq["read_warm_mb_s"], 2)
    walk_ratio = round(sq["walk_warm_s"] / ours["walk_warm_s"], 2)  # >1: ours is faster
    return {
        "lazy_start_speedup": lazy["speedup"],
        "lazy_start_speedup_prefetch": lazy["speedup_prefetch"],
        "warm_read_vs_squashfuse": read,
        "walk_speed_vs_squashfuse": walk_ratio,
        "warm_read_vs_squashfuse_ll": round(ours["read_warm_mb_s"] / ll["read_warm_mb_s"], 2),
        "walk_speed_vs_squashfuse_ll": round(ll["walk_warm_s"] / ours["walk_warm_s"], 2),
        "targets_met": {
            "lazy_start_10x": lazy["speedup"] >= 10,
            "warm_read_1x": read >= 1.0,
            "walk_0.5x": walk_ratio >= 0.5,
        },
    }


def measure(args: argparse.Namespace, work: Path, report: dict[str, Any]) -> None:
    ws = prepare(args, work, report)
    print(f"tree {report['tree']['bytes'] / MB:.0f} MB, working set "
          f"{report['workset']['bytes'] / MB:.1f} MB", file=sys.stderr)  # fmt: skip
    report["lazy_start"] = lazy_start(args, work, ws)
    files = [p for p, _ in regular_files(work / "rootfs", distinct=True)]  # hardlinks once
    report["local"] = compare_local(work / "rootfs", work, files, args.runs, args.timeout)
    report["ratios"] = ratios(report["lazy_start"], report["local"])


def print_report(report: dict[str, Any]) -> None:
    tree, ws, lazy, local = (report[k] for k in ("tree", "workset", "lazy_start", "local"))
    print(
        f"tree: {tree['bytes'] / MB:.1f} MB in {tree['files']} files, layers "
        f"{', '.join(f'{k} {v / MB:.0f} MB' for k, v in tree['layers'].items())}"
    )
    print(
        f"working set: {ws['files']} files, {ws['bytes'] / MB:.1f} MB "
        f"({ws['fraction']:.1%}); {ws['opened_files']} opened by the program"
    )
    print(f"lazy start over {lazy['link_mbit']:g} Mbit/s (median of {report['runs']}):")
    for name in ("oci", "nydus", "nydus_prefetch"):
        r = lazy[name]
        print(
            f"  {name:<14} {r['median_s']:8.2f} s  steps {r['median_steps_s']}  "
            f"link {r['link_bytes'] / MB:.1f} MB  cpu {r['metrics']['cpu_s']:.2f} s"
        )
    print(f"  speedup: {lazy['speedup']}x (with the prefetch list {lazy['speedup_prefetch']}x)")
    if "nydus_table" in lazy:
        r = lazy["nydus_table"]
        print(f"  with the list in the image's prefetch table: {r['median_s']:.2f} s "
              f"(runs {r['runs_s']}), link {r['link_bytes'] / MB:.1f} MB, "
              f"speedup {lazy['speedup_table']}x")  # fmt: skip
    print(f"local, same tree ({local['bytes'] / MB:.0f} MB, {local['entries']} entries):")
    for name, m in local["mounts"].items():
        print(
            f"  {name:<13} read first {m['read_first_mb_s']:8.1f} MB/s  warm "
            f"{m['read_warm_mb_s']:8.1f} MB/s  walk cold {m['walk_cold_s']:.3f} s  "
            f"warm {m['walk_warm_s']:.3f} s"
        )
    for key, value in report["ratios"].items():
        print(f"{key}: {value}")  # fmt: skip


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"argv": sys.argv, "machine": machine(), "runs": args.runs}
    recording = not args.small and (args.record_workset or not args.workset.exists())
    report["setup_notes"] = ensure_tools(recording)
    work = Path(tempfile.mkdtemp(prefix="nydus-lazy-", dir=args.tmp))
    try:
        measure(args, work, report)
    finally:
        for mnt in work.glob("mnt-*"):
            unmount(mnt)
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timed runs of each (median reported)")
    p.add_argument("--out-json", type=Path)
    p.add_argument("--small", action="store_true", help="smoke run: ~30 MB tree, no strace")
    p.add_argument("--workset", type=Path, default=WORKSET_FILE, help="working set list")
    p.add_argument("--record-workset", action="store_true", help="record it again (strace)")
    p.add_argument("--link-mbit", type=float, default=LINK_MBIT, help="registry link rate")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per tool run")
    p.add_argument("--tmp", type=Path, help="where the work dir goes (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (debugging)")
    p.add_argument(
        "--table-prefetch",
        action="store_true",
        help="also time an image whose own prefetch table is the working set",
    )
    args = p.parse_args(argv)
    if args.runs < 1 or args.timeout <= 0 or args.link_mbit <= 0:
        p.error("--runs, --timeout and --link-mbit must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return report_main(parse_args(argv), run_benchmark, print_report)


if __name__ == "__main__":
    sys.exit(main())
