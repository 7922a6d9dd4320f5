"""Real processes on loopback for the mesh tests: a supernode, dfdaemon peers and seeds,
a Nydus image pushed to a real registry. Everything started here is stopped in teardown
(SIGTERM, then SIGKILL) and every mountpoint is detached with `fusermount3 -uz`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from rafs._nydusimage import (
    ANNOTATION_BLOB,
    MEDIA_TYPE_BOOTSTRAP_LAYER,
    MEDIA_TYPE_NYDUS_BLOB,
    bootstrap_annotations,
    pack_bootstrap,
)
from rafs._oci import OCI_MANIFEST
from rafs._registry import RegistryClient
from tests.fixtures.registry import RegistryServer

BIN = Path(sys.executable).parent
TOKEN = "mesh-secret"
ADMIN_TOKEN = "mesh-admin"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: object, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Poll `check()` until it is truthy, or fail naming `what`."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
        return data


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


# --- the supernode ---------------------------------------------------------------------


@dataclass
class Supernode:
    url: str
    db: Path
    log: Path
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        try:
            http_get(self.url + "/healthz", timeout=1)
            return True
        except OSError:
            return False

    def get(self, path: str, admin: bool = False) -> object:
        token = ADMIN_TOKEN if admin else TOKEN
        return json.loads(http_get(self.url + path, {"Authorization": f"Bearer {token}"}))


def start_supernode(work: Path, port: int | None = None) -> Supernode:
    work.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    db, log = work / "supernode.db", work / "supernode.log"
    argv = [str(BIN / "supernode"), "--log-level", "INFO", "serve", "--listen",
            f"127.0.0.1:{port}", "--db", f"sqlite+aiosqlite:///{db}", "--token", TOKEN,
            "--admin-token", ADMIN_TOKEN]  # fmt: skip
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    node = Supernode(f"http://127.0.0.1:{port}", db, log, process)
    wait_for("the supernode", lambda: process.poll() is not None or node.alive())
    if process.poll() is not None:
        raise AssertionError(f"supernode exited: {log.read_text()}")
    return node


# --- peers ---------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    url: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]
    mountpoints: list[Path] = field(default_factory=list)

    @property
    def mountpoint(self) -> Path | None:
        return self.mountpoints[0] if self.mountpoints else None

    def metrics(self) -> dict[str, float]:
        """Every sample of the peer's /metrics, by name (labels folded into the name)."""
        text = http_get(self.url + "/metrics").decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return found

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def registered(self) -> bool:
        try:
            return self.metric("dfdaemon_supernode_registered") == 1.0
        except OSError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def held(self, blob_ids: list[str]) -> int:
        """Chunks of these blobs the peer's cache holds (from its bitmap endpoint)."""
        total = 0
        for blob_id in blob_ids:
            bitmap = http_get(f"{self.url}/api/v1/blobs/{blob_id}/bitmap")
            total += int.from_bytes(bitmap, "little").bit_count()
        return total

    def wait_announced(self, blob_ids: list[str], timeout: float = 10.0) -> int:
        """Wait until every chunk the cache holds was announced; how many that is."""
        found: list[int] = []

        def settled() -> bool:
            held = self.held(blob_ids)
            found[:] = [held]
            return held > 0 and self.metric("dfdaemon_announced_chunks") >= held

        wait_for(f"peer {self.name} to announce its chunks", settled, timeout)
        return found[0]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        code = stop_process(self.process, sig)
        for path in [*self.mountpoints, self.data_dir / "fuse-root"]:
            if os.path.ismount(path):
                subprocess.run(["fusermount3", "-uz", str(path)], check=False, capture_output=True)
            if os.path.ismount(path):
                subprocess.run(["umount", "-l", str(path)], check=False)
        return code


@dataclass
class Cluster:
    """The processes of one test; `close` stops them all."""

    base: Path
    supernode: Supernode | None = None
    peers: list[Peer] = field(default_factory=list)

    def start_supernode(self, port: int | None = None) -> Supernode:
        self.supernode = start_supernode(self.base / "supernode", port)
        return self.supernode

    def start_peer(
        self,
        name: str,
        *args: str,
        mount: str | None = None,
        mounts: tuple[str, ...] = (),
        wait: bool = True,
    ) -> Peer:
        assert self.supernode is not None
        port = free_port()
        data_dir = self.base / name
        data_dir.mkdir(parents=True, exist_ok=True)
        log = self.base / f"{name}.log"
        argv = [str(BIN / "dfdaemon"), "--supernode", self.supernode.url, "--listen",
                f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--token", TOKEN,
                "--peer-id", name, "--host-name", f"host-{name}", *args]  # fmt: skip
        mountpoints = []
        for n, reference in enumerate((mount,) if mount else mounts):
            mountpoints.append(self.base / (f"mnt-{name}" + ("" if n == 0 else f"-{n}")))
            mountpoints[-1].mkdir(exist_ok=True)
            argv += ["--mount", f"{reference}:{mountpoints[-1]}"]
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        peer = Peer(name, f"http://127.0.0.1:{port}", data_dir, log, process, mountpoints)
        self.peers.append(peer)
        if wait:
            self.wait_ready(peer)
        return peer

    def wait_ready(self, peer: Peer, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if peer.process.poll() is not None:
                raise AssertionError(f"{peer.name} exited: {peer.log_text()}")
            mounted = all(os.path.ismount(path) for path in peer.mountpoints)
            return mounted and peer.registered()

        wait_for(f"peer {peer.name} to register (and mount)", ready, timeout)

    def close(self) -> None:
        for peer in self.peers:
            peer.stop()
        if self.supernode is not None:
            stop_process(self.supernode.process)


# --- a Nydus image in a registry -----------------------------------------------------


@dataclass
class Image:
    reference: str
    files: dict[str, bytes]
    blob_ids: list[str]
    bootstrap: Path
    blob_dir: Path


def build_and_push(
    registry: RegistryServer, work: Path, files: dict[str, bytes], repo: str = "mesh/app"
) -> Image:
    """`nydus-image create` over the files, then blobs, bootstrap layer, config and a
    manifest pushed as a Nydus image (synchronously, with a private event loop)."""
    import asyncio

    src = work / "src"
    src.mkdir(parents=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    boot, blobs = work / "image.boot", work / "blobs"
    create = [str(BIN / "nydus-image"), "create", "-B", str(boot), "-D", str(blobs)]
    subprocess.run([*create, "--chunk-size", "0x40000", str(src)], check=True, capture_output=True)
    blob_ids = sorted(p.name for p in blobs.iterdir())
    asyncio.run(_push(registry, repo, boot.read_bytes(), blobs, blob_ids))
    return Image(registry.ref(repo, "v1"), files, blob_ids, boot, blobs)


async def _push(
    registry: RegistryServer, repo: str, boot: bytes, blobs: Path, blob_ids: list[str]
) -> None:
    async with registry.client() as client:
        layers = []
        for blob_id in blob_ids:
            data = (blobs / blob_id).read_bytes()
            await client.push_blob(repo, data)
            marked = {ANNOTATION_BLOB: "true"}
            layers.append(_descriptor(MEDIA_TYPE_NYDUS_BLOB, f"sha256:{blob_id}", data, marked))
        packed = pack_bootstrap(boot)
        digest = await _push_bytes(client, repo, packed)
        annotations = bootstrap_annotations(5, blob_ids)
        layers.append(_descriptor(MEDIA_TYPE_BOOTSTRAP_LAYER, digest, packed, annotations))
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()  # fmt: skip
        config_digest = await _push_bytes(client, repo, config)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                               "size": len(config)},
                    "layers": layers}  # fmt: skip
        await client.put_manifest(repo, "v1", json.dumps(manifest).encode(), OCI_MANIFEST)


def _descriptor(
    media_type: str, digest: str, data: bytes, annotations: dict[str, str]
) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": len(data),
            "annotations": annotations}  # fmt: skip


async def _push_bytes(client: RegistryClient, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    await client.push_blob(repo, data, digest)
    return digest


def sample_files(seed: int = 0) -> dict[str, bytes]:
    """Files of random (incompressible) and repetitive (compressible) bytes, several
    256 KiB chunks each."""
    import random

    rng = random.Random(seed)
    files = {f"random-{n}": rng.randbytes(700_000 + n * 50_000) for n in range(4)}
    files.update({f"text-{n}": (f"line {n} ".encode() * 90_000) for n in range(2)})
    return files
