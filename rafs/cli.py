"""`nydus-image`: build, inspect, check, unpack, merge and compare RAFS images.

Flags follow Nydus's `nydus-image` where it has them. Every failure ends as one line on
stderr and a non-zero exit status; no traceback, no partial output file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._builder import BuildOptions, BuildResult
from ._check import check
from ._create import CreateRequest, create_image, write_atomically
from ._digest import parse_compressor, parse_digester
from ._errors import RafsError
from ._inspect import describe, image_stats
from ._load import load_bootstrap
from ._merge import merge
from ._progress import byte_progress
from ._unpack import unpack_to_tar
from ._v5write import dump_v5

PROG = "nydus-image"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except RafsError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, status: int = 1) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _create_parser(sub)
    p = sub.add_parser("inspect", help="describe a bootstrap")
    p.add_argument("--bootstrap", "-B", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_inspect)
    p = sub.add_parser("check", help="verify digests (and chunks, given blobs)")
    p.add_argument("--bootstrap", "-B", type=Path, required=True)
    p.add_argument("--blob-dir", "-D", type=Path)
    p.add_argument("--output-json", "-J", type=Path)
    p.set_defaults(handler=cmd_check)
    p = sub.add_parser("stat", help="chunk and dedup statistics across images")
    p.add_argument("--bootstrap", "-B", type=Path, nargs="+", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_stat)
    p = sub.add_parser("unpack", help="write an image's tree to a tar archive")
    p.add_argument("--bootstrap", "-B", type=Path, required=True)
    p.add_argument("--blob-dir", "-D", type=Path, required=True)
    p.add_argument("--output", "-o", type=Path, required=True)
    p.set_defaults(handler=cmd_unpack)
    p = sub.add_parser("merge", help="one image from per-layer bootstraps")
    p.add_argument("--bootstrap", "-B", type=Path, required=True, help="output bootstrap")
    p.add_argument("--output-json", "-J", type=Path)
    p.add_argument("layers", type=Path, nargs="+", help="layer bootstraps, lowest first")
    p.set_defaults(handler=cmd_merge)
    return parser


def _create_parser(sub: Any) -> None:
    p = sub.add_parser("create", help="build an image from a directory, tar layer or OCI layout")
    p.add_argument("--bootstrap", "-B", type=Path, required=True)
    p.add_argument("--blob-dir", "-D", type=Path, required=True)
    p.add_argument("--chunk-size", type=lambda s: int(s, 0), default=0x100000)
    p.add_argument(
        "--compressor", "-c", default="zstd", choices=["none", "zstd", "lz4_block", "gzip"]
    )
    p.add_argument("--digester", "-d", default="blake3", choices=["blake3", "sha256"])
    p.add_argument(
        "--chunk-dict",
        "-M",
        type=Path,
        action="append",
        default=[],
        help="bootstrap of an earlier image whose chunks may be reused",
    )
    p.add_argument("--prefetch-files", type=Path, help="file listing paths to prefetch, one a line")
    p.add_argument(
        "--repeatable",
        "-R",
        action="store_true",
        help="same input, same bytes (always true here; accepted for Nydus compatibility)",
    )
    p.add_argument(
        "--no-explicit-uidgid",
        action="store_true",
        help="store uid/gid as 0 (the reader substitutes its own)",
    )
    p.add_argument("--output-json", "-J", type=Path)
    p.add_argument("source", type=Path)
    p.set_defaults(handler=cmd_create)


def cmd_create(args: argparse.Namespace) -> int:
    opts = BuildOptions(
        chunk_size=args.chunk_size,
        compressor=parse_compressor(args.compressor),
        digester=parse_digester(args.digester),
        explicit_uidgid=not args.no_explicit_uidgid,
        prefetch_files=_read_list(args.prefetch_files),
    )
    with byte_progress("building") as on_bytes:
        req = CreateRequest(
            args.source, args.bootstrap, args.blob_dir, opts, args.chunk_dict, on_bytes
        )
        result = create_image(req)
    summary = _build_summary(result)
    _emit(summary, args.output_json)
    return 0


def _read_list(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return ()
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def _build_summary(result: BuildResult) -> dict[str, Any]:
    s = image_stats(result.bootstrap)
    s.update(result.stats)
    s["blobs"] = [b.blob_id for b in result.bootstrap.blobs]
    s["new_blob"] = result.blob.blob_id if result.blob else None
    return s


def _emit(summary: dict[str, Any], output_json: Path | None) -> None:
    if output_json is not None:
        write_atomically(output_json, json.dumps(summary, indent=2).encode() + b"\n")
    else:
        print(json.dumps(summary, indent=2))


def cmd_inspect(args: argparse.Namespace) -> int:
    boot = load_bootstrap(args.bootstrap)
    info = describe(boot)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if key != "entries":
                print(f"{key}: {value}")
        for entry in info["entries"]:
            print(f"{entry['mode']:>7} {entry['size']:>12} {entry['path']}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    boot = load_bootstrap(args.bootstrap)
    report = check(boot, args.blob_dir)
    summary = {
        "ok": True,
        "inodes": report.inodes,
        "chunks_checked": report.chunks_checked,
        "bytes_checked": report.bytes_checked,
        "blobs_checked": report.blobs_checked,
    }
    if args.output_json:
        _emit(summary, args.output_json)
    print(
        f"ok: {report.inodes} inodes, {report.chunks_checked} chunks, {report.blobs_checked} blobs"
    )
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    from ._inspect import stats_across

    result = stats_across([load_bootstrap(p) for p in args.bootstrap], args.bootstrap)
    print(json.dumps(result, indent=2))
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    boot = load_bootstrap(args.bootstrap)
    count = unpack_to_tar(boot, args.blob_dir, args.output)
    print(f"unpacked {count} entries to {args.output}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    layers = [load_bootstrap(p) for p in args.layers]
    first = layers[0]
    opts = BuildOptions(
        chunk_size=first.chunk_size,
        compressor=first.compressor,
        digester=first.digester,
        explicit_uidgid=bool(first.flags & 0x10),
    )
    result = merge(layers, opts)
    write_atomically(args.bootstrap, dump_v5(result.bootstrap))
    _emit(_build_summary(result), args.output_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
