"""Forked worker processes that read, hash and compress batches of chunks.

A `BlobWriter` storing the files of a directory sends their chunks here. On a tree of
small files the per-chunk Python (open, pread, close, calling blake3 and zstandard) is
as much work as the compression, and in threads it takes turns on one GIL with the
walk and the inode records of the main thread: the build used ~1.4 of 2 cores. A
process has its own interpreter, so reading, hashing and compressing run beside the
main thread, not in turns with it.

The stored bytes never go through a pipe (pickling 170 MB of compressed chunks through
pipes cost what the processes saved, when tried with `ProcessPoolExecutor`): each
worker has an anonymous shared mapping, made before the fork, with a slot per batch in
flight, and writes the bytes to store there, back to back; the pipe carries only the
tasks (paths and offsets) and the per-chunk results (digest, size, length stored,
compressed or not). The caller hands out slots so that a slot is reused only after the
result of the batch that used it was taken (`BlobWriter` keeps `workers * slots`
batches in flight and takes results in order, which does that).

Workers are forked, not spawned: a spawned interpreter takes ~0.1 s to import blake3
and zstandard, a fork ~a millisecond, and the child runs only its loop (no locks of the
parent's other threads are taken there) and leaves with `os._exit`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import NoReturn

from ._errors import BuildError

# A chunk to read: `length` bytes at `offset` of the file at `path` (`size` long).
Read = tuple[bytes, int, int, int]
# Where a chunk's bytes come from: read from a file, given, or none (an empty file).
Source = bytes | Read | None
# A worker's result for one chunk: (digest, size, length stored in the slot, compressed),
# the length -1 when the chunk was known already and nothing was stored; None for an
# empty file.
Result = tuple[bytes, int, int, bool] | None
# A chunk as the writer takes it: (digest, size, bytes to store or None, compressed).
Cut = tuple[bytes, int, bytes | memoryview | None, bool]

ReadChunk = Callable[[bytes, int, int, int], bytes]

_STOPS = {signal.SIGINT, signal.SIGTERM}


def cut(
    source: Source,
    read_chunk: ReadChunk,
    digest_of: Callable[[bytes], bytes],
    compress: Callable[[bytes], bytes],
    known: Mapping[tuple[bytes, int], object],
) -> Cut | None:
    """Read, hash and compress one chunk (run once per chunk, in threads or workers):
    None for an empty file; no bytes to store for a chunk in `known`; the raw bytes when
    compressing does not make them smaller."""
    if source is None:
        return None
    data = source if isinstance(source, bytes) else read_chunk(*source)
    digest = digest_of(data)
    size = len(data)
    if (digest, size) in known:
        return digest, size, None, False
    packed = compress(data)
    if len(packed) < size:
        return digest, size, packed, True
    return digest, size, data, False


class ForkedCutters:
    """`workers` processes, each with `slots` slots of `slot_size` bytes.

    `digest_of`, `compress` and `known` are used in the children as they were at the
    fork: `known` only saves compressing chunks that will not be stored.
    """

    def __init__(
        self,
        workers: int,
        slots: int,
        slot_size: int,
        *,
        read_chunk: ReadChunk,
        digest_of: Callable[[bytes], bytes],
        compress: Callable[[], Callable[[bytes], bytes]],
        known: Mapping[tuple[bytes, int], object],
    ) -> None:
        self.workers = workers
        self.slots = slots
        self.slot_size = slot_size
        self._conns: list[Connection] = []
        self._pids: list[int] = []
        self._arenas: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._sent = 0  # batches submitted, to choose worker and slot
        try:
            for _ in range(workers):
                arena = mmap.mmap(-1, slots * slot_size)  # shared, anonymous: kept across fork
                ours, theirs = Pipe()
                # Ctrl-C waits until the child is on the list (so it is reaped), and the
                # child takes it only once its handlers are the default ones.
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
                try:
                    pid = os.fork()
                    if pid == 0:  # pragma: no cover - the child; measured through the parent
                        for other in [ours, *self._conns]:  # only the parent holds those
                            other.close()
                        _child(theirs, arena, slot_size, read_chunk, digest_of, compress, known)
                    self._pids.append(pid)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                theirs.close()
                self._conns.append(ours)
                self._arenas.append(arena)
                self._views.append(memoryview(arena))
        except BaseException:
            self.kill()
            raise

    def submit(self, sources: Sequence[Source]) -> _Reply:
        """Send a batch to the next worker, into its next slot; take it back in order."""
        n = self._sent
        self._sent += 1
        worker = n % self.workers
        slot = (n // self.workers) % self.slots
        try:
            self._conns[worker].send((slot, sources))
        except OSError:
            self._raise_death(worker)
        base = slot * self.slot_size
        return _Reply(self, worker, self._views[worker][base : base + self.slot_size])

    def _raise_death(self, worker: int) -> NoReturn:
        """A worker's pipe closed: say how it died. Ctrl-C reaches the whole process
        group, so a worker stopped by SIGINT means the build was interrupted."""
        pid = self._pids[worker]
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 0
        if os.WIFSIGNALED(status):
            if os.WTERMSIG(status) == signal.SIGINT:
                raise KeyboardInterrupt
            died = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            died = f"exited with status {os.waitstatus_to_exitcode(status)}"
        raise BuildError(f"chunk worker {pid} {died} before finishing its batch")

    def close(self) -> None:
        """Stop the workers after their last batch; wait for them."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        self._reap()

    def kill(self) -> None:
        """Stop the workers now (on a failure or an interrupt)."""
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        for pid in self._pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._pids.clear()
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        # A failed build's traceback may still hold views of a slot: then the mapping
        # is left to be unmapped when the last view goes.
        with contextlib.suppress(BufferError):
            for view in self._views:
                view.release()
            for arena in self._arenas:
                arena.close()
        self._views.clear()
        self._arenas.clear()


class _Reply:
    """One batch's result, to be taken (`result`) in the order the batches were sent."""

    __slots__ = ("_owner", "_slot", "_worker")

    def __init__(self, owner: ForkedCutters, worker: int, slot: memoryview) -> None:
        self._owner = owner
        self._worker = worker
        self._slot = slot

    def result(self) -> list[Cut | None]:
        """The batch's cuts; stored bytes are views of the slot, valid until it is reused."""
        conn = self._owner._conns[self._worker]
        try:
            reply: list[Result] | str = conn.recv()
        except (EOFError, OSError):
            self._owner._raise_death(self._worker)
        if isinstance(reply, str):
            raise BuildError(reply)
        slot = self._slot
        pos = 0
        cuts: list[Cut | None] = []
        for r in reply:
            if r is None:
                cuts.append(None)
                continue
            digest, size, stored, compressed = r
            if stored < 0:
                cuts.append((digest, size, None, False))
                continue
            cuts.append((digest, size, slot[pos : pos + stored], compressed))
            pos += stored
        return cuts


def _child(
    conn: Connection,
    arena: mmap.mmap,
    slot_size: int,
    read_chunk: ReadChunk,
    digest_of: Callable[[bytes], bytes],
    compress_for: Callable[[], Callable[[bytes], bytes]],
    known: Mapping[tuple[bytes, int], object],
) -> None:  # pragma: no cover - runs in the forked child
    status = 0
    try:
        for signum in _STOPS:  # Ctrl-C stops the whole group at once
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
        _serve(conn, memoryview(arena), slot_size, read_chunk, digest_of, compress_for(), known)
    except BaseException as exc:
        status = 1
        with contextlib.suppress(BaseException):
            conn.send(f"chunk worker {os.getpid()} failed: {exc!r}")
    finally:
        os._exit(status)  # no atexit handlers, no flushing of the parent's buffers


def _serve(
    conn: Connection,
    arena: memoryview,
    slot_size: int,
    read_chunk: ReadChunk,
    digest_of: Callable[[bytes], bytes],
    compress: Callable[[bytes], bytes],
    known: Mapping[tuple[bytes, int], object],
) -> None:  # pragma: no cover - runs in the forked child
    """Take batches until told to stop; one tight loop per batch, its body per chunk."""
    while True:
        try:
            task: tuple[int, list[Source]] | None = conn.recv()
        except EOFError:
            return  # the parent is gone
        if task is None:
            return
        slot, sources = task
        pos = start = slot * slot_size
        results: list[Result] = []
        try:
            for source in sources:
                made = cut(source, read_chunk, digest_of, compress, known)
                if made is None:  # an empty file
                    results.append(None)
                    continue
                digest, size, out, compressed = made
                if out is None:  # a known chunk: nothing to store
                    results.append((digest, size, -1, False))
                    continue
                end = pos + len(out)
                if end > start + slot_size:
                    raise BuildError(f"a batch outgrew its slot of {slot_size} bytes")
                arena[pos:end] = out
                results.append((digest, size, len(out), compressed))
                pos = end
        except BuildError as exc:
            conn.send(str(exc))
            continue
        conn.send(results)
