"""`nydusify`: convert an OCI image in a registry into a Nydus image, and check the result.

    nydusify convert --source REF --target REF [--chunk-dict DICT ...] [--platform P]
                     [--chunk-size N] [--compressor C] [--prefetch-patterns < LIST]
                     [--work-dir DIR] [--output-json FILE]
    nydusify check --source REF --target REF [--mount] [--platform P] [--output-json FILE]

Flags follow Nydus's nydusify where it has them. Registries on loopback speak plain HTTP,
others with `--source-insecure`/`--target-insecure`; credentials come from
`--source-creds`/`--target-creds USER:PASSWORD` or the Docker config file (its credential
helpers, `credHelpers`/`credsStore`, then its `auths`).

`--prefetch-patterns` reads the image's prefetch list from STDIN, as Nydus's nydusify does:
absolute paths, one a line, a directory standing for everything below it. The list goes
into the merged bootstrap's prefetch table (nydusd fetches those files first). As in Nydus,
a path that is not absolute or not in the image is left out; here with a warning line.

Exit status: `convert` 0 when pushed, 1 on failure; `check` 0 when the images are the
same, 1 when they differ (the differences on stdout), 2 when they could not be compared.
Every failure is one line on stderr, never a traceback; a failed convert tags nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from ._backends import RegistryBackend
from ._builder import BuildOptions
from ._convert import ConvertRequest, ConvertSummary, convert_image, run_all
from ._create import write_atomically
from ._digest import parse_compressor
from ._errors import RafsError
from ._imagecheck import (
    TreeFacts,
    blob_problems,
    compare,
    directory_facts,
    fetch_nydus_image,
    nydus_facts,
    source_facts,
)
from ._nydusdmount import find_nydusd, nydusd_mount
from ._oci import ImageReference, Platform
from ._origin import OriginSource
from ._regaccess import RegistryAccess, parse_credentials
from ._steps import QuietSteps, Steps, TerminalSteps
from ._workdir import WorkDir

PROG = "nydusify"
CHECK_DIFFERENT, CHECK_TROUBLE = 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    trouble = CHECK_TROUBLE if args.command == "check" else 1
    try:
        return handler(args)
    except RafsError as exc:
        return _fail(str(exc), trouble)
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), trouble)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


# --- arguments ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert an OCI image into a Nydus image")
    _common(p)
    p.add_argument(
        "--chunk-dict",
        action="append",
        default=[],
        metavar="DICT",
        help="bootstrap file or Nydus image (bootstrap:local:PATH, bootstrap:registry:REF) "
        "whose chunks new blobs reuse; repeatable",
    )
    p.add_argument("--chunk-size", type=_number, default=0x100000, help="default 0x100000")
    p.add_argument("--compressor", default="zstd", choices=["none", "zstd", "lz4_block", "gzip"])
    p.add_argument("--fs-version", default="5", choices=["5"], help="RAFS version written")
    p.add_argument(
        "--prefetch-patterns",
        action="store_true",
        help="read the prefetch list from STDIN: absolute paths, one a line",
    )
    p.set_defaults(handler=cmd_convert)
    p = sub.add_parser("check", help="compare a Nydus image with its source, file by file")
    _common(p)
    p.add_argument("--mount", action="store_true", help="read the target through nydusd")
    p.add_argument("--nydusd", help="nydusd to mount with (default: beside this program)")
    p.add_argument("--max-differences", type=int, default=20, help="differences shown")
    p.set_defaults(handler=cmd_check)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="source image, e.g. 127.0.0.1:5000/app:v1")
    p.add_argument("--target", required=True, help="Nydus image, e.g. 127.0.0.1:5000/app:nydus")
    p.add_argument("--platform", default="linux/amd64", type=_platform, help="os/arch[/variant]")
    p.add_argument("--source-insecure", action="store_true", help="plain HTTP to the source")
    p.add_argument("--target-insecure", action="store_true", help="plain HTTP to the target")
    p.add_argument("--source-creds", metavar="USER:PASSWORD")
    p.add_argument("--target-creds", metavar="USER:PASSWORD")
    p.add_argument("--work-dir", type=Path, default=_default_work_dir(), help="cache and spool")
    p.add_argument("--output-json", type=Path, help="write the summary here as JSON")


def _number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _platform(text: str) -> str:
    try:
        return str(Platform.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _default_work_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nydus-mesh" / "nydusify"


def _access(args: argparse.Namespace, side: str) -> RegistryAccess:
    creds = getattr(args, f"{side}_creds")
    user, password = parse_credentials(creds, f"--{side}-creds") if creds else (None, None)
    return RegistryAccess(getattr(args, f"{side}_insecure"), user, password)


def _emit_json(path: Path | None, body: dict[str, Any]) -> None:
    if path is not None:
        write_atomically(path, json.dumps(body, indent=2).encode() + b"\n")


# --- convert -----------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    opts = BuildOptions(chunk_size=args.chunk_size, compressor=parse_compressor(args.compressor))
    req = ConvertRequest(
        source=args.source,
        target=args.target,
        work_dir=args.work_dir,
        platform=args.platform,
        options=opts,
        chunk_dicts=tuple(args.chunk_dict),
        source_access=_access(args, "source"),
        target_access=_access(args, "target"),
        prefetch_patterns=_prefetch_patterns(args.prefetch_patterns),
    )
    with _steps() as steps:
        summary = uvloop.run(convert_image(req, steps))
    for warning in summary.prefetch_ignored:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    print(_convert_text(summary))
    _emit_json(args.output_json, summary.to_json())
    return 0


def _prefetch_patterns(from_stdin: bool) -> tuple[str, ...]:
    if not from_stdin:
        return ()
    return tuple(line.strip() for line in sys.stdin.read().splitlines() if line.strip())


@contextlib.contextmanager
def _steps() -> Iterator[Steps]:
    if not sys.stderr.isatty():
        yield QuietSteps()
        return
    with TerminalSteps() as steps:
        yield steps


def _convert_text(s: ConvertSummary) -> str:
    return (
        f"converted {s.source} -> {s.target} ({s.manifest_digest})\n"
        f"  {s.layers} layers: {s.converted} built, {s.reused} from the cache; "
        f"{s.blobs} blobs: {s.blobs_pushed} pushed, {s.blobs_present} present, "
        f"{s.blobs_mounted} mounted; {_size(s.bytes_pushed)} pushed in {s.seconds:.1f} s"
    ) + (f"\n  prefetch table: {', '.join(s.prefetch)}" if s.prefetch else "")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --- check -------------------------------------------------------------------------------


@dataclass
class CheckResult:
    source: TreeFacts
    target: TreeFacts
    differences: list[str] = field(default_factory=list)


def cmd_check(args: argparse.Namespace) -> int:
    work = WorkDir(args.work_dir)
    scratch = Path(tempfile.mkdtemp(prefix="check-", dir=work.root))
    try:
        result = uvloop.run(_check(args, work, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _emit_json(args.output_json, _check_json(args, result))
    if not result.differences:
        t = result.target
        print(
            f"ok: {len(t.entries)} entries ({t.files} files, {_size(t.bytes)}) are the same "
            f"in {args.source} and {args.target}"
        )
        return 0
    shown = result.differences[: args.max_differences]
    print("\n".join(shown))
    if len(result.differences) > len(shown):
        print(f"... and {len(result.differences) - len(shown)} more")
    count = len(result.differences)
    print(
        f"{PROG}: check failed: {count} difference{'s' * (count != 1)} between "
        f"{args.source} and {args.target}",
        file=sys.stderr,
    )
    return CHECK_DIFFERENT


async def _check(args: argparse.Namespace, work: WorkDir, scratch: Path) -> CheckResult:
    source, target = ImageReference.parse(args.source), ImageReference.parse(args.target)
    async with (
        _access(args, "source").client(source.registry) as pull,
        _access(args, "target").client(target.registry) as push,
    ):
        problems: list[str] = []
        if args.mount:
            target_side = _mounted_facts(args, scratch)
        else:
            image = await fetch_nydus_image(push, target, args.platform)
            problems = await blob_problems(push, target.repository, image)
            origin = OriginSource(RegistryBackend(push, target.repository))
            target_side = nydus_facts(image, origin)
        source_side = source_facts(pull, source, args.platform, work.spool)
        left, right = await run_all([source_side, target_side])
    return CheckResult(left, right, problems + compare(left, right))


async def _mounted_facts(args: argparse.Namespace, scratch: Path) -> TreeFacts:
    if args.target_creds:
        raise RafsError("--mount cannot pass credentials to nydusd: check without --mount")
    nydusd = find_nydusd(args.nydusd)
    return await asyncio.to_thread(_read_mount, args, scratch, nydusd)


def _read_mount(args: argparse.Namespace, scratch: Path, nydusd: str) -> TreeFacts:
    with nydusd_mount(
        args.target,
        scratch,
        nydusd=nydusd,
        insecure=args.target_insecure,
        platform=args.platform,
    ) as mountpoint:
        return directory_facts(mountpoint)


def _check_json(args: argparse.Namespace, result: CheckResult) -> dict[str, Any]:
    return {
        "source": args.source,
        "target": args.target,
        "ok": not result.differences,
        "entries": len(result.target.entries),
        "files": result.target.files,
        "bytes": result.target.bytes,
        "differences": result.differences,
    }


if __name__ == "__main__":
    sys.exit(main())
