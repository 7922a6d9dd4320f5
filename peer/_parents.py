"""Choosing and dropping parents, and cutting wanted chunks into batches (pure, no I/O).

Rule: nothing here awaits, sleeps or reads a clock; the fetcher tells a `ParentBoard` what
happened (chunks and bytes in some seconds, a failure of some kind, a wrong digest) and
asks it whom to use. A parent that sent one wrong byte is distrusted for that blob for the
life of the daemon (the `distrusted` set is shared); a parent that fails is dropped for
the rest of one fetch; a parent much slower than the best one stops getting batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from protocol import FailureKind, Parent, ParentResult
from protocol._types import MAX_MISMATCHED


@dataclass(frozen=True, slots=True)
class SwitchPolicy:
    """When to stop using a parent within one fetch."""

    max_failures: int = 1  # connect, timeout, protocol failures before a parent is dropped
    max_busy: int = 3  # 503 answers tolerated before a parent is dropped
    slow_ratio: float = 0.2  # drop a parent slower than this fraction of the best ...
    min_sample_bytes: int = 1 << 20  # ... once both moved this many bytes


@dataclass(slots=True)
class _Tally:
    """What one parent did: cumulative for decisions, plus what is not reported yet."""

    chunks_ok: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failures: dict[FailureKind, int] = field(default_factory=dict)
    dropped: bool = False
    unreported: ParentResult | None = None

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


class ParentBoard:
    """The parents of one fetch of one blob: whom to use, whom to drop, what to report."""

    def __init__(
        self, blob_id: str, distrusted: set[str], policy: SwitchPolicy | None = None
    ) -> None:
        self.blob_id = blob_id
        self.distrusted = distrusted
        self.policy = policy or SwitchPolicy()
        self._tallies: dict[str, _Tally] = {}

    def _tally(self, parent_id: str) -> _Tally:
        return self._tallies.setdefault(parent_id, _Tally())

    def usable(self, parent_id: str) -> bool:
        """Neither distrusted for the blob nor dropped in this fetch."""
        tally = self._tallies.get(parent_id)
        return parent_id not in self.distrusted and not (tally and tally.dropped)

    def record_chunks(self, parent_id: str, chunks: int, size: int, seconds: float) -> None:
        tally = self._tally(parent_id)
        tally.chunks_ok += chunks
        tally.bytes += size
        tally.seconds += seconds
        _merge(tally, ParentResult(parent_id=parent_id, chunks_ok=chunks, bytes=size,
                                   duration_ms=_ms(seconds)))  # fmt: skip

    def record_failure(self, parent_id: str, kind: FailureKind) -> None:
        """Count a failed request; drop the parent once the policy says so."""
        tally = self._tally(parent_id)
        tally.failures[kind] = tally.failures.get(kind, 0) + 1
        limit = self.policy.max_busy if kind is FailureKind.BUSY else self.policy.max_failures
        if kind is not FailureKind.NOT_FOUND and tally.failures[kind] >= limit:
            tally.dropped = True
        _merge(tally, ParentResult(parent_id=parent_id, failure=kind))

    def record_mismatch(self, parent_id: str, indices: Sequence[int]) -> None:
        """A wrong digest: distrust the parent for this blob, for good."""
        self.distrusted.add(parent_id)
        tally = self._tally(parent_id)
        tally.dropped = True
        result = ParentResult(
            parent_id=parent_id,
            failure=FailureKind.DIGEST_MISMATCH,
            mismatched=tuple(indices[:MAX_MISMATCHED]),
        )
        _merge(tally, result)

    def is_slow(self, parent_id: str) -> bool:
        """Much slower than the fastest parent measured, while another is usable."""
        tally = self._tallies.get(parent_id)
        sample = self.policy.min_sample_bytes
        if tally is None or tally.bytes < sample:
            return False
        rates = [
            (t.rate, pid)
            for pid, t in self._tallies.items()
            if t.bytes >= sample and pid != parent_id and self.usable(pid)
        ]
        return bool(rates) and tally.rate < self.policy.slow_ratio * max(rates)[0]

    def failure_count(self, parent_id: str) -> int:
        tally = self._tallies.get(parent_id)
        return sum(tally.failures.values()) if tally else 0

    def take_results(self) -> tuple[ParentResult, ...]:
        """What happened since the last call, one result per parent."""
        found = []
        for tally in self._tallies.values():
            if tally.unreported is not None:
                found.append(tally.unreported)
                tally.unreported = None
        return tuple(found)


def _ms(seconds: float) -> int:
    return min(86_400_000, max(0, round(seconds * 1000)))


def _merge(tally: _Tally, new: ParentResult) -> None:
    """Fold `new` into the parent's unreported result; the worst failure wins."""
    old = tally.unreported
    if old is None:
        tally.unreported = new
        return
    failure = new.failure if _SEVERITY[new.failure] >= _SEVERITY[old.failure] else old.failure
    tally.unreported = ParentResult(
        parent_id=old.parent_id,
        chunks_ok=old.chunks_ok + new.chunks_ok,
        bytes=old.bytes + new.bytes,
        duration_ms=min(86_400_000, old.duration_ms + new.duration_ms),
        failure=failure,
        mismatched=(old.mismatched + new.mismatched)[:MAX_MISMATCHED],
    )


_SEVERITY = {
    FailureKind.NONE: 0,
    FailureKind.NOT_FOUND: 1,
    FailureKind.BUSY: 2,
    FailureKind.OTHER: 3,
    FailureKind.PROTOCOL: 4,
    FailureKind.TIMEOUT: 5,
    FailureKind.CONNECT: 6,
    FailureKind.DIGEST_MISMATCH: 7,
}


# --- batches ----------------------------------------------------------------------------


def cut_batches(
    indices: Iterable[int], sizes: Mapping[int, int], max_chunks: int, max_bytes: int
) -> list[tuple[int, ...]]:
    """Runs of consecutive indices, each cut at `max_chunks` chunks or `max_bytes` bytes
    (a single chunk larger than `max_bytes` is a batch of its own)."""
    batches: list[list[int]] = []
    size = 0
    for index in sorted(set(indices)):
        current = batches[-1] if batches else None
        fits = current is not None and current[-1] + 1 == index and len(current) < max_chunks
        if not fits or size + sizes[index] > max_bytes:
            batches.append([])
            size = 0
        batches[-1].append(index)
        size += sizes[index]
    return [tuple(batch) for batch in batches]


@dataclass(slots=True)
class Batch:
    """Consecutive chunks to fetch from one of `parents` (best first)."""

    indices: tuple[int, ...]
    parents: tuple[Parent, ...]
    tried: frozenset[str] = frozenset()

    @property
    def start(self) -> int:
        return self.indices[0]

    @property
    def end(self) -> int:
        return self.indices[-1] + 1


class BatchQueue:
    """Batches waiting for a parent; a batch a parent could not finish goes back for the
    others, never to the same parent again."""

    def __init__(self, batches: Iterable[Batch]) -> None:
        self._waiting = list(batches)
        self.in_flight = 0

    def take(self, parent_id: str, usable: bool = True) -> Batch | None:
        """The first waiting batch this parent may serve and has not tried yet."""
        if not usable:
            return None
        for position, batch in enumerate(self._waiting):
            if parent_id not in batch.tried and any(p.peer_id == parent_id for p in batch.parents):
                self.in_flight += 1
                return self._waiting.pop(position)
        return None

    def finish(self, batch: Batch, parent_id: str, missing: Sequence[int]) -> None:
        """The parent is done with `batch`; `missing` chunks (not received) wait again."""
        self.in_flight -= 1
        if missing:
            self._waiting.insert(0, Batch(tuple(missing), batch.parents, batch.tried | {parent_id}))

    def leftover(self) -> list[int]:
        """Chunks no parent delivered (once nothing is in flight)."""
        return sorted(index for batch in self._waiting for index in batch.indices)

    def __bool__(self) -> bool:
        return bool(self._waiting)
