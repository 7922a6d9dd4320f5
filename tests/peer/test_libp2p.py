"""Units of the libp2p transport: the trio/asyncio bridge (a real trio thread, no network),
the stream heads (tables, any split), and the peer key file."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from peer._libp2p_bridge import BridgeClosed, TrioThread
from peer._libp2p_key import KEY_FILE, BadPeerKey, load_or_create_key
from peer._libp2p_wire import (
    MAX_HEAD_BYTES,
    BadHead,
    ChunkAnswer,
    ChunkRequest,
    HeadDecoder,
    Status,
    encode_head,
    uvarint,
)
from protocol import FailureKind

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def bridge() -> AsyncIterator[TrioThread]:
    thread = TrioThread("test-trio")
    thread.start(asyncio.get_running_loop())
    try:
        yield thread
    finally:
        await thread.aclose()
    assert not thread.running
    assert thread._thread is not None and not thread._thread.is_alive()


# --- asyncio -> trio -------------------------------------------------------------------------


async def test_a_call_runs_in_the_trio_thread_and_returns_its_result(bridge: TrioThread) -> None:
    async def where(x: int) -> tuple[str, int]:
        await trio.sleep(0)
        trio.lowlevel.current_trio_token()  # raises outside trio
        return threading.current_thread().name, x * 2

    assert await bridge.call(where, 21) == ("test-trio", 42)


async def test_an_exception_reaches_the_caller_and_the_bridge_goes_on(bridge: TrioThread) -> None:
    async def fails() -> None:
        raise ValueError("bad value 7")

    async def works() -> str:
        return "still running"

    with pytest.raises(ValueError, match="bad value 7"):
        await bridge.call(fails)
    assert await bridge.call(works) == "still running"


async def test_cancelling_the_asyncio_caller_cancels_the_trio_task(bridge: TrioThread) -> None:
    cancelled = threading.Event()

    async def sleeps() -> None:
        try:
            await trio.sleep(30)
        finally:
            cancelled.set()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bridge.call(sleeps), 0.2)
    assert await asyncio.to_thread(cancelled.wait, 5.0)


async def test_many_calls_at_once_each_get_their_own_answer(bridge: TrioThread) -> None:
    async def echo(n: int) -> int:
        await trio.sleep(0.001 * (n % 5))
        return n

    assert await asyncio.gather(*(bridge.call(echo, n) for n in range(200))) == list(range(200))


async def test_stopping_fails_the_calls_still_waiting(tmp_path: Path) -> None:
    thread = TrioThread("stopping")
    thread.start(asyncio.get_running_loop())

    async def forever() -> None:
        await trio.sleep_forever()

    waiting = asyncio.ensure_future(thread.call(forever))
    await asyncio.sleep(0.05)
    await thread.aclose()
    with pytest.raises(BridgeClosed):
        await asyncio.wait_for(waiting, 5.0)
    with pytest.raises(BridgeClosed):
        await thread.call(forever)


async def test_run_blocking_is_for_synchronous_start_up(bridge: TrioThread) -> None:
    async def answer() -> int:
        return 7

    async def slow() -> None:
        await trio.sleep(10)

    assert await asyncio.to_thread(bridge.run_blocking, answer, timeout=2.0) == 7
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(bridge.run_blocking, slow, timeout=0.1)


# --- trio -> asyncio -------------------------------------------------------------------------


async def test_trio_awaits_a_coroutine_on_the_asyncio_loop(bridge: TrioThread) -> None:
    loop_thread = threading.current_thread().name

    async def on_asyncio(x: int) -> tuple[str, int]:
        await asyncio.sleep(0.01)
        return threading.current_thread().name, x + 1

    async def from_trio() -> tuple[str, int]:
        return await bridge.to_asyncio(on_asyncio(1))

    assert await bridge.call(from_trio) == (loop_thread, 2)


async def test_an_asyncio_exception_reaches_trio(bridge: TrioThread) -> None:
    async def fails() -> None:
        raise KeyError("chunk 3")

    async def from_trio() -> str:
        try:
            await bridge.to_asyncio(fails())
        except KeyError as exc:
            return f"caught {exc}"
        return "not raised"

    assert await bridge.call(from_trio) == "caught 'chunk 3'"


async def test_cancelling_the_trio_side_cancels_the_asyncio_task(bridge: TrioThread) -> None:
    cancelled = asyncio.Event()

    async def on_asyncio() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def from_trio() -> bool:
        with trio.move_on_after(0.1) as scope:
            await bridge.to_asyncio(on_asyncio())
        return scope.cancelled_caught

    assert await bridge.call(from_trio) is True
    await asyncio.wait_for(cancelled.wait(), 5.0)


# --- heads -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (16384, b"\x80\x80\x01")],
)  # fmt: skip
def test_uvarint_table(value: int, encoded: bytes) -> None:
    assert uvarint(value) == encoded


@pytest.mark.parametrize(
    "head",
    [ChunkRequest("a" * 64, 0, 16), ChunkAnswer(Status.OK), ChunkAnswer(Status.BUSY, "all 4")],
)
def test_a_head_decodes_from_any_split_and_keeps_what_follows(
    head: ChunkRequest | ChunkAnswer,
) -> None:
    kind: Any = type(head)
    size = len(encode_head(head))
    data = encode_head(head) + b"FRAMES"
    for cut in range(len(data) + 1):
        decoder = HeadDecoder(kind)
        first = decoder.feed(data[:cut])
        if cut < size:
            assert first is None
            assert decoder.feed(data[cut:]) == head
            assert decoder.rest == b"FRAMES"
        else:
            assert first == head
            assert decoder.rest == data[size:cut]  # the rest comes after, as frames


@pytest.mark.parametrize(
    ("data", "message"),
    [(uvarint(MAX_HEAD_BYTES + 1), "exceeds"), (b"\xff\xff\xff\x01", "too long"),
     (b"\x03abc", "bad head"), (encode_head(ChunkAnswer(Status.OK)), "bad head")],
)  # fmt: skip
def test_bad_request_heads_are_refused_naming_the_fault(data: bytes, message: str) -> None:
    with pytest.raises(BadHead, match=message):
        HeadDecoder(ChunkRequest).feed(data)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(Status.OK, FailureKind.NONE), (Status.NOT_FOUND, FailureKind.NOT_FOUND),
     (Status.BUSY, FailureKind.BUSY), (Status.BAD_REQUEST, FailureKind.PROTOCOL)],
)  # fmt: skip
def test_answers_map_to_the_failure_kinds_http_uses(status: Status, kind: FailureKind) -> None:
    assert ChunkAnswer(status).failure is kind


# --- the key ---------------------------------------------------------------------------------


def test_the_key_is_made_once_private_and_read_back(tmp_path: Path) -> None:
    first = load_or_create_key(tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
    again = load_or_create_key(tmp_path / "data")
    assert again.private_key.serialize() == first.private_key.serialize()
    assert again.public_key.serialize() == first.public_key.serialize()


def test_a_damaged_key_file_is_an_error_naming_it_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    path.write_bytes(b"not a key")
    with pytest.raises(BadPeerKey, match=str(path)):
        load_or_create_key(tmp_path)
    assert path.read_bytes() == b"not a key"
