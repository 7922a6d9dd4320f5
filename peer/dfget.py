"""`dfget`: download a file through the nydus-mesh.

    dfget URL -O FILE [--digest sha256:...] [--daemon ADDR | --supernode ADDR] [--token T]

Through the local dfdaemon (`GET /api/v1/download`, see `_download`) or, with
`--supernode`, as a one-shot peer started in this process. URL is a registry blob
(`http(s)://HOST/v2/REPO/blobs/sha256:...`, the digest is implied) or any HTTP(S) file;
either way the daemon cuts it into pieces that peers share (`_pieces`).

The bytes go to `FILE.part` (with `FILE.part.json` saying what they are), are checked
against the digest (given, implied, or else the one the daemon computed), and only then
renamed to FILE. An interrupted download resumes from `FILE.part`; a failed check removes
it. A progress bar is drawn when stderr is a terminal.

Rule: FILE appears only complete and verified; every failure is one line on stderr and
one of the exit codes below.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from ._errors import PeerError
from ._pieces import parse_digest

if TYPE_CHECKING:
    from rich.progress import Progress

PROG = "dfget"
OK, USAGE, NOT_FOUND, DIGEST_MISMATCH, NETWORK = 0, 2, 3, 4, 5
EXIT_CODES = f"""exit codes:
  {OK}  the file is complete and verified
  1  another error (e.g. the output cannot be written)
  {USAGE}  usage: bad arguments
  {NOT_FOUND}  not found: the origin answered 404
  {DIGEST_MISMATCH}  digest mismatch: the content is not the digest given or implied
  {NETWORK}  network: the daemon, supernode or origin cannot be reached, or the transfer broke
"""
DEFAULT_DAEMON = "127.0.0.1:65001"
_REGISTRY_BLOB = re.compile(r"^https?://[^/\s]+/v2/.+/blobs/(sha256:[0-9a-fA-F]{64})$")


class DfgetError(Exception):
    """A failure with the exit code it maps to."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Stream:
    """What a source answers: the whole size, the content digest, the bytes from an offset."""

    size: int
    content_digest: str
    blocks: AsyncIterator[bytes]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="a registry blob URL or any HTTP(S) file")
    p.add_argument("-O", "--output", type=Path, required=True, metavar="FILE")
    p.add_argument("--digest", help="sha256:... the file must hash to")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--daemon", help=f"the local dfdaemon HOST:PORT (default {DEFAULT_DAEMON})")
    where.add_argument("--supernode", help="run as a one-shot peer of this supernode URL")
    p.add_argument("--token", default=os.environ.get("NYDUS_MESH_TOKEN"),
                   help="cluster token for --supernode (env NYDUS_MESH_TOKEN)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, help="one-shot peer's cache (default: temporary)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def expected_digest(url: str, given: str | None) -> str | None:
    """The digest to check: `--digest`, or the one a registry blob URL names (both: equal)."""
    implied = _REGISTRY_BLOB.match(url)
    digest = parse_digest(given) if given else None
    if implied:
        named = parse_digest(implied[1])
        if digest is not None and digest != named:
            raise DfgetError(USAGE, f"--digest {digest} is not the blob's {named}")
        return named
    return digest


# --- FILE.part and its state ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartFile:
    """`FILE.part` and `FILE.part.json` ({url, digest, size}) next to FILE."""

    output: Path

    @property
    def part(self) -> Path:
        return self.output.with_name(self.output.name + ".part")

    @property
    def state(self) -> Path:
        return self.output.with_name(self.output.name + ".part.json")

    def resumable(self, url: str, expected: str | None) -> tuple[int, str | None]:
        """(bytes already here, their content digest) for this URL, or (0, None)."""
        try:
            state = json.loads(self.state.read_text())
            have = self.part.stat().st_size
        except (OSError, ValueError):
            return 0, None
        if not isinstance(state, dict) or state.get("url") != url:
            return 0, None
        digest, size = state.get("digest"), state.get("size")
        if expected not in (None, digest) or not isinstance(size, int) or have > size:
            return 0, None
        return have, str(digest)

    def start(self, url: str, stream: Stream, offset: int) -> None:
        body = {"url": url, "digest": stream.content_digest, "size": stream.size}
        self.state.write_text(json.dumps(body))
        with open(self.part, "ab") as out:
            out.truncate(offset)

    def remove(self) -> None:
        self.part.unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(1 << 20):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


# --- sources -----------------------------------------------------------------------------


def _status_error(status: int, detail: str) -> DfgetError:
    codes = {404: NOT_FOUND, 409: DIGEST_MISMATCH, 400: USAGE}
    return DfgetError(codes.get(status, NETWORK), detail)


@contextlib.asynccontextmanager
async def daemon_stream(
    daemon: str, url: str, digest: str | None, offset: int
) -> AsyncIterator[Stream]:
    """The file from the local dfdaemon's download endpoint."""
    base = daemon if daemon.startswith(("http://", "https://")) else f"http://{daemon}"
    params = {"url": url, "offset": str(offset), **({"digest": digest} if digest else {})}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with _network_errors(base):  # around the request only: not the caller's writes
            response = await http.get(f"{base}/api/v1/download", params=params)
        try:
            if response.status != 200:
                with _network_errors(base):
                    detail = await _detail(response)
                raise _status_error(response.status, detail)
            size = int(response.headers["X-Dfget-Size"])
            blocks = _network_blocks(base, response.content.iter_chunked(1 << 20))
            yield Stream(size, response.headers["X-Dfget-Digest"], blocks)
        finally:
            response.release()


async def _detail(response: aiohttp.ClientResponse) -> str:
    text = await response.text(errors="replace")
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(text)["detail"])
    return f"HTTP {response.status}: {text[:200]}"


async def _network_blocks(where: str, blocks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    with _network_errors(where):
        async for block in blocks:
            yield block


@contextlib.contextmanager
def _network_errors(where: str) -> Iterator[None]:
    try:
        yield
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise DfgetError(NETWORK, f"{where}: {type(exc).__name__}: {exc}") from exc


@contextlib.asynccontextmanager
async def one_shot_stream(
    args: argparse.Namespace, url: str, digest: str | None, offset: int
) -> AsyncIterator[Stream]:
    """The file fetched by a peer running in this process for this one download."""
    from aiohttp import web

    from ._daemon import bind
    from ._download import DOWNLOADER, ContentDigestMismatch, DownloadError, NotFoundAtOrigin
    from ._node import NODE, make_app
    from ._options import DaemonOptions

    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        options = DaemonOptions(supernode=args.supernode, listen=("127.0.0.1", 0),
                                data_dir=data_dir, token=args.token)  # fmt: skip
        sock = stack.enter_context(bind(options.listen))
        app = make_app(options, sock.getsockname()[1])
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            await _registered(app[NODE].session, 3.0)
            downloader = app[DOWNLOADER]
            try:
                download = await downloader.fetch(url, digest)
            except NotFoundAtOrigin as exc:
                raise DfgetError(NOT_FOUND, str(exc)) from exc
            except ContentDigestMismatch as exc:
                raise DfgetError(DIGEST_MISMATCH, str(exc)) from exc
            except DownloadError as exc:
                raise DfgetError(NETWORK, str(exc)) from exc
            table = download.table
            blocks = _daemon_blocks(downloader.read(download, offset))
            yield Stream(table.size, table.content_digest, blocks)
        finally:
            await runner.cleanup()


async def _daemon_blocks(blocks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for block in blocks:
            yield block
    except PeerError as exc:  # e.g. a piece evicted while being read
        raise DfgetError(NETWORK, str(exc)) from exc


async def _registered(session: object, timeout: float) -> None:
    """Wait (bounded) for the one-shot peer to register; the origin works without it."""
    from ._session import SupernodeSession

    assert isinstance(session, SupernodeSession)
    deadline = asyncio.get_running_loop().time() + timeout
    while not session.registered and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)


# --- the download ------------------------------------------------------------------------


async def download(args: argparse.Namespace) -> None:
    url, output = args.url, args.output
    expected = expected_digest(url, args.digest)
    part = PartFile(output)
    offset, had = part.resumable(url, expected)
    with _progress(not args.quiet and sys.stderr.isatty()) as bar:
        async with _open(args, url, expected, offset) as stream:
            if had is not None and had != stream.content_digest:  # other content: start over
                raise _Restart
            part.start(url, stream, offset)
            bar.start(stream.size, offset)
            await _receive(part, stream, bar)
    actual = await asyncio.to_thread(sha256_of, part.part)
    wanted = expected or stream.content_digest
    if actual != wanted:
        part.remove()
        raise DfgetError(DIGEST_MISMATCH, f"{output}: got {actual}, expected {wanted}")
    os.replace(part.part, output)
    part.state.unlink(missing_ok=True)


class _Restart(Exception):
    """The partial file is of other content: remove it and download from the start."""


def _open(
    args: argparse.Namespace, url: str, digest: str | None, offset: int
) -> contextlib.AbstractAsyncContextManager[Stream]:
    if args.supernode:
        return one_shot_stream(args, url, digest, offset)
    return daemon_stream(args.daemon or DEFAULT_DAEMON, url, digest, offset)


async def _receive(part: PartFile, stream: Stream, bar: _Bar) -> None:
    with open(part.part, "ab") as out:
        async for block in stream.blocks:
            out.write(block)
            bar.advance(len(block))
        out.flush()
        os.fsync(out.fileno())
    if part.part.stat().st_size != stream.size:
        raise DfgetError(NETWORK, f"transfer ended at {part.part.stat().st_size} of "
                                  f"{stream.size} bytes (run again to resume)")  # fmt: skip


class _Bar:
    """A rich progress bar on stderr: a spinner while the daemon gathers the pieces (and
    checks the whole), then bytes received; nothing at all when `progress` is None."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.task = progress.add_task("mesh", total=None) if progress is not None else None

    def start(self, total: int, done: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description="dfget", total=total, completed=done)

    def advance(self, size: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, size)


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[_Bar]:
    if not show:
        yield _Bar(None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield _Bar(progress)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        try:
            asyncio.run(download(args))
        except _Restart:
            PartFile(args.output).remove()
            asyncio.run(download(args))
    except DfgetError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except PeerError as exc:  # the one-shot peer's own failures
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return NETWORK
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return USAGE
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return OK


if __name__ == "__main__":
    sys.exit(main())
