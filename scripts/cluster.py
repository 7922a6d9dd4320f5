"""`make cluster`: the docker-compose topology as processes on loopback, no containers.

A Distribution registry, a supernode (SQLite; PostgreSQL with `--postgres`), a seed peer
and two peers (`dfdaemon`), each on its own port with its data under `cluster-work/`.
Prints their addresses (and writes them to `cluster-work/cluster.json`), runs until Ctrl-C,
then stops everything it started, newest first: SIGTERM (SIGINT for PostgreSQL), SIGKILL
after a timeout, `fusermount3 -uz` on every mountpoint. `scripts/demo.py` starts its
processes through the same `LocalCluster`.

The rule it keeps: a process this module starts is stopped by it, whatever happens.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REGISTRY_BIN = "/usr/bin/docker-registry"
TOKEN = "cluster-token"
# the ports docker-compose.yml publishes; a taken one is replaced by a free one
PORTS = {"registry": 5000, "postgres": 5432, "supernode": 8002, "seed": 65001}
PEER_PORTS = (65002, 65003, 65004)
STOP_TIMEOUT = 10.0


class ClusterError(Exception):
    """A part of the cluster that did not start; the message names it and its log."""


def port_for(preferred: int) -> int:
    """`preferred` when it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            # as the servers bind: connections in TIME_WAIT do not make a port taken
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ClusterError("no free port on 127.0.0.1")


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
        return data


def answers(url: str) -> bool:
    """True once anything answers HTTP at `url` (an error status included)."""
    try:
        http_get(url, timeout=1)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@dataclass
class Service:
    """One started process: its address, log, and the mountpoints to detach at the end."""

    name: str
    address: str  # what clients use: http://127.0.0.1:PORT, 127.0.0.1:PORT, or a DSN
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    mountpoints: list[Path] = field(default_factory=list)
    stop_signal: int = signal.SIGTERM

    @property
    def host(self) -> str:
        return self.address.removeprefix("http://")

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def metrics(self) -> dict[str, float]:
        """The samples of `/metrics` by name (labels kept in the name)."""
        found: dict[str, float] = {}
        for line in http_get(self.address + "/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                found[name] = float(value)
        return found

    def stop(self) -> None:
        """Signal, wait, kill if it must; then detach every mountpoint it had."""
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        for path in [*self.mountpoints, self.data_dir / "fuse-root"]:
            detach(path)


def detach(path: Path) -> None:
    """`fusermount3 -uz` (then `umount -l`) a mountpoint still mounted."""
    for argv in (["fusermount3", "-uz"], ["umount", "-l"]):
        if os.path.ismount(path):
            subprocess.run([*argv, str(path)], check=False, capture_output=True)


def detach_below(directory: Path) -> None:
    """Detach every mount under `directory`, deepest first (left by a killed run)."""
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mounts") as table:
        found = [line.split()[1].replace("\\040", " ") for line in table]
    for mountpoint in sorted((m for m in found if m.startswith(prefix)), reverse=True):
        detach(Path(mountpoint))


class LocalCluster:
    """Starts the parts under `work`, one directory and log each; `close` stops them all."""

    def __init__(self, work: Path, token: str = TOKEN) -> None:
        self.work = work
        self.token = token
        self.services: list[Service] = []

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every service, newest first; one that fails to stop does not spare the rest."""
        while self.services:
            service = self.services.pop()
            try:
                service.stop()
            except Exception as exc:  # keep stopping the others, then say what went wrong
                print(f"cluster: stopping {service.name}: {exc}", file=sys.stderr)

    def stop(self, service: Service) -> None:
        service.stop()
        self.services.remove(service)

    def _spawn(self, name: str, argv: list[str], address: str, user: str | None = None) -> Service:
        data_dir = self.work / name
        data_dir.mkdir(parents=True, exist_ok=True)
        log = self.work / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                user=user, group=user,
            )  # fmt: skip
        service = Service(name, address, process, log, data_dir)
        self.services.append(service)
        return service

    def _wait(self, service: Service, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if service.process.poll() is not None:
                raise ClusterError(f"{service.name} exited: {service.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{service.name}: no {what} after {timeout:.0f} s")
            time.sleep(0.05)

    # --- the parts -------------------------------------------------------------------

    def start_registry(self, name: str = "registry") -> Service:
        """Debian's `docker-registry` (Distribution), plain HTTP, storage in its directory."""
        if not Path(REGISTRY_BIN).exists():
            raise ClusterError(f"{REGISTRY_BIN} is missing (Debian package docker-registry)")
        root = self.work / name
        port = port_for(PORTS["registry"])
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(root / "storage")},
                "delete": {"enabled": True},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        argv = [REGISTRY_BIN, "serve", str(root / "config.yml")]
        service = self._spawn(name, argv, f"http://127.0.0.1:{port}")
        self._wait(service, "answer on /v2/", lambda: answers(service.address + "/v2/"), 20)
        return service

    def start_postgres(self) -> Service:
        """A throwaway PostgreSQL cluster (Debian's server binaries) run as `postgres`."""
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
        if not found:
            raise ClusterError("no PostgreSQL server under /usr/lib/postgresql (apt postgresql)")
        pg_bin = Path(found[0]).parent
        root = self.work / "postgres"
        root.mkdir(parents=True, exist_ok=True)
        user = "postgres" if os.geteuid() == 0 else None
        if user:
            shutil.chown(root, user, user)
        initdb = [str(pg_bin / "initdb"), "-D", str(root / "data"), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync"]  # fmt: skip
        subprocess.run(initdb, check=True, capture_output=True, user=user, group=user)
        port = port_for(PORTS["postgres"])
        argv = [str(pg_bin / "postgres"), "-D", str(root / "data"), "-h", "127.0.0.1",
                "-p", str(port), "-k", str(root), "-c", "fsync=off"]  # fmt: skip
        dsn = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        service = self._spawn("postgres", argv, dsn, user)
        service.stop_signal = signal.SIGINT  # "fast" shutdown: do not wait for clients
        ready = root / "data" / "postmaster.pid"
        self._wait(service, "ready server", lambda: _postgres_ready(ready), 30)
        return service

    def start_supernode(self, db: str | None = None) -> Service:
        """`supernode serve`: SQLite in its directory unless a database URL is given."""
        port = port_for(PORTS["supernode"])
        db = db or f"sqlite+aiosqlite:///{self.work / 'supernode' / 'supernode.db'}"
        argv = [str(BIN / "supernode"), "serve", "--listen", f"127.0.0.1:{port}",
                "--db", db, "--token", self.token]  # fmt: skip
        service = self._spawn("supernode", argv, f"http://127.0.0.1:{port}")
        self._wait(service, "/healthz", lambda: answers(service.address + "/healthz"), 30)
        return service

    def start_peer(
        self,
        name: str,
        supernode: Service,
        *,
        port: int,
        seed: bool = False,
        mounts: tuple[str, ...] = (),
        transport: str = "http",
        wait: bool = True,
    ) -> Service:
        """A `dfdaemon` (a seed with `seed`), each image in `mounts` on its own mountpoint;
        it serves over libp2p as well as HTTP, and fetches over `transport`."""
        port = port_for(port)
        argv = [str(BIN / "dfdaemon"), "--supernode", supernode.address,
                "--listen", f"127.0.0.1:{port}", "--data-dir", str(self.work / name),
                "--token", self.token, "--peer-id", name, "--host-name", name,
                "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--transport", transport]  # fmt: skip
        argv += ["--seed"] if seed else []
        mountpoints = [self.work / f"mnt-{name}-{n}" for n in range(len(mounts))]
        for reference, mountpoint in zip(mounts, mountpoints, strict=True):
            detach(mountpoint)  # left over from a run that was killed
            mountpoint.mkdir(parents=True, exist_ok=True)
            argv += ["--mount", f"{reference}:{mountpoint}"]
        service = self._spawn(name, argv, f"http://127.0.0.1:{port}")
        service.mountpoints = mountpoints
        if wait:
            self.wait_peer(service)
        return service

    def wait_peer(self, peer: Service, timeout: float = 30.0) -> None:
        """Until the peer is registered with the supernode and every image is mounted."""

        def ready() -> bool:
            try:
                registered = peer.metrics().get("dfdaemon_supernode_registered") == 1.0
            except OSError:
                return False
            return registered and all(os.path.ismount(m) for m in peer.mountpoints)

        self._wait(peer, "registration and mounts", ready, timeout)


def _postgres_ready(pid_file: Path) -> bool:
    """postmaster.pid's status line says "ready" once connections are accepted."""
    try:
        return "ready" in pid_file.read_text()
    except OSError:
        return False


# --- make cluster --------------------------------------------------------------------


def start_topology(cluster: LocalCluster, postgres: bool, mounts: tuple[str, ...]) -> None:
    """The services of docker-compose.yml, in its dependency order."""
    registry = cluster.start_registry()
    mounts = tuple(in_registry(registry, reference) for reference in mounts)
    db = cluster.start_postgres().address if postgres else None
    supernode = cluster.start_supernode(db)
    seed = cluster.start_peer("seed", supernode, port=PORTS["seed"], seed=True, wait=False)
    peers = [  # as in docker-compose.yml: peer2 fetches over libp2p
        cluster.start_peer(f"peer{n + 1}", supernode, port=PEER_PORTS[n], mounts=mounts,
                           transport=transport, wait=False)
        for n, transport in enumerate(("http", "libp2p"))
    ]  # fmt: skip
    for peer in (seed, *peers):
        cluster.wait_peer(peer)


def in_registry(registry: Service, reference: str) -> str:
    """`REPO:TAG` names an image in the cluster's registry; a reference with a host is kept."""
    first = reference.split("/", 1)[0]
    has_host = "/" in reference and ("." in first or ":" in first or first == "localhost")
    return reference if has_host else f"{registry.host}/{reference}"


def describe(cluster: LocalCluster) -> Table:
    table = Table(title=f"nydus-mesh cluster on loopback (token {cluster.token!r})")
    for column in ("service", "address", "data (log: DATA.log)", "mounts"):
        table.add_column(column, overflow="fold")
    for s in cluster.services:
        mounts = "\n".join(map(_short, s.mountpoints))
        table.add_row(s.name, s.address, _short(s.data_dir), mounts)
    return table


def _short(path: Path) -> str:
    """A path relative to the working directory where it lies below it."""
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def write_addresses(cluster: LocalCluster, path: Path) -> None:
    """Each service's address (and pid) for scripts and tests, once everything is up."""
    found = {s.name: s.address for s in cluster.services}
    pids = {s.name: s.process.pid for s in cluster.services}
    state = {"token": cluster.token, "services": found, "pids": pids}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def prepare(work: Path) -> None:
    """Start afresh, but keep the registry's storage (pushed images survive a restart)."""
    work.mkdir(parents=True, exist_ok=True)
    detach_below(work)
    for path in work.iterdir():
        if path.name != "registry":
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def run_until_interrupted(cluster: LocalCluster) -> int:
    """Sleep until Ctrl-C or SIGTERM (0), or until a service exits on its own (1)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            for s in cluster.services:
                if s.process.poll() is not None:
                    print(f"cluster: {s.name} exited {s.process.returncode}:\n{s.log_tail()}")
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


@contextmanager
def _stopping(console: Console, cluster: LocalCluster) -> Iterator[None]:
    try:
        yield
    finally:
        console.print("cluster: stopping everything it started")
        cluster.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "cluster-work")
    parser.add_argument("--postgres", action="store_true", help="supernode on PostgreSQL")
    parser.add_argument(
        "--mount", action="append", default=[], metavar="REF",
        help="a Nydus image both peers mount: REPO:TAG in the cluster's registry, or HOST/REPO:TAG",
    )  # fmt: skip
    args = parser.parse_args()
    console = Console()
    prepare(args.work)
    cluster = LocalCluster(args.work)
    with _stopping(console, cluster):
        try:
            start_topology(cluster, args.postgres, tuple(args.mount))
        except (ClusterError, OSError, subprocess.CalledProcessError) as exc:
            console.print(f"[red]cluster: {exc}[/red]")
            return 1
        except KeyboardInterrupt:
            return 130
        console.print(describe(cluster))
        write_addresses(cluster, args.work / "cluster.json")
        console.print("Ctrl-C stops every process above and unmounts every mount.")
        return run_until_interrupted(cluster)


if __name__ == "__main__":
    sys.exit(main())
