"""What one dfdaemon is told: addresses, directories, limits, mounts (from the CLI or a test).

Rule: options are plain frozen data, checked when parsed (`parse_listen`, `MountSpec.parse`,
`parse_rate`), so the daemon never starts half-configured.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rafs._regaccess import RegistryCredentials

from ._errors import UsageError
from ._mesh import MeshConfig

_HOST_NAME = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True, slots=True)
class MountSpec:
    """`REF:MOUNTPOINT`: a Nydus image reference and where to mount it."""

    reference: str
    mountpoint: Path

    @classmethod
    def parse(cls, text: str) -> MountSpec:
        reference, sep, mountpoint = text.rpartition(":")
        if not sep or not reference or not mountpoint:
            raise UsageError(f"--mount {text!r}: expected REF:MOUNTPOINT")
        return cls(reference, Path(mountpoint))


@dataclass(frozen=True)
class DaemonOptions:
    supernode: str
    listen: tuple[str, int]
    data_dir: Path
    token: str | None = None
    seed: bool = False
    upload_limit: float | None = None  # bytes per second, None: unlimited
    upload_slots: int = 16
    mounts: tuple[MountSpec, ...] = ()
    peer_id: str | None = None
    host_name: str | None = None
    zone: str | None = None
    advertise_host: str | None = None
    cache_dir: Path | None = None
    cache_size: int | None = None
    insecure: bool = False
    prefetch: bool = True  # mounts fetch their bootstrap's prefetch table in the background
    credentials: RegistryCredentials = field(default_factory=RegistryCredentials)  # per host
    mirror: tuple[str, int] | None = None  # registry mirror HOST:PORT
    mirror_upstream: str | None = None  # its upstream when a request names none (ns=)
    p2p_listen: str | None = None  # libp2p multiaddr, e.g. /ip4/127.0.0.1/tcp/0
    transport: Literal["http", "libp2p"] = "http"  # preferred when a parent offers both
    mesh: MeshConfig = field(default_factory=MeshConfig)

    @property
    def cache_path(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, `:PORT` (every interface) or `PORT` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT with a port 0-65535")
    return host, int(port)


def host_name(options: DaemonOptions) -> str:
    """The host name registered (the supernode never pairs peers of one host)."""
    name = options.host_name or socket.gethostname()
    return _HOST_NAME.sub("-", name).strip("-.")[:253] or "host"


def peer_id(options: DaemonOptions) -> str:
    """`--peer-id`, else the id kept in the data dir (made once: host name + random)."""
    if options.peer_id:
        return options.peer_id
    path = options.data_dir / "peer_id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    made = f"{host_name(options)[:100]}-{secrets.token_hex(4)}"
    options.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".peer_id.{os.getpid()}")
    tmp.write_text(made + "\n")
    tmp.replace(path)
    return made


def advertised_ip(options: DaemonOptions) -> str:
    """The IP peers reach us on: `--advertise-host`, the listen host, or loopback."""
    if options.advertise_host:
        return options.advertise_host
    host = options.listen[0]
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
