"""The supernode's scheduling policy: a pure, synchronous core with no I/O.

Rule: nothing here touches a socket, a database, a clock or an event loop. Time comes in
as `now` (seconds on any monotonic origin); messages come in as `protocol` structs and
answers go out as `protocol` structs. The service persists what `drain_changes` hands it.

Availability is kept as one bitmap (a Python int) per (peer, blob), indexed per blob, so a
decision probes a handful of holders instead of every peer:

- candidates for a chunk are holders of it minus the requester, peers on the same host,
  peers blacklisted for the blob, expired peers and peers at their upload limit;
- they are ranked same zone first, then by free upload capacity, success rate and
  throughput; each range gets at most `max_parents`, and every range handed to a parent
  counts against its load until its next heartbeat or a report, so no parent runs hot;
- when a whole blob is wanted, ranges are ordered rarest first;
- a chunk that only seeds hold goes to at most `seed_fanout` askers at a time; the others
  are told to retry and then fetch it from those askers once they announce it, so a seed's
  link carries each chunk about `seed_fanout` times however many peers want it (the
  distribution tree Dragonfly builds; the seed's link is the swarm's bottleneck);
- a chunk nobody can serve becomes one seed task (however many peers ask) and the askers
  are told to retry; with no seed, at most `origin_limit` peers per chunk go to the origin;
- a digest mismatch blacklists the parent for that blob at once and halves its success;
- a real failure (not `busy`, which only means full) lowers the parent's success rate, and
  one that leaves it below `suspend_below` suspends the parent for `suspend_seconds`: it is
  named for no blob, takes no seed task and counts as no live seed; then it is eligible
  again on probation (success at least `probation_success`). Chunks held only by suspended
  holders never become a seed task (the seed holding them would not announce them again):
  like chunks a seed failed to fetch, they go to the origin for `origin_limit` askers.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from protocol import (
    Announce,
    ChunkSet,
    FailureKind,
    FromOrigin,
    FromParents,
    Heartbeat,
    HeartbeatAnswer,
    JobState,
    JobStatus,
    Leave,
    Parent,
    ParentResult,
    PieceResults,
    Plan,
    PreheatBlob,
    Register,
    RegisterAnswer,
    RetryLater,
    ScheduleAnswer,
    ScheduleRequest,
    SeedTask,
    SeedTaskFailed,
    Withdraw,
)
from protocol._chunkset import bits_from_ranges, iter_runs

from ._errors import SupernodeError

__all__ = [
    "BlobState",
    "ChunkCountMismatch",
    "PeerState",
    "PolicyChanges",
    "PolicyConfig",
    "PolicyError",
    "ReputationEvent",
    "Scheduler",
    "SchedulerStats",
    "UnknownJob",
    "UnknownPeer",
]

_THROUGHPUT_REF = 16 * 1024 * 1024  # bytes/s at which throughput scores one half
_MISMATCH_PENALTY = 0.5  # a digest mismatch halves the success rate
_SCORE_LOAD, _SCORE_SUCCESS, _SCORE_SPEED = 0.5, 0.3, 0.2


# --- configuration, errors, records -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Tunables of the policy; times in seconds, retry hints in milliseconds."""

    max_parents: int = 4
    scan_target: int = 8  # eligible holders to gather before a scan may stop early
    heartbeat_interval: float = 10.0
    peer_ttl: float = 30.0  # a peer silent this long is expired
    seed_retry_ms: int = 500  # retry hint while a seed fetches
    busy_retry_ms: int = 100  # retry hint while every holder is at its upload limit
    origin_retry_ms: int = 1_000  # retry hint once the origin allowance is used up
    origin_limit: int = 2  # peers per chunk sent to the origin when no seed exists
    origin_grant_ttl: float = 60.0  # an origin allowance is given back after this
    seed_fanout: int = 2  # askers per chunk sent to a seed while no ordinary peer holds it
    seed_grant_ttl: float = 3.0  # a seed allowance is given back after this
    relay_retry_ms: int = 100  # retry hint while a chunk travels from a seed to a peer
    seed_task_ttl: float = 60.0  # an unfinished seed task is dropped after this
    seed_failure_ttl: float = 30.0  # chunks a seed failed to fetch go to the origin this long
    seed_batch: int = 64  # seed tasks handed out per `take_seed_tasks`
    preheat_attempts: int = 3  # seed tasks per preheat blob before the job fails
    ewma_alpha: float = 0.3
    suspend_below: float = 0.25  # a real failure leaving success below this suspends ...
    suspend_seconds: float = 10.0  # ... the parent this long, ...
    probation_success: float = 0.5  # ... then it is back with at least this success


class PolicyError(SupernodeError):
    """Base of the errors the scheduling policy raises (part of the supernode's tree)."""


class UnknownPeer(PolicyError):
    """A message names a peer that is not registered (or has expired)."""

    def __init__(self, peer_id: str) -> None:
        super().__init__(f"peer {peer_id!r} is not registered")
        self.peer_id = peer_id


class UnknownJob(PolicyError):
    """A preheat job id that the scheduler does not know."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"preheat job {job_id!r} is unknown")
        self.job_id = job_id


class ChunkCountMismatch(PolicyError):
    """A message gives a blob a chunk count different from the one already known."""

    def __init__(self, blob_id: str, known: int, found: int) -> None:
        super().__init__(f"blob {blob_id} has {known} chunks, message says {found}")
        self.blob_id = blob_id
        self.known = known
        self.found = found


@dataclass(frozen=True, slots=True)
class ReputationEvent:
    """Something a parent did that changed its standing (for the audit table)."""

    peer_id: str
    kind: str  # a FailureKind value
    blob_id: str
    delta: float  # change of the success rate
    detail: str = ""


@dataclass(slots=True)
class PolicyChanges:
    """What changed since the last `drain_changes`, for write-behind persistence.

    `holdings` maps (peer, blob) to the peer's current chunks of the blob, or None when
    the holding was dropped (blacklisted). `blacklisted` pairs have "" for "every blob".
    """

    peers: dict[str, Register] = field(default_factory=dict)
    removed_peers: set[str] = field(default_factory=set)
    holdings: dict[tuple[str, str], ChunkSet | None] = field(default_factory=dict)
    blacklisted: set[tuple[str, str]] = field(default_factory=set)
    events: list[ReputationEvent] = field(default_factory=list)
    jobs: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return any(
            (
                self.peers,
                self.removed_peers,
                self.holdings,
                self.blacklisted,
                self.events,
                self.jobs,
            )
        )


@dataclass(slots=True)
class SchedulerStats:
    """Counters for metrics: decisions, and plans by kind (origin = back to source)."""

    decisions: int = 0
    parent_plans: int = 0
    retry_plans: int = 0
    origin_plans: int = 0
    seed_tasks: int = 0
    seed_failures: int = 0
    digest_mismatches: int = 0
    expired_peers: int = 0
    suspensions: int = 0


# --- state ------------------------------------------------------------------------------


class PeerState:
    """One registered peer: identity, addresses, load and reputation."""

    __slots__ = (
        "assigned",
        "capacity",
        "failures",
        "holdings",
        "host_name",
        "last_seen",
        "parent",
        "peer_id",
        "register",
        "seed",
        "success",
        "successes",
        "suspended_until",
        "throughput",
        "uploads",
        "zone",
    )

    def __init__(self, msg: Register, now: float) -> None:
        self.peer_id = msg.peer_id
        self.holdings: dict[str, _Holding] = {}
        self.uploads = 0  # as reported by the last heartbeat
        self.assigned = 0  # ranges handed to this peer since
        self.successes = 0
        self.failures = 0
        self.success = 1.0  # EWMA of results: 1 all good, 0 all failed
        self.throughput = 0.0  # EWMA bytes/s; 0 until measured
        self.suspended_until = 0.0  # no parent before this (0: not suspended)
        self.update(msg, now)

    def update(self, msg: Register, now: float) -> None:
        """Take a (re-)registration's addresses and limits; keep chunks and stats."""
        self.register = msg
        self.host_name = msg.host_name
        self.zone = msg.zone
        self.capacity = msg.upload_capacity
        self.seed = msg.seed
        self.parent = Parent(peer_id=msg.peer_id, http_url=msg.http_url, multiaddrs=msg.multiaddrs)
        self.last_seen = now

    @property
    def load(self) -> int:
        """Uploads reported at the last heartbeat plus ranges assigned since."""
        return self.uploads + self.assigned

    def score(self) -> float:
        """Higher is better: free capacity, success rate and speed, weighted."""
        free = 1.0 - min(1.0, self.load / self.capacity) if self.capacity else 0.0
        speed = self.throughput or _THROUGHPUT_REF
        speed_score = speed / (speed + _THROUGHPUT_REF)
        return _SCORE_LOAD * free + _SCORE_SUCCESS * self.success + _SCORE_SPEED * speed_score

    def __repr__(self) -> str:
        return f"PeerState({self.peer_id!r}, load={self.load}/{self.capacity})"


class _Holding:
    """The chunks one peer holds of one blob, with its slot in the blob's holder list."""

    __slots__ = ("bits", "peer", "slot")

    def __init__(self, peer: PeerState, slot: int) -> None:
        self.peer = peer
        self.bits = 0
        self.slot = slot


@dataclass(slots=True)
class _SeedFlight:
    """Chunks a seed is (or will be) fetching from the origin: which, since when, by whom.

    `task` is None when a seed asked for the chunks itself and went to the origin.
    """

    blob_id: str
    bits: int  # 0 while the blob's size is unknown (a whole-blob preheat task)
    created: float
    task: SeedTask | None = None
    seed_id: str | None = None
    job_id: str | None = None


class BlobState:
    """Everything known about one blob: holders, per-chunk rarity, seeding, blacklist."""

    __slots__ = (
        "any_bits",
        "blacklist",
        "blob_id",
        "chunk_count",
        "counts",
        "cursor",
        "flights",
        "grants",
        "holders",
        "origin_url",
        "seed_counts",
        "seed_failures",
        "seed_grants",
        "seeding_bits",
    )

    def __init__(self, blob_id: str, chunk_count: int, origin_url: str | None) -> None:
        self.blob_id = blob_id
        self.chunk_count = chunk_count
        self.origin_url = origin_url
        self.holders: list[_Holding] = []
        self.any_bits = 0  # chunks held by at least one holder
        self.counts: list[int] = []  # holders per chunk, allocated with the first holder
        self.cursor = 0  # where the next holder scan starts (round robin)
        self.blacklist: set[str] = set()
        self.flights: dict[str, _SeedFlight] = {}
        self.seeding_bits = 0  # chunks some seed is fetching
        self.grants: list[tuple[float, int]] = []  # (when, chunks) sent to the origin
        self.seed_grants: deque[tuple[float, int]] = deque()  # (when, chunks) sent to seeds
        self.seed_counts: list[int] = []  # live seed allowances per chunk, allocated on use
        self.seed_failures: list[tuple[float, int]] = []  # (when, chunks) a seed failed

    @property
    def full_bits(self) -> int:
        """Bitmap of every chunk of the blob."""
        return (1 << self.chunk_count) - 1

    def add_chunks(self, holding: _Holding, bits: int) -> int:
        """Record chunks for a holder; return the chunks that are new to it."""
        new = bits & ~holding.bits
        if new:
            holding.bits |= new
            self.any_bits |= new
            if not self.counts:  # a request alone never costs memory per chunk
                self.counts = [0] * self.chunk_count
            counts = self.counts
            for start, end in iter_runs(new):
                counts[start:end] = [count + 1 for count in counts[start:end]]
        return new

    def remove_chunks(self, holding: _Holding, bits: int) -> int:
        """Forget chunks of a holder; return those it had."""
        gone = bits & holding.bits
        if gone:
            holding.bits &= ~gone
            self._uncount(gone)
        return gone

    def drop_holding(self, holding: _Holding) -> None:
        """Forget a holder and its chunks (swap-remove from the holder list)."""
        last = self.holders.pop()
        if last is not holding:
            last.slot = holding.slot
            self.holders[holding.slot] = last
        self._uncount(holding.bits)

    def _uncount(self, bits: int) -> None:
        """One holder fewer for each chunk of `bits`; chunks left with none leave `any_bits`."""
        for start, end in iter_runs(bits):
            run = self.counts[start:end] = [count - 1 for count in self.counts[start:end]]
            for offset in (i for i, count in enumerate(run) if not count):
                self.any_bits &= ~(1 << (start + offset))

    def rarity(self, start: int, end: int) -> int:
        """Fewest holders of any chunk in `[start, end)`."""
        return min(self.counts[start:end]) if self.counts else 0

    def grant_seed(self, bits: int, now: float) -> None:
        """Count one more asker sent to a seed for each chunk of `bits`."""
        if not self.seed_counts:
            self.seed_counts = [0] * self.chunk_count
        counts = self.seed_counts
        for start, end in iter_runs(bits):
            counts[start:end] = [count + 1 for count in counts[start:end]]
        self.seed_grants.append((now, bits))

    def prune_seed_grants(self, cutoff: float) -> None:
        """Give back the seed allowances made before `cutoff`."""
        grants, counts = self.seed_grants, self.seed_counts
        while grants and grants[0][0] < cutoff:
            for start, end in iter_runs(grants.popleft()[1]):
                counts[start:end] = [count - 1 for count in counts[start:end]]

    def seed_saturated(self, start: int, end: int, limit: int) -> int:
        """Chunks of `[start, end)` already sent to a seed for `limit` askers."""
        if not self.seed_counts:
            return 0
        bits = 0
        for offset, count in enumerate(self.seed_counts[start:end]):
            if count >= limit:
                bits |= 1 << (start + offset)
        return bits

    def refresh_seeding(self) -> None:
        """Recompute the chunks under an unfinished seed flight."""
        bits = 0
        for flight in self.flights.values():
            bits |= flight.bits
        self.seeding_bits = bits


@dataclass(slots=True)
class _Job:
    """A preheat job: its blobs and how many seed tasks each has had."""

    job_id: str
    blobs: tuple[PreheatBlob, ...]
    created: float
    attempts: dict[str, int] = field(default_factory=dict)
    started: bool = False
    error: str | None = None


@dataclass(slots=True)
class _Decision:
    """Work area of one schedule decision."""

    requester: PeerState
    blob: BlobState
    now: float
    plans: list[Plan] = field(default_factory=list)


_PlanMaker = Callable[[int, int], Plan]


# --- the scheduler ----------------------------------------------------------------------


class Scheduler:
    """Peers, their chunks, seed tasks and preheat jobs; answers schedule requests."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self.stats = SchedulerStats()
        self._peers: dict[str, PeerState] = {}
        self._seeds: dict[str, PeerState] = {}
        self._blobs: dict[str, BlobState] = {}
        self._origins: dict[str, str] = {}  # origin URLs of blobs of unknown size
        self._banned: set[str] = set()  # peers blacklisted for every blob
        self._early_blacklist: dict[str, set[str]] = {}  # for blobs not seen yet
        self._queue: dict[str, _SeedFlight] = {}  # seed tasks not yet taken, FIFO
        self._flights: dict[str, _SeedFlight] = {}  # every unfinished flight
        self._jobs: dict[str, _Job] = {}
        self._suspended: dict[str, PeerState] = {}
        self._next_lift = math.inf  # earliest end of a suspension
        self._ids = itertools.count(1)
        self._changes = PolicyChanges()

    # --- peer lifecycle -----------------------------------------------------------------

    def register(self, msg: Register, now: float) -> RegisterAnswer:
        """Add a peer, or refresh one that registers again (its chunks are kept)."""
        peer = self._peers.get(msg.peer_id)
        if peer is None:
            peer = self._peers[msg.peer_id] = PeerState(msg, now)
        else:
            peer.update(msg, now)
        if peer.seed:
            self._seeds[peer.peer_id] = peer
        else:
            self._seeds.pop(peer.peer_id, None)
        self._changes.peers[peer.peer_id] = msg
        self._changes.removed_peers.discard(peer.peer_id)
        return RegisterAnswer(
            peer_id=msg.peer_id,
            heartbeat_interval_ms=round(self.config.heartbeat_interval * 1000),
            expire_after_ms=round(self.config.peer_ttl * 1000),
        )

    def heartbeat(self, msg: Heartbeat, now: float) -> HeartbeatAnswer:
        """Refresh a peer's liveness and load; seeds also receive their next tasks."""
        peer = self._peers.get(msg.peer_id)
        if peer is None:
            return HeartbeatAnswer(known=False)
        peer.last_seen = now
        peer.uploads = msg.current_uploads
        peer.assigned = 0
        tasks = self.take_seed_tasks(peer.peer_id, now) if peer.seed else []
        return HeartbeatAnswer(known=True, seed_tasks=tuple(tasks))

    def leave(self, msg: Leave, now: float) -> bool:
        """Forget a peer and everything it held; False when it was not known."""
        return self._remove_peer(msg.peer_id, now)

    def expire(self, now: float) -> list[str]:
        """Drop silent peers, stale seed tasks and origin allowances; return expired ids."""
        self._lift_suspensions(now)
        cutoff = now - self.config.peer_ttl
        gone = [pid for pid, peer in self._peers.items() if peer.last_seen < cutoff]
        for peer_id in gone:
            self._remove_peer(peer_id, now)
        self.stats.expired_peers += len(gone)
        self._expire_flights(self._flights, now)
        for blob in self._blobs.values():
            self._prune_grants(blob, now)
            blob.prune_seed_grants(now - self.config.seed_grant_ttl)
        return gone

    def _remove_peer(self, peer_id: str, now: float) -> bool:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return False
        self._seeds.pop(peer_id, None)
        self._suspended.pop(peer_id, None)
        for blob_id, holding in peer.holdings.items():
            self._blobs[blob_id].drop_holding(holding)
        peer.holdings.clear()
        for task_id in [t for t, f in self._flights.items() if f.seed_id == peer_id]:
            self._retry_or_forget(task_id, now)
        self._changes.peers.pop(peer_id, None)
        self._changes.removed_peers.add(peer_id)
        return True

    def _peer(self, peer_id: str) -> PeerState:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise UnknownPeer(peer_id)
        return peer

    def _blob(self, blob_id: str, chunk_count: int, origin_url: str | None) -> BlobState:
        """The blob's state, created on first sight; its chunk count may not change."""
        blob = self._blobs.get(blob_id)
        if blob is None:
            origin = origin_url or self._origins.pop(blob_id, None)
            blob = self._blobs[blob_id] = BlobState(blob_id, chunk_count, origin)
            blob.blacklist = self._early_blacklist.pop(blob_id, set())
            self._adopt_whole_blob_flights(blob)
        elif blob.chunk_count != chunk_count:
            raise ChunkCountMismatch(blob_id, blob.chunk_count, chunk_count)
        elif origin_url and blob.origin_url is None:
            blob.origin_url = origin_url
        return blob

    # --- availability -------------------------------------------------------------------

    def announce(self, msg: Announce, now: float) -> None:
        """Record verified chunks a peer now holds (announcements only add)."""
        peer = self._peer(msg.peer_id)
        peer.last_seen = now
        blob = self._blob(msg.blob_id, msg.chunk_count, None)
        self._add_chunks(peer, blob, bits_from_ranges(msg.ranges))

    def withdraw(self, msg: Withdraw, now: float) -> None:
        """Forget chunks a peer no longer holds (evicted or discarded from its cache)."""
        peer = self._peer(msg.peer_id)
        peer.last_seen = now
        blob = self._blob(msg.blob_id, msg.chunk_count, None)
        self._withdraw_chunks(peer, blob, bits_from_ranges(msg.ranges))

    def restore(self, peer_id: str, blob_id: str, chunks: ChunkSet) -> None:
        """Reload a persisted holding (after a restart) without marking it changed."""
        peer = self._peer(peer_id)
        blob = self._blob(blob_id, chunks.chunk_count, None)
        self._add_chunks(peer, blob, chunks.bits)
        self._changes.holdings.pop((peer_id, blob_id), None)

    def _add_chunks(self, peer: PeerState, blob: BlobState, bits: int) -> None:
        """Index `bits` as held by `peer`; ignored when the peer is blacklisted for it."""
        if peer.peer_id in blob.blacklist:
            return
        holding = peer.holdings.get(blob.blob_id)
        if holding is None:
            holding = peer.holdings[blob.blob_id] = _Holding(peer, len(blob.holders))
            blob.holders.append(holding)
        if blob.add_chunks(holding, bits):
            self._changes.holdings[peer.peer_id, blob.blob_id] = None  # filled in on drain
            if blob.flights:
                self._finish_flights(blob)

    def _withdraw_chunks(self, peer: PeerState, blob: BlobState, bits: int) -> None:
        """Stop naming `peer` as a holder of `bits`; a holding left empty is dropped."""
        holding = peer.holdings.get(blob.blob_id)
        if holding is None or not blob.remove_chunks(holding, bits):
            return
        if not holding.bits:
            blob.drop_holding(holding)
            del peer.holdings[blob.blob_id]
        self._changes.holdings[peer.peer_id, blob.blob_id] = None  # filled in on drain

    # --- scheduling ---------------------------------------------------------------------

    def schedule(self, request: ScheduleRequest, now: float) -> ScheduleAnswer:
        """Decide, for every wanted chunk, where the requester should fetch it."""
        requester = self._peer(request.peer_id)
        requester.last_seen = now
        self._lift_suspensions(now)
        blob = self._blob(request.blob_id, request.chunk_count, request.origin_url)
        wanted = bits_from_ranges(request.wanted) if request.wanted else blob.full_bits
        decision = _Decision(requester, blob, now)
        covered, busy, stranded = self._plan_from_parents(decision, wanted & blob.any_bits)
        busy &= ~covered
        self.stats.retry_plans += _add_plans(decision, busy, _retry(self.config.busy_retry_ms))
        unserved = wanted & ~covered & ~busy
        self._plan_unserved(decision, unserved, request.origin_url, stranded & unserved)
        self.stats.decisions += 1
        return ScheduleAnswer(blob_id=blob.blob_id, plans=_order(decision, wanted))

    def _plan_from_parents(self, decision: _Decision, held: int) -> tuple[int, int, int]:
        """Plan the held chunks from parents; return the chunks planned, those held by busy
        parents and those held by suspended ones (the last two may overlap the first)."""
        if not held:
            return 0, 0, 0
        candidates, covered, busy, suspended = self._gather(decision, held)
        if candidates:
            ranked = _rank(candidates, decision.requester.zone)
            self._assign_segments(decision, ranked, covered)
        return covered, busy, suspended

    def _gather(self, decision: _Decision, held: int) -> tuple[list[_Holding], int, int, int]:
        """Probe holders round robin until enough eligible ones cover every held chunk."""
        blob, requester, now = decision.blob, decision.requester, decision.now
        cutoff = now - self.config.peer_ttl
        target = self.config.scan_target
        found: list[_Holding] = []
        covered = busy = suspended = probed = 0
        for probed, holding in enumerate(_rotation(blob.holders, blob.cursor), 1):  # noqa: B007
            bits = holding.bits & held
            if not bits:
                continue
            peer = holding.peer
            if not _eligible(peer, requester, cutoff, self._banned):
                continue
            if peer.suspended_until > now:
                suspended |= bits
                continue
            if peer.uploads + peer.assigned >= peer.capacity:  # `load`, inlined: hot loop
                busy |= bits
                continue
            found.append(holding)
            covered |= bits
            if covered == held and len(found) >= target:
                break
        blob.cursor = (blob.cursor + probed) % max(1, len(blob.holders))
        return found, covered, busy, suspended

    def _assign_segments(self, decision: _Decision, ranked: list[_Holding], covered: int) -> None:
        """One plan per run of chunks whose best parents are the same."""
        limit = self.config.max_parents
        runs: list[tuple[int, int, tuple[_Holding, ...]]] = []
        for start, end in _segments(ranked, covered):
            best = tuple(h for h in ranked if h.bits >> start & 1)[:limit]
            if runs and runs[-1][1] == start and runs[-1][2] == best:
                runs[-1] = (runs[-1][0], end, best)
            else:
                runs.append((start, end, best))
        relay = self.config.seed_fanout > 0 and not decision.requester.seed
        for start, end, best in runs:
            if relay and best[0].peer.seed:  # ordinary holders rank first: seeds only
                self._plan_from_seeds(decision, start, end, best)
                continue
            best[0].peer.assigned += 1
            parents = tuple(h.peer.parent for h in best)
            decision.plans.append(FromParents(start=start, end=end, parents=parents))
            self.stats.parent_plans += 1

    def _plan_from_seeds(
        self, decision: _Decision, start: int, end: int, best: tuple[_Holding, ...]
    ) -> None:
        """Chunks only seeds hold: at most `seed_fanout` askers each get them from the seed
        (within `seed_grant_ttl`); the rest retry and get them from those askers."""
        blob, config = decision.blob, self.config
        blob.prune_seed_grants(decision.now - config.seed_grant_ttl)
        run = ((1 << end) - 1) >> start << start
        waiting = blob.seed_saturated(start, end, config.seed_fanout)
        allowed = run & ~waiting
        if allowed:
            blob.grant_seed(allowed, decision.now)
            made = _add_plans(decision, allowed, _from_parents(best))
            best[0].peer.assigned += made
            self.stats.parent_plans += made
        self.stats.retry_plans += _add_plans(decision, waiting, _retry(config.relay_retry_ms))

    # nobody can serve ----------------------------------------------------------------------

    def _plan_unserved(
        self, decision: _Decision, bits: int, origin_url: str | None, stranded: int
    ) -> None:
        """Chunks nobody eligible holds: a seed fetches them, else a few go to origin.

        `stranded` chunks (held, but only by suspended holders) never go to a seed task.
        """
        if not bits:
            return
        origin = origin_url or decision.blob.origin_url
        if decision.requester.seed:
            self._seed_fetches_itself(decision, bits, origin)
        elif origin is not None and self._live_seed(decision.now):
            failed = bits & (self._seed_failed(decision.blob, decision.now) | stranded)
            self._plan_seeding(decision, bits & ~failed, origin)
            self._plan_origin(decision, failed, origin)
        else:
            self._plan_origin(decision, bits, origin)

    def _seed_failed(self, blob: BlobState, now: float) -> int:
        """Chunks a seed failed to fetch within `seed_failure_ttl`."""
        if not blob.seed_failures:
            return 0
        cutoff = now - self.config.seed_failure_ttl
        blob.seed_failures = [(when, bits) for when, bits in blob.seed_failures if when >= cutoff]
        failed = 0
        for _, bits in blob.seed_failures:
            failed |= bits
        return failed

    def _seed_fetches_itself(self, decision: _Decision, bits: int, origin: str | None) -> None:
        """A seed that asks goes to the origin; others wait on it as on a seed task."""
        seed_id = decision.requester.peer_id
        flight = _SeedFlight(decision.blob.blob_id, bits, decision.now, seed_id=seed_id)
        self._track(flight, self._next_id("self"))
        self.stats.origin_plans += _add_plans(decision, bits, _origin(origin))

    def _plan_seeding(self, decision: _Decision, bits: int, origin: str) -> None:
        """Queue one seed task for chunks no flight covers yet; tell the asker to retry."""
        if not bits:
            return
        blob = decision.blob
        self._expire_flights(blob.flights, decision.now)
        new = bits & ~blob.seeding_bits
        if new:
            self._queue_seed_task(blob, new, origin, decision.now, None)
        self.stats.retry_plans += _add_plans(decision, bits, _retry(self.config.seed_retry_ms))

    def _plan_origin(self, decision: _Decision, bits: int, origin: str | None) -> None:
        """No seed (or it failed): at most `origin_limit` askers per chunk go to the origin."""
        if not bits:
            return
        blob = decision.blob
        self._prune_grants(blob, decision.now)
        allowed = bits & ~_granted_at_least(blob.grants, self.config.origin_limit)
        if allowed:
            blob.grants.append((decision.now, allowed))
        self.stats.origin_plans += _add_plans(decision, allowed, _origin(origin))
        retry = _retry(self.config.origin_retry_ms)
        self.stats.retry_plans += _add_plans(decision, bits & ~allowed, retry)

    def _prune_grants(self, blob: BlobState, now: float) -> None:
        cutoff = now - self.config.origin_grant_ttl
        if blob.grants and blob.grants[0][0] < cutoff:
            blob.grants = [(when, bits) for when, bits in blob.grants if when >= cutoff]

    def _live_seed(self, now: float) -> bool:
        cutoff = now - self.config.peer_ttl
        return any(
            seed.last_seen >= cutoff
            and seed.peer_id not in self._banned
            and seed.suspended_until <= now
            for seed in self._seeds.values()
        )

    # --- seed tasks ---------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def _queue_seed_task(
        self, blob: BlobState, bits: int, origin: str, now: float, job_id: str | None
    ) -> None:
        task = SeedTask(
            task_id=self._next_id("seed"),
            blob_id=blob.blob_id,
            origin_url=origin,
            chunk_count=blob.chunk_count,
            ranges=tuple(iter_runs(bits)),
        )
        self._track(_SeedFlight(blob.blob_id, bits, now, task, job_id=job_id), task.task_id)

    def _track(self, flight: _SeedFlight, task_id: str) -> None:
        """Remember an unfinished flight; queue it when it is a task for some seed."""
        self._flights[task_id] = flight
        if flight.task is not None:
            self._queue[task_id] = flight
            self.stats.seed_tasks += 1
        blob = self._blobs.get(flight.blob_id)
        if blob is not None:
            blob.flights[task_id] = flight
            blob.seeding_bits |= flight.bits

    def _adopt_whole_blob_flights(self, blob: BlobState) -> None:
        """A blob's size became known: its whole-blob tasks now cover every chunk."""
        for task_id, flight in self._flights.items():
            if flight.blob_id == blob.blob_id and not flight.bits:
                flight.bits = blob.full_bits
                blob.flights[task_id] = flight
                blob.seeding_bits |= flight.bits

    def take_seed_tasks(self, seed_id: str, now: float, limit: int | None = None) -> list[SeedTask]:
        """Hand the oldest queued seed tasks to a seed (which then owns them); a suspended
        seed takes none: nobody would be sent to fetch what it seeds."""
        seed = self._peer(seed_id)
        seed.last_seen = now
        self._lift_suspensions(now)
        if not seed.seed or seed.suspended_until > now:
            return []
        count = min(limit or self.config.seed_batch, len(self._queue))
        tasks = []
        for task_id in list(itertools.islice(self._queue, count)):
            flight = self._queue.pop(task_id)
            flight.seed_id = seed_id
            self._start_job(flight.job_id)
            assert flight.task is not None  # only tasks are queued
            tasks.append(flight.task)
        return tasks

    def _start_job(self, job_id: str | None) -> None:
        job = self._jobs.get(job_id) if job_id else None
        if job is not None and not job.started:
            job.started = True
            self._changes.jobs.add(job.job_id)

    def _finish_flights(self, blob: BlobState) -> None:
        """Close the flights of a blob whose chunks are now all held."""
        held = blob.any_bits
        done = [tid for tid, f in blob.flights.items() if f.bits and not f.bits & ~held]
        for task_id in done:
            self._drop_flight(task_id)

    def _drop_flight(self, task_id: str) -> _SeedFlight | None:
        flight = self._flights.pop(task_id, None)
        if flight is None:
            return None
        self._queue.pop(task_id, None)
        blob = self._blobs.get(flight.blob_id)
        if blob is not None:
            blob.flights.pop(task_id, None)
            blob.refresh_seeding()
        if flight.job_id:
            self._changes.jobs.add(flight.job_id)
        return flight

    def seed_task_failed(self, msg: SeedTaskFailed, now: float) -> None:
        """A seed gave up a task: its chunks go to the origin for a while, not to the seed
        again (a preheat task is made again, within its attempts)."""
        seed = self._peer(msg.peer_id)
        seed.last_seen = now
        flight = self._flights.get(msg.task_id)
        if flight is None or flight.seed_id != msg.peer_id or flight.blob_id != msg.blob_id:
            return  # not this seed's task (or already finished or expired)
        blob = self._blobs.get(flight.blob_id)
        if blob is not None and flight.bits:
            blob.seed_failures.append((now, flight.bits & ~blob.any_bits))
        self.stats.seed_failures += 1
        detail = f"seed task {msg.task_id} failed: {msg.error}"[:200]
        self._event(seed, FailureKind.OTHER.value, msg.blob_id, 0.0, detail)
        self._retry_or_forget(msg.task_id, now)

    def _expire_flights(self, flights: dict[str, _SeedFlight], now: float) -> None:
        cutoff = now - self.config.seed_task_ttl
        for task_id in [t for t, f in flights.items() if f.created < cutoff]:
            self._retry_or_forget(task_id, now)

    def _retry_or_forget(self, task_id: str, now: float) -> None:
        """A flight died: a preheat task is made again, an on-demand one forgotten."""
        flight = self._drop_flight(task_id)
        job = self._jobs.get(flight.job_id) if flight and flight.job_id else None
        if flight is not None and job is not None and job.error is None:
            self._preheat_blob(job, _job_blob(job, flight.blob_id), now)

    # --- piece results ------------------------------------------------------------------

    def report(self, msg: PieceResults, now: float) -> None:
        """Learn from how parents served: speed, success, and digest mismatches."""
        self._peer(msg.peer_id).last_seen = now
        self._lift_suspensions(now)
        for result in msg.results:
            parent = self._peers.get(result.parent_id)
            if parent is not None:
                self._learn(parent, msg.blob_id, result, now)

    def _learn(self, parent: PeerState, blob_id: str, result: ParentResult, now: float) -> None:
        alpha = self.config.ewma_alpha
        parent.assigned = max(0, parent.assigned - 1)
        if result.digest_mismatch:
            self._punish_mismatch(parent, blob_id, result)
        elif result.failure is FailureKind.BUSY:  # full, not failing: the load says so
            parent.failures += 1
            self._event(parent, result.failure.value, blob_id, 0.0)
        elif result.failure is not FailureKind.NONE:
            before = parent.success
            parent.failures += 1
            parent.success = (1 - alpha) * parent.success
            detail = self._suspend_if_failing(parent, now)
            self._event(parent, result.failure.value, blob_id, parent.success - before, detail)
        else:
            parent.successes += 1
            parent.success = (1 - alpha) * parent.success + alpha
            if result.bytes and result.duration_ms:
                rate = result.bytes * 1000.0 / result.duration_ms
                parent.throughput = (1 - alpha) * (parent.throughput or rate) + alpha * rate

    def _suspend_if_failing(self, parent: PeerState, now: float) -> str:
        """Suspend a parent whose success fell below `suspend_below`; say so (or "")."""
        config = self.config
        if parent.suspended_until or parent.success >= config.suspend_below:
            return ""
        parent.suspended_until = now + config.suspend_seconds
        self._suspended[parent.peer_id] = parent
        self._next_lift = min(self._next_lift, parent.suspended_until)
        self.stats.suspensions += 1
        return f"suspended for {config.suspend_seconds:g} s"

    def _lift_suspensions(self, now: float) -> None:
        """End the suspensions that are over: those parents are back, on probation."""
        if now < self._next_lift:
            return
        for peer in [p for p in self._suspended.values() if p.suspended_until <= now]:
            del self._suspended[peer.peer_id]
            peer.suspended_until = 0.0
            peer.success = max(peer.success, self.config.probation_success)
        until = (peer.suspended_until for peer in self._suspended.values())
        self._next_lift = min(until, default=math.inf)

    def suspended_count(self, now: float) -> int:
        """Parents suspended right now."""
        return sum(1 for peer in self._suspended.values() if peer.suspended_until > now)

    def is_suspended(self, peer_id: str, now: float) -> bool:
        """True while the peer may not serve any blob because it kept failing."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.suspended_until > now

    def _punish_mismatch(self, parent: PeerState, blob_id: str, result: ParentResult) -> None:
        before = parent.success
        parent.failures += 1
        parent.success *= _MISMATCH_PENALTY
        self.stats.digest_mismatches += 1
        detail = f"chunks {list(result.mismatched[:16])}"
        kind = FailureKind.DIGEST_MISMATCH.value
        self._event(parent, kind, blob_id, parent.success - before, detail)
        self.blacklist(parent.peer_id, blob_id)

    def _event(
        self, peer: PeerState, kind: str, blob_id: str, delta: float, detail: str = ""
    ) -> None:
        self._changes.events.append(ReputationEvent(peer.peer_id, kind, blob_id, delta, detail))

    # --- blacklist ----------------------------------------------------------------------

    def blacklist(self, peer_id: str, blob_id: str | None = None) -> None:
        """Never again offer this peer for this blob (None: for any blob).

        Its chunks of the blob are forgotten: nothing it holds there is trusted.
        """
        if blob_id is None:
            self._banned.add(peer_id)
            self._changes.blacklisted.add((peer_id, ""))
            return
        self._changes.blacklisted.add((peer_id, blob_id))
        blob = self._blobs.get(blob_id)
        if blob is None:  # size unknown yet: applied when the blob is first seen
            self._early_blacklist.setdefault(blob_id, set()).add(peer_id)
            return
        blob.blacklist.add(peer_id)
        peer = self._peers.get(peer_id)
        holding = peer.holdings.pop(blob_id, None) if peer else None
        if holding is not None:
            blob.drop_holding(holding)
            self._changes.holdings[peer_id, blob_id] = None

    def is_blacklisted(self, peer_id: str, blob_id: str) -> bool:
        """True when the peer may not serve this blob."""
        blob = self._blobs.get(blob_id)
        listed = blob.blacklist if blob is not None else self._early_blacklist.get(blob_id, ())
        return peer_id in self._banned or peer_id in listed

    # --- preheat ------------------------------------------------------------------------

    def preheat(
        self, blobs: Sequence[PreheatBlob], now: float, job_id: str | None = None
    ) -> JobStatus:
        """Queue seed tasks for every chunk of `blobs` that nobody holds or fetches yet."""
        job = _Job(job_id or self._next_id("job"), tuple(blobs), now)
        self._jobs[job.job_id] = job
        for item in job.blobs:
            self._preheat_blob(job, item, now)
        self._changes.jobs.add(job.job_id)
        return self.job_status(job.job_id)

    def _preheat_blob(self, job: _Job, item: PreheatBlob, now: float) -> None:
        attempts = job.attempts.get(item.blob_id, 0)
        if attempts >= self.config.preheat_attempts:
            job.error = f"blob {item.blob_id}: {attempts} seed tasks did not finish"
            return
        job.attempts[item.blob_id] = attempts + 1
        known = self._blobs.get(item.blob_id)
        if item.chunk_count is None and known is None:
            self._queue_whole_blob(job, item, now)
            return
        count = item.chunk_count or (known.chunk_count if known else 0)
        blob = self._blob(item.blob_id, count, item.origin_url)
        missing = blob.full_bits & ~blob.any_bits & ~blob.seeding_bits
        if missing:
            self._queue_seed_task(blob, missing, item.origin_url, now, job.job_id)

    def _queue_whole_blob(self, job: _Job, item: PreheatBlob, now: float) -> None:
        """A blob of unknown size: one task for all of it, tracked until it is announced."""
        self._origins[item.blob_id] = item.origin_url
        task_id = self._next_id("seed")
        task = SeedTask(task_id=task_id, blob_id=item.blob_id, origin_url=item.origin_url)
        self._track(_SeedFlight(item.blob_id, 0, now, task, job_id=job.job_id), task_id)

    def job_status(self, job_id: str) -> JobStatus:
        """Progress of a preheat job, computed from what peers hold now."""
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        blobs_done = chunks_total = chunks_done = 0
        for item in job.blobs:
            blob = self._blobs.get(item.blob_id)
            if blob is not None:
                chunks_total += blob.chunk_count
                chunks_done += blob.any_bits.bit_count()
                blobs_done += blob.any_bits == blob.full_bits
        return JobStatus(
            job_id=job.job_id,
            state=_job_state(job, blobs_done == len(job.blobs)),
            blobs_total=len(job.blobs),
            blobs_done=blobs_done,
            chunks_total=chunks_total,
            chunks_done=chunks_done,
            error=job.error,
        )

    def job_ids(self) -> list[str]:
        """Every known preheat job, oldest first."""
        return list(self._jobs)

    # --- views --------------------------------------------------------------------------

    def peer(self, peer_id: str) -> PeerState | None:
        """A registered peer, or None."""
        return self._peers.get(peer_id)

    def peers(self) -> list[PeerState]:
        """Every registered peer."""
        return list(self._peers.values())

    def blob(self, blob_id: str) -> BlobState | None:
        """What is known of a blob, or None."""
        return self._blobs.get(blob_id)

    def blob_ids(self) -> list[str]:
        """Every blob seen in an announce, request, preheat or blacklist."""
        return list(self._blobs)

    def holdings(self, peer_id: str) -> dict[str, ChunkSet]:
        """The chunks a peer holds, per blob."""
        peer = self._peer(peer_id)
        return {
            blob_id: ChunkSet(self._blobs[blob_id].chunk_count, holding.bits)
            for blob_id, holding in peer.holdings.items()
        }

    def holders(self, blob_id: str) -> dict[str, ChunkSet]:
        """Who holds which chunks of a blob."""
        blob = self._blobs.get(blob_id)
        if blob is None:
            return {}
        return {h.peer.peer_id: ChunkSet(blob.chunk_count, h.bits) for h in blob.holders}

    def queued_seed_tasks(self) -> list[SeedTask]:
        """Seed tasks no seed has taken yet, oldest first."""
        return [flight.task for flight in self._queue.values() if flight.task is not None]

    def drain_changes(self) -> PolicyChanges:
        """Hand over (and forget) what changed since the last call."""
        changes, self._changes = self._changes, PolicyChanges()
        for peer_id, blob_id in list(changes.holdings):
            peer = self._peers.get(peer_id)
            if peer is None:  # the peer left: `removed_peers` says so
                del changes.holdings[peer_id, blob_id]
                continue
            holding = peer.holdings.get(blob_id)
            if holding is not None:
                chunks = ChunkSet(self._blobs[blob_id].chunk_count, holding.bits)
                changes.holdings[peer_id, blob_id] = chunks
        return changes


# --- small pure helpers -----------------------------------------------------------------


def _add_plans(decision: _Decision, bits: int, make: _PlanMaker) -> int:
    """One plan per run of `bits`; return how many were made."""
    runs = list(iter_runs(bits))
    decision.plans.extend(make(start, end) for start, end in runs)
    return len(runs)


def _retry(retry_after_ms: int) -> _PlanMaker:
    def make(start: int, end: int) -> Plan:
        return RetryLater(start=start, end=end, retry_after_ms=retry_after_ms)

    return make


def _from_parents(best: tuple[_Holding, ...]) -> _PlanMaker:
    parents = tuple(holding.peer.parent for holding in best)

    def make(start: int, end: int) -> Plan:
        return FromParents(start=start, end=end, parents=parents)

    return make


def _origin(origin_url: str | None) -> _PlanMaker:
    def make(start: int, end: int) -> Plan:
        return FromOrigin(start=start, end=end, origin_url=origin_url)

    return make


def _order(decision: _Decision, wanted: int) -> tuple[Plan, ...]:
    """Rarest first for a whole-blob request, otherwise in chunk order."""
    blob, plans = decision.blob, decision.plans
    if wanted == blob.full_bits and len(plans) > 1:
        plans.sort(key=lambda plan: (blob.rarity(plan.start, plan.end), plan.start))
    else:
        plans.sort(key=lambda plan: plan.start)
    return tuple(plans)


def _rotation(items: list[_Holding], start: int) -> Iterator[_Holding]:
    """Every item once, starting at `start` (mod len) and wrapping around."""
    start = start % len(items) if items else 0
    return itertools.chain(itertools.islice(items, start, None), itertools.islice(items, start))


def _eligible(peer: PeerState, requester: PeerState, cutoff: float, banned: set[str]) -> bool:
    """May `peer` serve `requester` at all (load aside)?

    The same-host rule also excludes the requester itself. Peers blacklisted for the blob
    need no check: blacklisting drops their holding and `_add_chunks` ignores them.
    Suspension is checked by the caller, which keeps the chunks of suspended holders apart.
    """
    return not (
        peer.host_name == requester.host_name
        or peer.last_seen < cutoff
        or peer.capacity == 0
        or peer.peer_id in banned
    )


def _rank(candidates: list[_Holding], zone: str | None) -> list[_Holding]:
    """Best first: same zone (when the requester has one), then ordinary peers before seeds
    (a seed's link is the one every new chunk still has to cross), then score."""
    keyed = [
        (zone is not None and h.peer.zone != zone, h.peer.seed, -h.peer.score(), i, h)
        for i, h in enumerate(candidates)
    ]
    keyed.sort()
    return [item[4] for item in keyed]


def _segments(candidates: Iterable[_Holding], covered: int) -> Iterator[tuple[int, int]]:
    """Split `covered` into runs in which every candidate holds all chunks or none."""
    edges = 0
    for holding in candidates:
        bits = holding.bits & covered
        edges |= bits ^ (bits << 1)  # set where holding changes between i-1 and i
    for start, end in iter_runs(covered):
        inner = edges & (((1 << end) - 1) >> (start + 1) << (start + 1))  # (start, end)
        cut = start
        for edge in _bit_positions(inner):
            yield cut, edge
            cut = edge
        yield cut, end


def _bit_positions(bits: int) -> Iterator[int]:
    """Each set bit's position, lowest first."""
    for start, end in iter_runs(bits):
        yield from range(start, end)


def _granted_at_least(grants: Iterable[tuple[float, int]], limit: int) -> int:
    """Chunks that appear in at least `limit` of the grants (bit-sliced counting)."""
    if limit <= 0:
        return -1  # every chunk: the origin is closed
    levels = [0] * limit  # levels[k]: chunks granted more than k times
    for _, bits in grants:
        for k in range(limit - 1, 0, -1):
            levels[k] |= levels[k - 1] & bits
        levels[0] |= bits
    return levels[limit - 1]


def _job_blob(job: _Job, blob_id: str) -> PreheatBlob:
    return next(item for item in job.blobs if item.blob_id == blob_id)


def _job_state(job: _Job, done: bool) -> JobState:
    if done:
        return JobState.SUCCEEDED
    if job.error is not None:
        return JobState.FAILED
    return JobState.RUNNING if job.started else JobState.PENDING
