"""The pure parts of the peer, no I/O: rate limiting, parent choice and switching, batches,
origin URLs, command-line values, and the public API."""

from __future__ import annotations

import pytest

import peer
from peer import ParentBoard, RegistryBlobUrl, SwitchPolicy, TokenBucket, parse_rate
from peer._announce import _batches
from peer._errors import OriginUrlError, UsageError
from peer._options import MountSpec, parse_listen
from peer._parents import Batch, BatchQueue, cut_batches
from peer._session import Backoff
from protocol import MAX_RANGES, Announce, ChunkSet, FailureKind, Parent

BLOB = "ab" * 32

# --- rates and the token bucket -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100", 100.0),
        ("100K", 100_000.0),
        ("20MB/s", 20_000_000.0),
        ("512KiB", 512 * 1024.0),
        ("1.5M", 1_500_000.0),
        ("800Mbit", 100_000_000.0),
        ("1Gbps", 1e9),
    ],
)
def test_rates_parse(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "-1M", "0", "10Q"])
def test_bad_rates_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_rate(text)


def test_a_full_bucket_lets_a_burst_go_then_paces_at_the_rate() -> None:
    bucket = TokenBucket(rate=1000, burst=500, now=0.0)
    assert bucket.delay(500, 0.0) == 0.0
    bucket.take(500, 0.0)
    assert bucket.delay(100, 0.0) == pytest.approx(0.1)
    assert bucket.delay(100, 0.1) == 0.0
    bucket.take(100, 0.1)
    assert bucket.delay(250, 0.1) == pytest.approx(0.25)


def test_a_request_larger_than_the_burst_goes_when_full_and_is_paid_off_after() -> None:
    bucket = TokenBucket(rate=1000, burst=100, now=0.0)
    assert bucket.delay(1000, 0.0) == 0.0  # full: a big frame is never refused
    bucket.take(1000, 0.0)
    assert bucket.level == -900
    assert bucket.delay(1, 0.0) == pytest.approx(0.901)


def test_the_bucket_never_fills_past_its_burst() -> None:
    bucket = TokenBucket(rate=1000, burst=100, now=0.0)
    assert bucket.delay(100, 50.0) == 0.0
    assert bucket.level == 100


# --- parents ------------------------------------------------------------------------


def test_a_failing_parent_is_dropped_for_the_fetch() -> None:
    board = ParentBoard(BLOB, set(), SwitchPolicy(max_failures=2))
    board.record_failure("p1", FailureKind.CONNECT)
    assert board.usable("p1")
    board.record_failure("p1", FailureKind.TIMEOUT)
    assert board.usable("p1")  # per kind
    board.record_failure("p1", FailureKind.CONNECT)
    assert not board.usable("p1")


def test_busy_is_tolerated_longer_and_not_found_never_drops() -> None:
    board = ParentBoard(BLOB, set(), SwitchPolicy(max_failures=1, max_busy=3))
    for _ in range(5):
        board.record_failure("p1", FailureKind.NOT_FOUND)
    assert board.usable("p1")
    board.record_failure("p2", FailureKind.BUSY)
    board.record_failure("p2", FailureKind.BUSY)
    assert board.usable("p2")
    board.record_failure("p2", FailureKind.BUSY)
    assert not board.usable("p2")


def test_a_wrong_digest_distrusts_the_parent_for_the_blob_in_every_later_fetch() -> None:
    distrusted: set[str] = set()
    ParentBoard(BLOB, distrusted).record_mismatch("evil", [3, 4])
    later = ParentBoard(BLOB, distrusted)
    assert not later.usable("evil")
    assert later.usable("good")


def test_a_much_slower_parent_is_slow_only_while_a_faster_one_is_usable() -> None:
    board = ParentBoard(BLOB, set(), SwitchPolicy(slow_ratio=0.25, min_sample_bytes=1000))
    board.record_chunks("fast", 10, 10_000, 0.01)  # 1 MB/s
    board.record_chunks("slow", 10, 10_000, 1.0)  # 10 kB/s
    board.record_chunks("fine", 10, 10_000, 0.02)  # 500 kB/s
    assert board.is_slow("slow")
    assert not board.is_slow("fine") and not board.is_slow("fast")
    board.record_failure("fast", FailureKind.CONNECT)
    board.record_failure("fine", FailureKind.CONNECT)
    assert not board.is_slow("slow")  # it is all that is left


def test_a_parent_is_not_judged_slow_before_enough_bytes() -> None:
    board = ParentBoard(BLOB, set(), SwitchPolicy(min_sample_bytes=1 << 20))
    board.record_chunks("fast", 1, 2 << 20, 0.01)
    board.record_chunks("slow", 1, 1000, 5.0)
    assert not board.is_slow("slow")


def test_results_are_merged_per_parent_with_the_worst_failure_and_taken_once() -> None:
    board = ParentBoard(BLOB, set())
    board.record_chunks("p1", 2, 2000, 0.5)
    board.record_chunks("p1", 1, 1000, 0.25)
    board.record_failure("p1", FailureKind.BUSY)
    board.record_failure("p1", FailureKind.TIMEOUT)
    board.record_failure("p1", FailureKind.NOT_FOUND)
    board.record_mismatch("p2", [7])
    results = {r.parent_id: r for r in board.take_results()}
    assert (results["p1"].chunks_ok, results["p1"].bytes, results["p1"].duration_ms) == (
        3,
        3000,
        750,
    )
    assert results["p1"].failure is FailureKind.TIMEOUT
    assert results["p2"].digest_mismatch and results["p2"].mismatched == (7,)
    assert board.take_results() == ()


# --- batches ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "max_chunks", "max_bytes", "batches"),
    [
        ([0, 1, 2, 3], 16, 1 << 20, [(0, 1, 2, 3)]),
        ([0, 1, 2, 3], 2, 1 << 20, [(0, 1), (2, 3)]),
        ([0, 1, 2, 3], 16, 250, [(0, 1), (2, 3)]),
        ([3, 0, 1, 7, 8], 16, 1 << 20, [(0, 1), (3,), (7, 8)]),
        ([5], 16, 10, [(5,)]),  # larger than max_bytes alone
        ([], 16, 100, []),
    ],
)
def test_batches_are_runs_cut_by_count_and_bytes(
    indices: list[int], max_chunks: int, max_bytes: int, batches: list[tuple[int, ...]]
) -> None:
    sizes = dict.fromkeys(range(10), 100)
    assert cut_batches(indices, sizes, max_chunks, max_bytes) == batches


def _parents(*ids: str) -> tuple[Parent, ...]:
    return tuple(Parent(peer_id=i, http_url=f"http://{i}") for i in ids)


def test_a_batch_a_parent_could_not_finish_goes_to_another_never_back() -> None:
    queue = BatchQueue([Batch((0, 1, 2), _parents("p1", "p2"))])
    batch = queue.take("p1")
    assert batch is not None and queue.in_flight == 1
    assert queue.take("p2") is None
    queue.finish(batch, "p1", [1, 2])
    assert queue.take("p1") is None
    again = queue.take("p2")
    assert again is not None and again.indices == (1, 2)
    queue.finish(again, "p2", [2])
    assert queue.take("p1") is None and queue.take("p2") is None
    assert queue.leftover() == [2] and queue.in_flight == 0


def test_a_parent_takes_only_batches_whose_plan_names_it() -> None:
    queue = BatchQueue([Batch((0,), _parents("p1")), Batch((5,), _parents("p2"))])
    first = queue.take("p2")
    assert first is not None and first.indices == (5,)
    assert queue.take("p2") is None
    assert queue.take("p1", usable=False) is None


# --- addresses and options ----------------------------------------------------------


def test_registry_blob_urls_round_trip_with_the_bootstrap_fragment() -> None:
    text = f"http://127.0.0.1:5000/v2/team/app/blobs/sha256:{BLOB}#nydus-bootstrap=sha256:{BLOB}"
    url = RegistryBlobUrl.parse(text)
    assert (url.base_url, url.repo, url.blob_id) == ("http://127.0.0.1:5000", "team/app", BLOB)
    assert url.bootstrap == f"sha256:{BLOB}"
    assert str(url) == text
    bare = RegistryBlobUrl.parse(text.split("#")[0])
    assert bare.bootstrap is None and str(bare) == text.split("#")[0]


@pytest.mark.parametrize(
    "text",
    [
        f"ftp://host/v2/app/blobs/sha256:{BLOB}",
        f"http://host/v2/app/manifests/sha256:{BLOB}",
        "http://host/v2/app/blobs/sha256:abc",
        f"http://host/v2/../blobs/sha256:{BLOB}",
    ],
)
def test_other_urls_are_refused(text: str) -> None:
    with pytest.raises(OriginUrlError):
        RegistryBlobUrl.parse(text)


def test_mount_specs_split_at_the_last_colon() -> None:
    spec = MountSpec.parse("127.0.0.1:5000/app:v1:/mnt/app")
    assert (spec.reference, str(spec.mountpoint)) == ("127.0.0.1:5000/app:v1", "/mnt/app")
    with pytest.raises(UsageError):
        MountSpec.parse("no-mountpoint")


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), (":0", ("0.0.0.0", 0)), ("65001", ("127.0.0.1", 65001)),
     ("[::1]:9", ("::1", 9))],
)  # fmt: skip
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


def test_registration_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(base=0.2, cap=1.0)
    assert [backoff.delay(n) for n in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(10_000) == 1.0


def test_the_public_api_is_pinned() -> None:
    assert sorted(peer.__all__) == peer.__all__
    entry_points = {"cli", "dfget"}  # console-script modules, not API
    assert set(peer.__all__) == {n for n in dir(peer) if not n.startswith("_")} - entry_points


def test_a_fragmented_bitmap_is_announced_in_messages_of_at_most_max_ranges() -> None:
    count = 2 * (2 * MAX_RANGES) + 2  # every other chunk: 2 * MAX_RANGES + 1 ranges
    chunks = ChunkSet.from_indices(count, range(0, count, 2))
    batches = list(_batches(chunks))
    assert [len(b) for b in batches] == [MAX_RANGES, MAX_RANGES, 1]
    sent = [Announce(peer_id="p", blob_id="a" * 64, chunk_count=count, ranges=b) for b in batches]
    assert ChunkSet(count, sum(m.chunks().bits for m in sent)) == chunks  # each chunk once
    assert list(_batches(ChunkSet(count))) == []
