"""Wiring libp2p into a dfdaemon: whether it runs, its host, and the fetcher's transport.

libp2p runs when `--p2p-listen MULTIADDR` is given, or when `--transport libp2p` asks for
it (then it listens on a free port of the `--listen` host). The host serves the same
cache, upload slots and metrics as the HTTP server; the daemon advertises both transports
in `Register` (`http_url` and `multiaddrs`), and fetches from each parent over the
preferred transport when the parent offers it, else over the other.

Rule: without libp2p nothing here imports it (py-libp2p and trio load only when asked
for), and the daemon is exactly the HTTP-only one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from rafs._cache import BlobCache

from ._chunkserver import UploadSlots
from ._errors import PeerError
from ._metrics import PeerMetrics
from ._options import DaemonOptions, advertised_ip
from ._parentclient import ChunkTransport, HttpChunkTransport

if TYPE_CHECKING:
    from ._libp2p_host import Libp2pHost


class Libp2pStartError(PeerError):
    """The libp2p host could not start (bad address, port taken, ...)."""


def p2p_listen(options: DaemonOptions) -> str | None:
    """The multiaddr to listen on, or None when libp2p is off."""
    if options.p2p_listen:
        return options.p2p_listen
    if options.transport != "libp2p":
        return None
    host = options.listen[0]
    version = "ip6" if ":" in host else "ip4"
    return f"/{version}/{host}/tcp/0"


def start_libp2p(
    options: DaemonOptions, cache: BlobCache, metrics: PeerMetrics, uploads: UploadSlots
) -> Libp2pHost | None:
    """The daemon's libp2p host, listening (blocks until it is, a few ms), or None."""
    listen = p2p_listen(options)
    if listen is None:
        return None
    from ._libp2p_host import ChunkService, Libp2pHost
    from ._libp2p_key import load_or_create_key

    key = load_or_create_key(options.data_dir)
    host = Libp2pHost(key, listen, metrics, service=ChunkService(cache, uploads),
                      advertise_ip=advertised_ip(options))  # fmt: skip
    try:
        host.start(asyncio.get_running_loop())
    except PeerError:
        raise
    except Exception as exc:  # libp2p and trio raise many unrelated types here
        raise Libp2pStartError(f"libp2p cannot listen on {listen}: {_leaf(exc)}") from exc
    return host


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside nested trio exception groups (the group itself if several)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def chunk_transport(options: DaemonOptions, p2p: Libp2pHost | None) -> ChunkTransport:
    """HTTP alone, or both transports with the preferred one first."""
    http = HttpChunkTransport()
    if p2p is None:
        return http
    from ._libp2p_transport import Libp2pTransport, PreferredTransport

    return PreferredTransport(http, Libp2pTransport(p2p), options.transport)
