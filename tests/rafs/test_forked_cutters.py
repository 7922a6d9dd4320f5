"""Files cut in forked worker processes give the blob the thread pool gives, and the
workers never outlive the writer, whatever happens to the build.

The workers write the bytes to store into shared slots that are reused as the build goes
on; a slot reused too early would put another batch's bytes into the blob. The slow file
thread below makes that show: batches whose chunks are all known already (nothing to
write) run ahead of the batches still being written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rafs import BuildError
from rafs._blobwriter import BlobWriter
from rafs._digest import Compressor, Digester
from rafs._model import ChunkInfo

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this system")


def _writer(blob_dir: Path, chunk_size: int, compressor: Compressor, forked: bool) -> BlobWriter:
    blob_dir.mkdir()
    writer = BlobWriter(
        blob_dir, chunk_size=chunk_size, compressor=compressor, digester=Digester.BLAKE3
    )
    writer.forked = forked
    return writer


def _tree(root: Path) -> list[tuple[int, bytes, int]]:
    """Files in rounds: new content (random and text), then copies of it (all known),
    empty files, and files of several chunks; (key, path, size) in build order."""
    root.mkdir()
    files: list[tuple[int, bytes, int]] = []
    for round_ in range(4):
        originals = []
        for n in range(300):
            data = os.urandom(700 + n) if n % 2 else f"line {round_} {n}\n".encode() * 40
            originals.append(data)
        originals.append(os.urandom(5 * 4096 + 123))  # several chunks of 4 KiB
        originals.append(b"")
        for copy in range(3):  # the copies: whole batches with nothing new to store
            for n, data in enumerate(originals):
                path = root / f"r{round_}-c{copy}-{n:03}"
                path.write_bytes(data)
                files.append((len(files), bytes(path), len(data)))
    return files


def _build(writer: BlobWriter, files: list[tuple[int, bytes, int]]) -> tuple[bytes, list[object]]:
    try:
        records: list[tuple[int, tuple[ChunkInfo, ...]]] = list(writer.add_files(files))
        info = writer.finish()
    except BaseException:
        writer.abort()
        raise
    assert info is not None
    blob = (writer.blob_dir / info.blob_id).read_bytes()
    return blob, [(info.blob_id, info.compressed_size, writer.reused_chunks), *records]


@pytest.mark.parametrize(
    ("chunk_size", "compressor"),
    [(0x1000, Compressor.ZSTD), (0x1000, Compressor.NONE), (0x100000, Compressor.ZSTD)],
)
def test_forked_workers_give_the_bytes_and_records_of_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_size: int, compressor: Compressor
) -> None:
    files = _tree(tmp_path / "src")
    slow_append = BlobWriter._append

    def append_slowly(self: BlobWriter, stored: list[bytes | memoryview]) -> None:
        time.sleep(0.003)  # the file thread lags: slots must wait for it
        slow_append(self, stored)

    monkeypatch.setattr(BlobWriter, "_append", append_slowly)
    forked = _writer(tmp_path / "forked", chunk_size, compressor, forked=True)
    threads = _writer(tmp_path / "threads", chunk_size, compressor, forked=False)
    forked_blob, forked_records = _build(forked, files)
    assert forked._forked is not None  # the workers did the cutting
    threads_blob, threads_records = _build(threads, files)
    assert forked_records == threads_records
    assert forked_blob == threads_blob
    assert forked.reused_chunks > 2 * 300 * 4  # the copies were not stored again


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_workers_are_reaped_by_finish(tmp_path: Path) -> None:
    files = _tree(tmp_path / "src")[:50]
    writer = _writer(tmp_path / "blobs", 0x1000, Compressor.ZSTD, forked=True)
    results = writer.add_files(files)
    next(results)
    assert writer._forked is not None
    pids = list(writer._forked._pids)
    assert len(pids) == writer.threads and not any(_gone(p) for p in pids)
    list(results)
    writer.finish()
    assert all(_gone(p) for p in pids)


def test_a_file_gone_before_a_worker_reads_it_names_it(tmp_path: Path) -> None:
    files = _tree(tmp_path / "src")[:40]
    missing = tmp_path / "src" / "vanished"
    files.insert(20, (999, bytes(missing), 10))
    writer = _writer(tmp_path / "blobs", 0x1000, Compressor.ZSTD, forked=True)
    with pytest.raises(BuildError, match=r"cannot read .*vanished"):
        list(writer.add_files(files))
    assert writer._forked is not None
    pids = list(writer._forked._pids)
    writer.abort()
    assert all(_gone(p) for p in pids)
    assert list((tmp_path / "blobs").iterdir()) == []


@pytest.mark.parametrize(
    ("signum", "raised", "match"),
    [
        (signal.SIGKILL, BuildError, r"chunk worker \d+ was killed by signal 9 before"),
        (signal.SIGINT, KeyboardInterrupt, None),  # Ctrl-C: the parent's own may come later
    ],
)
def test_a_worker_killed_mid_build_is_an_error_not_a_hang(
    tmp_path: Path, signum: int, raised: type[BaseException], match: str | None
) -> None:
    files = _tree(tmp_path / "src")
    writer = _writer(tmp_path / "blobs", 0x1000, Compressor.ZSTD, forked=True)
    killed = []

    def walk() -> Iterator[tuple[int, bytes, int]]:
        for n, item in enumerate(files):
            if n == 200 and writer._forked is not None:  # once the workers are busy
                pid = writer._forked._pids[0]
                os.kill(pid, signum)
                killed.append(pid)
            yield item

    with pytest.raises(raised, match=match):
        list(writer.add_files(walk()))
    assert killed
    writer.abort()
    assert all(_gone(p) for p in killed)
    assert list((tmp_path / "blobs").iterdir()) == []


def test_a_build_on_another_thread_forks_its_workers_too(tmp_path: Path) -> None:
    files = _tree(tmp_path / "src")[:100]
    forked = _writer(tmp_path / "forked", 0x1000, Compressor.ZSTD, forked=True)
    threads = _writer(tmp_path / "threads", 0x1000, Compressor.ZSTD, forked=False)
    done: list[tuple[bytes, list[object]]] = []
    worker = threading.Thread(target=lambda: done.append(_build(forked, files)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and done
    assert done[0] == _build(threads, files)


def test_a_refused_fork_falls_back_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = _tree(tmp_path / "src")[:300]

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    threads = _writer(tmp_path / "threads", 0x1000, Compressor.ZSTD, forked=False)
    expected = _build(threads, files)
    monkeypatch.setattr(os, "fork", no_fork)
    refused = _writer(tmp_path / "refused", 0x1000, Compressor.ZSTD, forked=True)
    assert _build(refused, files) == expected
    assert refused._forked is None and not refused.forked
    assert "cannot fork workers: [Errno 11]" in caplog.text


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


def test_ctrl_c_stops_the_build_and_its_workers_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    block = os.urandom(1 << 20)
    for n in range(64):  # 256 MiB to read, hash and compress: long enough to interrupt
        (src / f"f{n}").write_bytes(block[n:] + block[:n] + block + block + block)
    out = tmp_path / "out"
    tool = os.path.join(os.path.dirname(sys.executable), "nydus-image")
    argv = [tool, "create", "-B", str(out / "boot"), "-D", str(out / "blobs"), str(src)]
    build = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (workers := _children(build.pid)) and build.poll() is None:
            assert time.monotonic() < deadline, "no worker was forked"
            time.sleep(0.005)
        assert workers, "the build ended before it could be interrupted"
        os.killpg(build.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
        _, err = build.communicate(timeout=30)
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
            build.wait()
    assert build.returncode == 130, err
    assert err.strip().splitlines() == ["nydus-image: error: interrupted"]
    assert all(_gone(p) for p in workers)
    assert not (out / "boot").exists()
    assert list((out / "blobs").iterdir()) == []
