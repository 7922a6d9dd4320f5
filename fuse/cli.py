"""`nydusd`: mount a Nydus image and fetch its chunks only when they are read.

    nydusd --bootstrap FILE (--blob-dir DIR | --backend-config FILE) --mountpoint DIR
    nydusd --image REF --mountpoint DIR [--insecure] [--creds USER:PASSWORD]

Chunks come from the local verified cache, else from the origin (a directory of blobs,
an OCI registry, S3-compatible storage), every one checked against its digest. A registry
is asked with `--creds`, else with the Docker config's credentials for its host
(`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, as `docker login` writes it:
a credential helper's answer, else the `auths` entry).
In the background it fetches first the files of the bootstrap's prefetch table (as Nydus's
nydusd with fs prefetch on), or those of `--prefetch-files`, or everything with
`--prefetch-all`; `--no-prefetch` fetches nothing ahead. Runs in the foreground until
SIGINT/SIGTERM, then unmounts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from rafs import Bootstrap, ChunkInfo, RafsError
from rafs._load import load_bootstrap
from rafs._regaccess import RegistryCredentials, parse_credentials

from ._daemon import Daemon, DaemonConfig
from ._prefetch import all_chunks, files_under, table_chunks, unique_chunks
from ._sources import SourceOptions, open_image, open_source

PROG = "nydusd"
log = logging.getLogger(PROG)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--bootstrap", "-B", type=Path, help="RAFS bootstrap file (v5 or v6)")
    what.add_argument("--image", help="Nydus image in a registry, e.g. 127.0.0.1:5000/app:v1")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--blob-dir", "-D", type=Path, help="directory holding the blobs")
    where.add_argument(
        "--backend-config",
        "--config",
        type=Path,
        help="nydusd-style JSON naming the backend (registry, localfs, s3)",
    )
    p.add_argument("--mountpoint", "-M", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, help="verified chunk cache (default: none)")
    p.add_argument("--cache-size", type=parse_size, help="cache size limit, e.g. 10G")
    pre = p.add_mutually_exclusive_group()
    pre.add_argument("--prefetch-files", type=Path, help="file listing paths to fetch first")
    pre.add_argument("--prefetch-all", action="store_true", help="fetch every chunk in background")
    pre.add_argument(
        "--no-prefetch", action="store_true", help="not even the bootstrap's prefetch table"
    )
    p.add_argument("--validate", action="store_true", help="re-verify cached chunks on every read")
    p.add_argument("--apisock", type=Path, help="unix socket for the state and metrics API")
    p.add_argument("--insecure", action="store_true", help="plain HTTP for a non-local registry")
    p.add_argument("--creds", metavar="USER:PASSWORD",
                   help="registry credentials (default: the Docker config's)")  # fmt: skip
    p.add_argument("--platform", default="linux/amd64", help="platform in an image index")
    p.add_argument(
        "--no-allow-other", action="store_true", help="only the mounting user sees files"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def parse_size(text: str) -> int:
    """`10G`, `512MiB`, `4096`: a byte count for a size flag (binary units)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = units.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if factor > 1 else text) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 10G)") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.bootstrap and not (args.blob_dir or args.backend_config):
        print(f"{PROG}: error: --bootstrap needs --blob-dir or --backend-config", file=sys.stderr)
        return 2
    try:
        uvloop.run(_run(args))
    except RafsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _run(args: argparse.Namespace) -> None:
    opts = SourceOptions(
        blob_dir=args.blob_dir,
        backend_config=args.backend_config,
        cache_dir=args.cache_dir,
        cache_size=args.cache_size,
        validate=args.validate,
        insecure=args.insecure,
        platform=args.platform,
        credentials=_credentials(args.creds),
    )
    if args.image:
        boot_path, backend = await open_image(args.image, opts)
        label = args.image
    else:
        boot_path, backend, label = args.bootstrap, None, str(args.bootstrap)
    boot = load_bootstrap(boot_path)
    prefetch = _prefetch(args, boot)
    source, counters = await open_source(opts, backend)
    config = DaemonConfig(
        boot=boot,
        source=source,
        mountpoint=args.mountpoint,
        image=label,
        apisock=args.apisock,
        allow_other=not args.no_allow_other,
        counters=counters,
        prefetch=prefetch,
    )
    try:
        await Daemon(config).run()
    finally:
        await source.close()


def _prefetch(args: argparse.Namespace, boot: Bootstrap) -> list[ChunkInfo]:
    """The chunks to fetch ahead: the flags' choice, else the bootstrap's own table."""
    if args.no_prefetch:
        return []
    if args.prefetch_all:
        return all_chunks(boot)
    if args.prefetch_files:
        names = [n.strip() for n in args.prefetch_files.read_text().splitlines() if n.strip()]
        return unique_chunks(files_under(boot, [boot.lookup(n) for n in names]))
    chunks = table_chunks(boot)
    if chunks:
        log.info("prefetching the bootstrap's table: %d entries, %d chunks",
                 len(boot.prefetch), len(chunks))  # fmt: skip
    return chunks


def _credentials(creds: str | None) -> RegistryCredentials:
    every_host = parse_credentials(creds, "--creds") if creds else None
    return RegistryCredentials(every_host=every_host)


if __name__ == "__main__":
    sys.exit(main())
