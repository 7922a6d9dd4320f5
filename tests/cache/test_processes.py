"""Several processes sharing one cache directory, and writers killed with SIGKILL.

The children are `python -m tests.cache.worker` processes (see there); they rebuild the
same blobs from their ids, so the parent checks every byte they stored.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from rafs._cache import BlobCache
from rafs._chunkmap import ChunkMap, create_map, decode_indices
from rafs._chunksource import verify_chunk

from .blobs import Blob
from .worker import blob_named

REPO = Path(__file__).resolve().parents[2]
SHM = Path("/dev/shm")


class Children:
    """Worker processes of one test; any still running at teardown are killed and reaped."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(
        self, mode: str, directory: Path, blob: Blob, start_at: float, indices: Sequence[int] = ()
    ) -> subprocess.Popen[str]:
        args = (mode, directory, blob.blob_id, len(blob.chunks), start_at, *indices)
        return self.spawn_worker(*args)

    def spawn_worker(self, *args: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cache.worker", *(str(a) for a in args)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def reap(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def children() -> Iterator[Children]:
    spawned = Children()
    yield spawned
    spawned.reap()


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{proc.args!r} exited {proc.returncode}: {err}"


def kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate()


def verified_present(directory: Path, blob: Blob) -> list[int]:
    """The chunks a fresh cache says are present, after checking each one's bytes."""
    with BlobCache(directory) as cache:
        present = decode_indices(cache.present_indices(blob.blob_id))
        for index in present:
            stored = cache.read_stored(blob.blob_id, blob.chunks[index])
            assert stored is not None, f"chunk {index} vanished"
            verify_chunk(blob.ref, blob.chunks[index], stored)  # raises on a bad chunk
        return present


@pytest.fixture(params=["disk", "tmpfs"])
def cache_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """On tmpfs `fdatasync` costs nothing, so writers collide far more often."""
    if request.param == "disk":
        yield tmp_path
        return
    if not SHM.is_dir():
        pytest.skip(f"no tmpfs at {SHM}")
    with tempfile.TemporaryDirectory(dir=SHM) as directory:
        yield Path(directory)


def test_writers_of_overlapping_chunks_and_a_reader_share_one_blob(
    cache_dir: Path, children: Children
) -> None:
    count = 1200 if cache_dir.is_relative_to(SHM) else 160
    blob = blob_named("shared", count)
    start_at = time.time() + 0.5
    writers = [
        children.spawn("put", cache_dir, blob, start_at, [i for i in range(count) if i % 4 != k])
        for k in range(4)
    ]  # every chunk is written by three writers; neighbours share bitmap bytes
    reader = children.spawn("read", cache_dir, blob, start_at)
    for proc in [*writers, reader]:
        finish(proc)
    assert verified_present(cache_dir, blob) == list(range(count))
    with BlobCache(cache_dir) as cache:
        assert cache.data_path("shared").read_bytes() == blob.image()


def test_processes_setting_neighbouring_bits_in_step_lose_none(
    cache_dir: Path, children: Children
) -> None:
    count, n = 40000 if cache_dir.is_relative_to(SHM) else 4000, 4
    create_map(cache_dir / "bits.chunk_map")
    start_at = time.time() + 0.3
    setters = [
        children.spawn_worker("bits", cache_dir, "bits", count, start_at, k, n) for k in range(n)
    ]
    for proc in setters:
        finish(proc)
    chunk_map = ChunkMap.open(cache_dir / "bits.chunk_map", writable=False)
    assert chunk_map is not None
    with chunk_map:
        assert decode_indices(chunk_map.bitmap()) == list(range(count))


def test_eviction_racing_with_writers_never_leaves_a_bit_over_wrong_bytes(
    tmp_path: Path, children: Children
) -> None:
    blobs = [blob_named("x", 40), blob_named("y", 40)]
    start_at = time.time() + 0.5
    evictor = children.spawn("evict", tmp_path, blobs[0], start_at)
    writers = [
        children.spawn("put", tmp_path, b, start_at, range(40)) for b in blobs for _ in range(3)
    ]
    for proc in writers:
        finish(proc)
    kill(evictor)
    for blob in blobs:
        verified_present(tmp_path, blob)


def test_kill_9_at_random_moments_never_leaves_a_bad_chunk_marked_present(
    tmp_path: Path, children: Children
) -> None:
    rng = random.Random()
    touched = []
    for iteration in range(20):
        blob = blob_named("crash" if iteration % 2 else f"fresh{iteration}", 48)
        touched.append(blob)
        proc = children.spawn("churn", tmp_path, blob, 0)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0, 0.25))
        kill(proc)
        verified_present(tmp_path, blob)
    crash = touched[1]
    with BlobCache(tmp_path) as cache:  # still usable: the rest stores and reads back
        cache.put_many(crash.ref, [crash.fetched(i) for i in range(48)])
    assert verified_present(tmp_path, crash) == list(range(48))
