"""`dfdaemon`: a peer of the nydus-mesh: serves verified chunks, fetches from peers.

    dfdaemon --supernode URL --listen ADDR --data-dir DIR [--token T] [--seed]
             [--upload-limit RATE] [--mount REF:MOUNTPOINT]
             [--registry-creds HOST=USER:PASSWORD]
             [--mirror HOST:PORT [--mirror-upstream URL]]
             [--p2p-listen MULTIADDR] [--transport http|libp2p]

Registers with the supernode, serves the chunks its cache holds to other peers, and (with
`--mount`) mounts a Nydus image whose missing chunks come from peers before the registry.
With `--seed` it takes seed tasks: chunks fetched from the origin for others. With
`--p2p-listen` it serves the same chunks over libp2p too (`/nydus-mesh/chunk/1`), and
`--transport libp2p` fetches over libp2p from parents that offer it. Runs in the
foreground until SIGINT/SIGTERM. Every failure is one line on stderr and a non-zero exit.

Every registry client (a mount's, a seed's) presents the credentials for its host:
`--registry-creds HOST=USER:PASSWORD` (repeatable), else the Docker config's credentials
for the host (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: a credential
helper's answer, else the `auths` entry), looked up when the registry first asks for
credentials and again when it refuses them. A Docker config that cannot be read stops the
daemon at start.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from fuse.cli import parse_size
from rafs import RafsError
from rafs._regaccess import RegistryCredentials, parse_host_credentials

from ._errors import PeerError, UsageError
from ._options import DaemonOptions, MountSpec, parse_listen
from ._ratelimit import parse_rate

PROG = "dfdaemon"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--supernode", required=True, help="supernode URL, e.g. http://127.0.0.1:8002")
    p.add_argument("--listen", default="127.0.0.1:65001", help="chunk server HOST:PORT")
    p.add_argument("--data-dir", type=Path, required=True, help="cache, state and bootstraps")
    p.add_argument(
        "--token",
        default=os.environ.get("NYDUS_MESH_TOKEN"),
        help="cluster token for the supernode (env NYDUS_MESH_TOKEN)",
    )
    p.add_argument("--seed", action="store_true", help="take seed tasks from the supernode")
    p.add_argument("--upload-limit", help="upload rate limit, e.g. 100M, 20MB/s, 800Mbit")
    p.add_argument("--upload-slots", type=int, default=16, help="chunk requests served at once")
    p.add_argument(
        "--mount", action="append", default=[], metavar="REF:MOUNTPOINT",
        help="mount a Nydus image (its misses go to peers before the registry)",
    )  # fmt: skip
    p.add_argument("--peer-id", help="peer id (default: kept in the data dir)")
    p.add_argument("--host-name", help="host name registered (default: this host's)")
    p.add_argument("--zone", help="zone label, for locality")
    p.add_argument("--advertise-host", help="IP other peers reach this one on")
    p.add_argument("--cache-dir", type=Path, help="chunk cache (default: DATA_DIR/cache)")
    p.add_argument("--cache-size", type=parse_size, help="cache size limit, e.g. 10G")
    p.add_argument("--insecure", action="store_true", help="plain HTTP for a non-local registry")
    p.add_argument("--no-prefetch", action="store_true",
                   help="mounts do not prefetch their image's prefetch table")  # fmt: skip
    p.add_argument(
        "--registry-creds", action="append", default=[], metavar="HOST=USER:PASSWORD",
        help="credentials for a registry (default: the Docker config's for the host)",
    )  # fmt: skip
    p.add_argument("--mirror", metavar="HOST:PORT", help="serve a pull-through registry mirror")
    p.add_argument("--mirror-upstream", metavar="URL",
                   help="the mirror's registry for requests without ns=")  # fmt: skip
    p.add_argument("--p2p-listen", metavar="MULTIADDR",
                   help="serve chunks over libp2p too, e.g. /ip4/127.0.0.1/tcp/0")  # fmt: skip
    p.add_argument("--transport", choices=["http", "libp2p"], default="http",
                   help="preferred when a parent offers both (libp2p: listens too)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _multiaddr(text: str) -> str:
    """A libp2p listen address, checked before anything starts."""
    import multiaddr

    try:
        multiaddr.Multiaddr(text)
    except Exception as exc:  # the multiaddr package raises several unrelated types
        raise UsageError(f"--p2p-listen {text!r}: not a multiaddr ({exc})") from exc
    return text


def options_from(args: argparse.Namespace) -> DaemonOptions:
    return DaemonOptions(
        supernode=args.supernode,
        listen=parse_listen(args.listen),
        data_dir=args.data_dir,
        token=args.token,
        seed=args.seed,
        upload_limit=parse_rate(args.upload_limit) if args.upload_limit else None,
        upload_slots=args.upload_slots,
        mounts=tuple(MountSpec.parse(m) for m in args.mount),
        peer_id=args.peer_id,
        host_name=args.host_name,
        zone=args.zone,
        advertise_host=args.advertise_host,
        cache_dir=args.cache_dir,
        cache_size=args.cache_size,
        insecure=args.insecure,
        prefetch=not args.no_prefetch,
        credentials=_credentials(args.registry_creds),
        mirror=_mirror_address(args.mirror),
        mirror_upstream=args.mirror_upstream,
        p2p_listen=_multiaddr(args.p2p_listen) if args.p2p_listen else None,
        transport=args.transport,
    )


def _credentials(given: list[str]) -> RegistryCredentials:
    """`--registry-creds` by host, the Docker config behind them (checked readable now)."""
    credentials = RegistryCredentials(
        dict(parse_host_credentials(text, "--registry-creds") for text in given)
    )
    credentials.check()
    return credentials


def _mirror_address(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    try:
        return parse_listen(text)
    except UsageError:
        raise UsageError(f"--mirror {text!r}: expected HOST:PORT with a port 0-65535") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from ._daemon import serve

    try:
        options = options_from(args)
        uvloop.run(serve(options))
    except (PeerError, RafsError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
