"""Unit tests of the scheduling policy (no I/O): one test per rule, each able to fail."""

from __future__ import annotations

import ast
import inspect
from collections import Counter

import pytest

import protocol
from protocol import (
    Announce,
    ChunkSet,
    FailureKind,
    FromOrigin,
    FromParents,
    Heartbeat,
    JobState,
    Leave,
    ParentResult,
    PieceResults,
    Plan,
    PreheatBlob,
    Register,
    RetryLater,
    ScheduleAnswer,
    ScheduleRequest,
    SeedTaskFailed,
    Withdraw,
)
from supernode import _policy
from supernode._policy import (
    ChunkCountMismatch,
    PolicyConfig,
    Scheduler,
    UnknownJob,
    UnknownPeer,
)

BLOB = "a" * 64
OTHER = "b" * 64
ORIGIN = "https://registry.example/v2/app/blobs/sha256:" + BLOB
COUNT = 100


class Mesh:
    """A scheduler plus terse helpers to register, announce and ask."""

    def __init__(self, **config: float) -> None:
        self.s = Scheduler(PolicyConfig(**config))  # type: ignore[arg-type]
        self.now = 0.0

    def add(
        self,
        peer_id: str,
        *,
        host: str | None = None,
        zone: str = "z1",
        capacity: int = 8,
        seed: bool = False,
    ) -> str:
        msg = Register(
            peer_id=peer_id,
            host_name=host or f"host-{peer_id}",
            ip="10.0.0.1",
            upload_port=65001,
            http_url=f"http://{peer_id}:65001",
            upload_capacity=capacity,
            labels={"zone": zone},
            seed=seed,
        )
        self.s.register(msg, self.now)
        return peer_id

    def hold(self, peer_id: str, *ranges: tuple[int, int], blob: str = BLOB) -> None:
        msg = Announce(peer_id=peer_id, blob_id=blob, chunk_count=COUNT, ranges=ranges)
        self.s.announce(msg, self.now)

    def ask(
        self,
        peer_id: str,
        *wanted: tuple[int, int],
        blob: str = BLOB,
        origin: str | None = ORIGIN,
    ) -> ScheduleAnswer:
        msg = ScheduleRequest(
            peer_id=peer_id, blob_id=blob, chunk_count=COUNT, wanted=wanted, origin_url=origin
        )
        return self.s.schedule(msg, self.now)

    def report(self, peer_id: str, *results: ParentResult, blob: str = BLOB) -> None:
        self.s.report(PieceResults(peer_id=peer_id, blob_id=blob, results=results), self.now)

    def beat(self, peer_id: str, uploads: int = 0) -> None:
        self.s.heartbeat(Heartbeat(peer_id=peer_id, current_uploads=uploads), self.now)


def parents_of(plan: Plan) -> list[str]:
    assert isinstance(plan, FromParents), plan
    return [parent.peer_id for parent in plan.parents]


def only_plan(answer: ScheduleAnswer) -> Plan:
    assert len(answer.plans) == 1, answer.plans
    return answer.plans[0]


def spans(answer: ScheduleAnswer) -> list[tuple[str, int, int]]:
    kinds = {FromParents: "parents", RetryLater: "retry", FromOrigin: "origin"}
    return [(kinds[type(plan)], plan.start, plan.end) for plan in answer.plans]


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


# --- candidates ----------------------------------------------------------------------------


def test_parents_are_the_holders_of_the_wanted_chunks(mesh: Mesh) -> None:
    for name in ("a", "b", "c", "me"):
        mesh.add(name)
    mesh.hold("a", (0, 10))
    mesh.hold("b", (50, 60))
    answer = mesh.ask("me", (0, 10))
    assert parents_of(only_plan(answer)) == ["a"]
    assert spans(answer) == [("parents", 0, 10)]


def test_the_requester_is_never_its_own_parent(mesh: Mesh) -> None:
    mesh.add("me")
    mesh.add("other")
    mesh.hold("me", (0, 10))
    mesh.hold("other", (0, 10))
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["other"]


def test_peers_on_the_same_host_are_not_parents(mesh: Mesh) -> None:
    mesh.add("me", host="box")
    mesh.add("sibling", host="box")
    mesh.add("far", host="elsewhere")
    mesh.hold("sibling", (0, 10))
    mesh.hold("far", (0, 10))
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["far"]


def test_a_peer_blacklisted_for_a_blob_is_not_offered_for_it(mesh: Mesh) -> None:
    for name in ("bad", "good", "me"):
        mesh.add(name)
    for blob in (BLOB, OTHER):
        mesh.hold("bad", (0, 10), blob=blob)
        mesh.hold("good", (0, 10), blob=blob)
    mesh.s.blacklist("bad", BLOB)
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["good"]
    assert "bad" in parents_of(only_plan(mesh.ask("me", (0, 10), blob=OTHER)))
    assert mesh.s.is_blacklisted("bad", BLOB) and not mesh.s.is_blacklisted("bad", OTHER)


def test_a_peer_blacklisted_everywhere_is_offered_nowhere(mesh: Mesh) -> None:
    for name in ("bad", "good", "me"):
        mesh.add(name)
    mesh.hold("bad", (0, 10), blob=OTHER)
    mesh.hold("good", (0, 10), blob=OTHER)
    mesh.s.blacklist("bad")
    assert parents_of(only_plan(mesh.ask("me", (0, 10), blob=OTHER))) == ["good"]


def test_blacklisting_a_blob_not_seen_yet_applies_when_it_appears(mesh: Mesh) -> None:
    for name in ("bad", "good", "me"):
        mesh.add(name)
    mesh.s.blacklist("bad", OTHER)
    mesh.hold("bad", (0, 10), blob=OTHER)
    mesh.hold("good", (0, 10), blob=OTHER)
    assert parents_of(only_plan(mesh.ask("me", (0, 10), blob=OTHER))) == ["good"]


def test_a_silent_peer_is_not_offered_even_before_expire_runs() -> None:
    mesh = Mesh(peer_ttl=30.0)
    mesh.add("old")
    mesh.add("fresh")
    mesh.hold("old", (0, 10))
    mesh.now = 20.0
    mesh.add("me")
    mesh.hold("fresh", (0, 10))
    mesh.now = 40.0  # old last spoke at 0: more than 30 s ago
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["fresh"]


def test_expire_forgets_silent_peers_and_their_chunks() -> None:
    mesh = Mesh(peer_ttl=30.0)
    mesh.add("old")
    mesh.add("alive")
    mesh.hold("old", (0, 10))
    mesh.hold("alive", (5, 10))
    mesh.now = 25.0
    mesh.beat("alive")
    mesh.now = 31.0
    assert mesh.s.expire(mesh.now) == ["old"]
    assert mesh.s.peer("old") is None
    assert set(mesh.s.holders(BLOB)) == {"alive"}
    blob = mesh.s.blob(BLOB)
    assert blob is not None and blob.any_bits == ChunkSet.from_ranges(COUNT, [(5, 10)]).bits
    assert blob.counts[0] == 0 and blob.counts[5] == 1
    assert mesh.s.stats.expired_peers == 1


def test_a_peer_at_its_upload_limit_is_skipped_and_asker_retries_soon() -> None:
    mesh = Mesh(busy_retry_ms=123)
    mesh.add("busy", capacity=2)
    mesh.add("me")
    mesh.hold("busy", (0, 10))
    mesh.beat("busy", uploads=2)
    plan = only_plan(mesh.ask("me", (0, 10)))
    assert isinstance(plan, RetryLater) and plan.retry_after_ms == 123
    mesh.beat("busy", uploads=1)
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["busy"]


def test_assignments_count_toward_the_limit_until_the_next_heartbeat(mesh: Mesh) -> None:
    mesh.add("parent", capacity=2)
    for name in ("x", "y", "z"):
        mesh.add(name)
    mesh.hold("parent", (0, 10))
    assert isinstance(only_plan(mesh.ask("x", (0, 10))), FromParents)
    assert isinstance(only_plan(mesh.ask("y", (0, 10))), FromParents)
    assert isinstance(only_plan(mesh.ask("z", (0, 10))), RetryLater)
    mesh.beat("parent", uploads=0)
    assert isinstance(only_plan(mesh.ask("z", (0, 10))), FromParents)


def test_a_peer_with_no_upload_capacity_never_serves_nor_makes_askers_wait(mesh: Mesh) -> None:
    mesh.add("leech", capacity=0)
    mesh.add("me")
    mesh.hold("leech", (0, 10))
    assert isinstance(only_plan(mesh.ask("me", (0, 10))), FromOrigin)  # not "busy, retry"


def test_at_most_max_parents_per_range() -> None:
    mesh = Mesh(max_parents=3)
    mesh.add("me")
    for i in range(10):
        mesh.add(f"p{i}")
        mesh.hold(f"p{i}", (0, 10))
    assert len(parents_of(only_plan(mesh.ask("me", (0, 10))))) == 3


# --- ranking ---------------------------------------------------------------------------------


def test_same_zone_comes_first_even_when_busier(mesh: Mesh) -> None:
    mesh.add("me", zone="west")
    mesh.add("near", zone="west", capacity=10)
    mesh.add("far", zone="east", capacity=10)
    mesh.hold("near", (0, 10))
    mesh.hold("far", (0, 10))
    mesh.beat("near", uploads=8)  # much busier than far
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["near", "far"]


def test_ordinary_peers_come_before_a_seed_that_holds_the_same_chunks(mesh: Mesh) -> None:
    mesh.add("me")
    mesh.add("seed", seed=True, capacity=10)
    mesh.add("peer", capacity=10)
    mesh.hold("seed", (0, 10))
    mesh.hold("peer", (0, 10))
    mesh.beat("peer", uploads=6)  # busier than the idle seed, still asked first
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["peer", "seed"]


def test_a_chunk_only_a_seed_holds_goes_to_seed_fanout_askers_the_rest_retry() -> None:
    mesh = Mesh(seed_fanout=2, relay_retry_ms=75)
    mesh.add("seed", seed=True, capacity=100)
    for name in ("a", "b", "c", "d"):
        mesh.add(name)
    mesh.hold("seed", (0, 10))
    assert parents_of(only_plan(mesh.ask("a", (0, 10)))) == ["seed"]
    assert spans(mesh.ask("b", (0, 4))) == [("parents", 0, 4)]
    answer = mesh.ask("c", (0, 10))  # 0-4 went to two askers, 4-10 to one
    assert spans(answer) == [("retry", 0, 4), ("parents", 4, 10)]
    retry = answer.plans[0]
    assert isinstance(retry, RetryLater) and retry.retry_after_ms == 75
    assert spans(mesh.ask("d", (0, 10))) == [("retry", 0, 10)]
    mesh.hold("a", (0, 10))  # an asker has it now: it is the parent, not the seed
    assert parents_of(only_plan(mesh.ask("d", (0, 10)))) == ["a", "seed"]


def test_seed_allowances_are_given_back_after_their_ttl() -> None:
    mesh = Mesh(seed_fanout=1, seed_grant_ttl=3.0, peer_ttl=100.0)
    mesh.add("seed", seed=True, capacity=100)
    mesh.add("a")
    mesh.add("b")
    mesh.hold("seed", (0, 10))
    assert spans(mesh.ask("a", (0, 10))) == [("parents", 0, 10)]
    mesh.now += 2.9
    assert spans(mesh.ask("b", (0, 10))) == [("retry", 0, 10)]
    mesh.now += 0.2  # a never announced: b may go to the seed now
    assert spans(mesh.ask("b", (0, 10))) == [("parents", 0, 10)]
    mesh.now += 3.1
    mesh.s.expire(mesh.now)  # the sweep gives allowances back too
    assert mesh.s.blob(BLOB) is not None and mesh.s.blob(BLOB).seed_counts == [0] * COUNT


def test_seeds_and_a_zero_fanout_are_not_limited() -> None:
    mesh = Mesh(seed_fanout=0)
    mesh.add("seed", seed=True, capacity=100)
    mesh.add("seed2", seed=True, capacity=100)
    for name in ("a", "b", "c"):
        mesh.add(name)
    mesh.hold("seed", (0, 10))
    for name in ("a", "b", "c"):
        assert spans(mesh.ask(name, (0, 10))) == [("parents", 0, 10)]
    limited = Mesh(seed_fanout=1)
    limited.add("seed", seed=True, capacity=100)
    limited.add("seed2", seed=True, capacity=100)
    limited.add("a")
    limited.hold("seed", (0, 10))
    assert spans(limited.ask("a", (0, 10))) == [("parents", 0, 10)]
    assert spans(limited.ask("seed2", (0, 10))) == [("parents", 0, 10)]  # seeds copy freely


def test_withdrawn_chunks_are_no_longer_scheduled_from_that_peer(mesh: Mesh) -> None:
    for name in ("a", "b", "me"):
        mesh.add(name)
    mesh.hold("a", (0, 10))
    mesh.hold("b", (0, 4))
    mesh.s.withdraw(Withdraw(peer_id="a", blob_id=BLOB, chunk_count=COUNT, ranges=((2, 8),)), 0)
    assert {k: v.ranges() for k, v in mesh.s.holders(BLOB).items()} == {
        "a": [(0, 2), (8, 10)],
        "b": [(0, 4)],
    }
    answer = mesh.ask("me", (0, 10))
    assert [(kind, start, end) for kind, start, end in spans(answer) if kind == "parents"] == [
        ("parents", 0, 2),
        ("parents", 2, 4),
        ("parents", 8, 10),
    ]
    assert parents_of(answer.plans[1]) == ["b"]  # 2-4: only b now
    blob = mesh.s.blob(BLOB)
    assert blob is not None and blob.counts[2:4] == [1, 1] and blob.counts[4:8] == [0] * 4
    assert not blob.any_bits >> 4 & 0b1111  # 4-8: nobody, so a seed task or the origin


def test_a_peer_that_withdraws_everything_is_no_holder_and_is_persisted_so(mesh: Mesh) -> None:
    mesh.add("a")
    mesh.hold("a", (0, 10))
    mesh.s.drain_changes()
    mesh.s.withdraw(Withdraw(peer_id="a", blob_id=BLOB, chunk_count=COUNT, ranges=((0, 9),)), 0)
    assert {k: v.ranges() for k, v in mesh.s.holders(BLOB).items()} == {"a": [(9, 10)]}
    mesh.s.withdraw(Withdraw(peer_id="a", blob_id=BLOB, chunk_count=COUNT, ranges=((0, COUNT),)), 0)
    assert mesh.s.holders(BLOB) == {} and mesh.s.holdings("a") == {}
    assert mesh.s.drain_changes().holdings == {("a", BLOB): None}  # the row is removed
    mesh.hold("a", (3, 5))  # and it may announce again later
    assert {k: v.ranges() for k, v in mesh.s.holders(BLOB).items()} == {"a": [(3, 5)]}


def test_free_capacity_ranks_higher_within_a_zone(mesh: Mesh) -> None:
    mesh.add("me")
    mesh.add("loaded", capacity=10)
    mesh.add("idle", capacity=10)
    mesh.hold("loaded", (0, 10))
    mesh.hold("idle", (0, 10))
    mesh.beat("loaded", uploads=7)
    assert parents_of(only_plan(mesh.ask("me", (0, 10))))[0] == "idle"


def test_failures_lower_the_rank(mesh: Mesh) -> None:
    for name in ("flaky", "solid", "me"):
        mesh.add(name)
    mesh.hold("flaky", (0, 10))
    mesh.hold("solid", (0, 10))
    mesh.report("me", *[ParentResult(parent_id="flaky", failure=FailureKind.TIMEOUT)] * 3)
    assert parents_of(only_plan(mesh.ask("me", (0, 10))))[0] == "solid"
    flaky = mesh.s.peer("flaky")
    assert flaky is not None and flaky.failures == 3


def test_measured_throughput_raises_the_rank(mesh: Mesh) -> None:
    for name in ("slow", "fast", "me"):
        mesh.add(name)
    mesh.hold("slow", (0, 10))
    mesh.hold("fast", (0, 10))
    mesh.report(
        "me",
        ParentResult(parent_id="slow", chunks_ok=1, bytes=1 << 20, duration_ms=1000),
        ParentResult(parent_id="fast", chunks_ok=1, bytes=1 << 20, duration_ms=10),
    )
    assert parents_of(only_plan(mesh.ask("me", (0, 10))))[0] == "fast"
    fast = mesh.s.peer("fast")
    assert fast is not None and fast.throughput == pytest.approx(100 * (1 << 20))


def test_chunks_a_seed_failed_to_fetch_go_to_the_origin_for_a_while() -> None:
    mesh = Mesh(seed_failure_ttl=30.0, origin_limit=1, peer_ttl=1000.0)
    mesh.add("seed", seed=True)
    mesh.add("a")
    mesh.add("b")
    assert spans(mesh.ask("a", (0, 10))) == [("retry", 0, 10)]
    (task,) = mesh.s.take_seed_tasks("seed", mesh.now)
    failed = SeedTaskFailed(peer_id="seed", task_id=task.task_id, blob_id=BLOB, error="HTTP 401")
    mesh.s.seed_task_failed(failed, mesh.now)
    assert mesh.s.stats.seed_failures == 1 and mesh.s.queued_seed_tasks() == []
    assert spans(mesh.ask("a", (0, 12))) == [("origin", 0, 10), ("retry", 10, 12)]
    assert spans(mesh.ask("b", (0, 10))) == [("retry", 0, 10)]  # origin_limit askers only
    (event,) = mesh.s.drain_changes().events
    assert event.peer_id == "seed" and "HTTP 401" in event.detail
    mesh.now += 31  # the failure is forgotten: the seed is asked again
    assert spans(mesh.ask("b", (0, 10))) == [("retry", 0, 10)]
    assert [t.ranges for t in mesh.s.queued_seed_tasks()] == [((10, 12),), ((0, 10),)]


def test_a_failure_report_for_someone_elses_task_changes_nothing() -> None:
    mesh = Mesh()
    mesh.add("seed", seed=True)
    mesh.add("seed2", seed=True)
    mesh.add("a")
    mesh.ask("a", (0, 10))
    (task,) = mesh.s.take_seed_tasks("seed", mesh.now)
    for who, task_id in (("seed2", task.task_id), ("seed", "seed-999")):
        msg = SeedTaskFailed(peer_id=who, task_id=task_id, blob_id=BLOB, error="no")
        mesh.s.seed_task_failed(msg, mesh.now)
    assert mesh.s.stats.seed_failures == 0
    assert spans(mesh.ask("a", (0, 10))) == [("retry", 0, 10)]


def test_load_is_spread_over_equal_parents() -> None:
    mesh = Mesh(max_parents=1)
    holders = [mesh.add(f"h{i}", capacity=100) for i in range(3)]
    askers = [mesh.add(f"a{i}") for i in range(30)]
    for name in holders:
        mesh.hold(name, (0, 10))
    firsts = Counter(parents_of(only_plan(mesh.ask(name, (0, 10))))[0] for name in askers)
    assert set(firsts) == set(holders)
    assert max(firsts.values()) - min(firsts.values()) <= 1


def test_the_holder_scan_stops_early_when_many_can_serve() -> None:
    mesh = Mesh(scan_target=4, max_parents=2)
    mesh.add("me")
    for i in range(200):
        mesh.add(f"p{i}", capacity=1000)
        mesh.hold(f"p{i}", (0, 10))
    seen: set[str] = set()
    for _ in range(60):
        seen.update(parents_of(only_plan(mesh.ask("me", (0, 10)))))
    blob = mesh.s.blob(BLOB)
    assert blob is not None
    assert len(seen) > 50  # round robin reaches far beyond the first few holders
    assert blob.cursor != 0


# --- ranges and order ------------------------------------------------------------------------


def test_contiguous_chunks_with_the_same_parents_form_one_range(mesh: Mesh) -> None:
    mesh.add("me")
    for name in ("a", "b", "c"):
        mesh.add(name)
        mesh.hold(name, (0, COUNT))
    assert spans(mesh.ask("me")) == [("parents", 0, COUNT)]


def test_ranges_split_where_the_parent_set_changes(mesh: Mesh) -> None:
    mesh.add("me")
    mesh.add("a")
    mesh.add("b")
    mesh.hold("a", (0, 20))
    mesh.hold("b", (10, 30))
    answer = mesh.ask("me", (0, 30))
    assert spans(answer) == [("parents", 0, 10), ("parents", 10, 20), ("parents", 20, 30)]
    assert parents_of(answer.plans[0]) == ["a"]
    assert sorted(parents_of(answer.plans[1])) == ["a", "b"]
    assert parents_of(answer.plans[2]) == ["b"]


def test_rarest_ranges_come_first_when_the_whole_blob_is_wanted(mesh: Mesh) -> None:
    mesh.add("me")
    for name in ("a", "b", "c"):
        mesh.add(name)
        mesh.hold(name, (0, 50))
    mesh.hold("c", (50, COUNT))  # chunks 50.. have one holder, 0..50 have three
    assert [plan.start for plan in mesh.ask("me").plans] == [50, 0]
    # a partial request keeps chunk order
    assert [plan.start for plan in mesh.ask("me", (0, 60)).plans] == [0, 50]


def test_chunks_nobody_holds_are_rarest(mesh: Mesh) -> None:
    mesh.add("me")
    mesh.add("a")
    mesh.hold("a", (0, 90))
    answer = mesh.ask("me")
    assert spans(answer)[0] == ("origin", 90, COUNT)


# --- seeding and the origin ------------------------------------------------------------------


def test_one_seed_task_per_chunk_however_many_ask() -> None:
    mesh = Mesh(seed_retry_ms=250)
    mesh.add("seed", seed=True)
    askers = [mesh.add(f"a{i}") for i in range(10)]
    for name in askers:
        plan = only_plan(mesh.ask(name, (0, 10)))
        assert isinstance(plan, RetryLater) and plan.retry_after_ms == 250
    tasks = mesh.s.queued_seed_tasks()
    assert len(tasks) == 1
    assert tasks[0].ranges == ((0, 10),) and tasks[0].origin_url == ORIGIN
    mesh.ask("a0", (5, 15))  # overlaps: only 10..15 is new
    assert [t.ranges for t in mesh.s.queued_seed_tasks()] == [((0, 10),), ((10, 15),)]
    assert mesh.s.stats.seed_tasks == 2


def test_seed_takes_its_tasks_once_and_then_serves(mesh: Mesh) -> None:
    mesh.add("seed", seed=True)
    mesh.add("me")
    mesh.ask("me", (0, 10))
    tasks = mesh.s.take_seed_tasks("seed", mesh.now)
    assert [task.ranges for task in tasks] == [((0, 10),)]
    assert mesh.s.take_seed_tasks("seed", mesh.now) == []
    assert isinstance(only_plan(mesh.ask("me", (0, 10))), RetryLater)  # still fetching
    assert mesh.s.queued_seed_tasks() == []
    mesh.hold("seed", *tasks[0].ranges)
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["seed"]


def test_chunks_lost_after_a_finished_seed_task_are_seeded_again(mesh: Mesh) -> None:
    mesh.add("seed", seed=True)
    mesh.add("me")
    mesh.ask("me", (0, 10))
    (task,) = mesh.s.take_seed_tasks("seed", mesh.now)
    mesh.hold("seed", *task.ranges)
    mesh.s.blacklist("seed", BLOB)  # what it holds is not trusted any more
    assert isinstance(only_plan(mesh.ask("me", (0, 10))), RetryLater)
    assert [t.ranges for t in mesh.s.queued_seed_tasks()] == [((0, 10),)]


def test_a_seed_heartbeat_carries_its_tasks(mesh: Mesh) -> None:
    mesh.add("seed", seed=True)
    mesh.add("me")
    mesh.ask("me", (0, 10))
    answer = mesh.s.heartbeat(Heartbeat(peer_id="seed"), mesh.now)
    assert answer.known and [t.ranges for t in answer.seed_tasks] == [((0, 10),)]
    assert mesh.s.heartbeat(Heartbeat(peer_id="me"), mesh.now).seed_tasks == ()
    assert not mesh.s.heartbeat(Heartbeat(peer_id="nobody"), mesh.now).known


def test_a_seed_task_that_never_finishes_is_made_again() -> None:
    mesh = Mesh(seed_task_ttl=60.0, peer_ttl=1000.0)
    mesh.add("seed", seed=True)
    mesh.add("me")
    mesh.ask("me", (0, 10))
    mesh.s.take_seed_tasks("seed", mesh.now)
    mesh.now = 30.0
    mesh.ask("me", (0, 10))
    assert mesh.s.queued_seed_tasks() == []
    mesh.now = 61.0
    mesh.ask("me", (0, 10))
    assert [t.ranges for t in mesh.s.queued_seed_tasks()] == [((0, 10),)]


def test_a_seed_that_leaves_gives_its_tasks_back(mesh: Mesh) -> None:
    mesh.add("seed", seed=True)
    mesh.add("seed2", seed=True)
    mesh.add("me")
    mesh.ask("me", (0, 10))
    mesh.s.take_seed_tasks("seed", mesh.now)
    assert mesh.s.leave(Leave(peer_id="seed"), mesh.now)
    mesh.ask("me", (0, 10))
    assert [t.ranges for t in mesh.s.queued_seed_tasks()] == [((0, 10),)]


def test_without_a_seed_only_a_few_peers_go_to_the_origin() -> None:
    mesh = Mesh(origin_limit=2, origin_retry_ms=700, origin_grant_ttl=60.0)
    askers = [mesh.add(f"a{i}") for i in range(5)]
    kinds = [type(only_plan(mesh.ask(name, (0, 10)))) for name in askers]
    assert kinds == [FromOrigin, FromOrigin, RetryLater, RetryLater, RetryLater]
    late = only_plan(mesh.ask("a4", (0, 10)))
    assert isinstance(late, RetryLater) and late.retry_after_ms == 700
    assert mesh.s.stats.origin_plans == 2
    mesh.now = 61.0  # allowances are given back after their ttl
    assert isinstance(only_plan(mesh.ask("a4", (0, 10))), FromOrigin)


def test_the_origin_bound_is_per_chunk(mesh: Mesh) -> None:
    for name in ("a", "b", "c"):
        mesh.add(name)
    mesh.ask("a", (0, 10))
    mesh.ask("b", (0, 5))
    assert spans(mesh.ask("c", (0, 10))) == [("retry", 0, 5), ("origin", 5, 10)]


def test_a_seed_without_an_origin_url_cannot_help(mesh: Mesh) -> None:
    mesh.add("seed", seed=True)
    mesh.add("me")
    plan = only_plan(mesh.ask("me", (0, 10), origin=None))
    assert isinstance(plan, FromOrigin) and plan.origin_url is None
    assert mesh.s.queued_seed_tasks() == []


def test_the_origin_url_is_remembered_per_blob(mesh: Mesh) -> None:
    mesh.add("me")
    mesh.ask("me", (0, 10), origin=ORIGIN)
    mesh.add("seed", seed=True)
    mesh.ask("me", (20, 30), origin=None)
    assert [t.origin_url for t in mesh.s.queued_seed_tasks()] == [ORIGIN]


def test_a_seed_that_asks_goes_to_the_origin_and_others_wait_for_it(mesh: Mesh) -> None:
    mesh.add("seed", seed=True)
    mesh.add("me")
    assert isinstance(only_plan(mesh.ask("seed", (0, 10))), FromOrigin)
    assert isinstance(only_plan(mesh.ask("me", (0, 10))), RetryLater)
    assert mesh.s.queued_seed_tasks() == []


def test_an_expired_seed_does_not_count(mesh: Mesh) -> None:
    mesh.add("seed", seed=True)
    mesh.now = 100.0
    mesh.add("me")
    assert isinstance(only_plan(mesh.ask("me", (0, 10))), FromOrigin)


# --- reputation --------------------------------------------------------------------------------


def test_a_digest_mismatch_blacklists_the_parent_for_that_blob_at_once(mesh: Mesh) -> None:
    for name in ("liar", "honest", "me"):
        mesh.add(name)
    for blob in (BLOB, OTHER):
        mesh.hold("liar", (0, 10), blob=blob)
    mesh.hold("honest", (0, 10))
    mismatch = ParentResult(parent_id="liar", chunks_ok=3, mismatched=(4,))
    mesh.report("me", mismatch)
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["honest"]
    assert "liar" not in mesh.s.holders(BLOB)
    mesh.hold("liar", (0, 10))  # its later announcements of the blob are ignored
    assert "liar" not in mesh.s.holders(BLOB)
    assert parents_of(only_plan(mesh.ask("me", (0, 10), blob=OTHER))) == ["liar"]
    liar = mesh.s.peer("liar")
    assert liar is not None and liar.success == pytest.approx(0.5)
    events = mesh.s.drain_changes().events
    assert [(e.peer_id, e.kind, e.blob_id) for e in events] == [("liar", "digest_mismatch", BLOB)]
    assert events[0].delta == pytest.approx(-0.5)
    assert mesh.s.stats.digest_mismatches == 1


def test_digest_mismatch_kind_alone_also_blacklists(mesh: Mesh) -> None:
    mesh.add("liar")
    mesh.add("me")
    mesh.hold("liar", (0, 10))
    mesh.report("me", ParentResult(parent_id="liar", failure=FailureKind.DIGEST_MISMATCH))
    assert mesh.s.is_blacklisted("liar", BLOB)


def test_other_failures_do_not_blacklist(mesh: Mesh) -> None:
    mesh.add("slow")
    mesh.add("me")
    mesh.hold("slow", (0, 10))
    mesh.report("me", ParentResult(parent_id="slow", failure=FailureKind.TIMEOUT))
    assert not mesh.s.is_blacklisted("slow", BLOB)
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["slow"]


def fail(mesh: Mesh, parent: str, kind: FailureKind, times: int, asker: str = "me") -> None:
    for _ in range(times):
        mesh.report(asker, ParentResult(parent_id=parent, failure=kind))


def test_a_parent_that_keeps_failing_is_suspended_not_one_that_is_busy() -> None:
    mesh = Mesh(suspend_below=0.25, ewma_alpha=0.3)
    for name in ("dead", "full", "me"):
        mesh.add(name)
    fail(mesh, "dead", FailureKind.CONNECT, 3)  # success 0.7 ** 3 = 0.34: still named
    assert not mesh.s.is_suspended("dead", mesh.now)
    fail(mesh, "dead", FailureKind.TIMEOUT, 1)  # 0.24: suspended
    assert mesh.s.is_suspended("dead", mesh.now)
    fail(mesh, "full", FailureKind.BUSY, 20)
    full = mesh.s.peer("full")
    assert full is not None and full.success == 1.0 and full.failures == 20
    assert not mesh.s.is_suspended("full", mesh.now)
    assert mesh.s.stats.suspensions == 1


@pytest.mark.parametrize(
    "kind",
    [FailureKind.CONNECT, FailureKind.TIMEOUT, FailureKind.PROTOCOL, FailureKind.OTHER,
     FailureKind.NOT_FOUND],
)  # fmt: skip
def test_every_real_failure_kind_can_suspend(kind: FailureKind) -> None:
    mesh = Mesh()
    mesh.add("dead")
    mesh.add("me")
    fail(mesh, "dead", kind, 4)
    assert mesh.s.is_suspended("dead", mesh.now)


def test_a_suspended_parent_is_named_for_no_blob_until_its_time_is_up() -> None:
    mesh = Mesh(suspend_seconds=10.0, probation_success=0.5, peer_ttl=1000.0)
    for name in ("flaky", "good", "me"):
        mesh.add(name)
    for blob in (BLOB, OTHER):
        mesh.hold("flaky", (0, 10), blob=blob)
    mesh.hold("good", (0, 10))
    fail(mesh, "flaky", FailureKind.CONNECT, 4)
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["good"]
    assert spans(mesh.ask("me", (0, 10), blob=OTHER)) == [("origin", 0, 10)]
    mesh.now = 9.9
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["good"]
    mesh.now = 10.0
    assert parents_of(only_plan(mesh.ask("me", (0, 10), blob=OTHER))) == ["flaky"]
    flaky = mesh.s.peer("flaky")
    assert flaky is not None and flaky.success == pytest.approx(0.5)  # on probation
    fail(mesh, "flaky", FailureKind.CONNECT, 1)  # 0.35: one failure is not enough ...
    assert not mesh.s.is_suspended("flaky", mesh.now)
    fail(mesh, "flaky", FailureKind.CONNECT, 1)  # ... two are
    assert mesh.s.is_suspended("flaky", mesh.now)
    assert mesh.s.is_suspended("flaky", 19.9) and mesh.s.stats.suspensions == 2


def test_chunks_only_a_suspended_seed_holds_go_to_the_origin_sparingly() -> None:
    mesh = Mesh(origin_limit=2, origin_retry_ms=700, peer_ttl=1000.0)
    mesh.add("seed", seed=True, capacity=100)
    mesh.add("seed2", seed=True, capacity=100)  # alive: chunks nobody holds still go to it
    for name in ("a", "b", "c", "d"):
        mesh.add(name)
    mesh.hold("seed", (0, 10))
    fail(mesh, "seed", FailureKind.CONNECT, 4, asker="a")
    mesh.s.drain_changes()
    assert spans(mesh.ask("a", (0, 12))) == [("origin", 0, 10), ("retry", 10, 12)]
    assert spans(mesh.ask("b", (0, 10))) == [("origin", 0, 10)]
    late = mesh.ask("c", (0, 10))
    assert spans(late) == [("retry", 0, 10)]
    assert isinstance(late.plans[0], RetryLater) and late.plans[0].retry_after_ms == 700
    assert [t.ranges for t in mesh.s.queued_seed_tasks()] == [((10, 12),)]  # none for 0-10
    assert mesh.s.take_seed_tasks("seed", mesh.now) == []  # a suspended seed takes none
    assert [t.ranges for t in mesh.s.take_seed_tasks("seed2", mesh.now)] == [((10, 12),)]
    mesh.hold("a", (0, 10))  # an asker has them now: the others fetch from it
    assert parents_of(only_plan(mesh.ask("d", (0, 10)))) == ["a"]


def test_with_only_a_suspended_seed_unheld_chunks_go_to_the_origin() -> None:
    mesh = Mesh(origin_limit=1, peer_ttl=1000.0)
    mesh.add("seed", seed=True)
    mesh.add("a")
    mesh.add("b")
    fail(mesh, "seed", FailureKind.TIMEOUT, 4, asker="a")
    assert spans(mesh.ask("a", (0, 10))) == [("origin", 0, 10)]
    assert spans(mesh.ask("b", (0, 10))) == [("retry", 0, 10)]
    assert mesh.s.queued_seed_tasks() == []  # its chunks would only be stranded on it


def test_suspending_a_parent_is_a_reputation_event() -> None:
    mesh = Mesh(suspend_seconds=7.5)
    mesh.add("dead")
    mesh.add("me")
    fail(mesh, "dead", FailureKind.CONNECT, 3)
    fail(mesh, "dead", FailureKind.NOT_FOUND, 2)  # the second one lands while suspended
    events = mesh.s.drain_changes().events
    assert [(e.peer_id, e.kind, e.blob_id) for e in events] == [
        *[("dead", "connect", BLOB)] * 3,
        *[("dead", "not_found", BLOB)] * 2,
    ]
    assert [e.detail for e in events] == ["", "", "", "suspended for 7.5 s", ""]
    assert events[3].delta == pytest.approx(0.7**4 - 0.7**3)


def test_a_peer_that_leaves_while_suspended_is_forgotten() -> None:
    mesh = Mesh(peer_ttl=1000.0)
    mesh.add("dead")
    mesh.add("me")
    fail(mesh, "dead", FailureKind.CONNECT, 4)
    mesh.s.leave(Leave(peer_id="dead"), mesh.now)
    mesh.add("dead")  # back as a new peer: no suspension carried over
    mesh.hold("dead", (0, 10))
    assert parents_of(only_plan(mesh.ask("me", (0, 10)))) == ["dead"]
    mesh.now = 11.0
    mesh.s.expire(mesh.now)  # nothing left to lift
    assert not mesh.s.is_suspended("dead", mesh.now)


# --- lifecycle and errors ----------------------------------------------------------------------


def test_unknown_peers_are_refused(mesh: Mesh) -> None:
    with pytest.raises(UnknownPeer) as caught:
        mesh.ask("ghost", (0, 1))
    assert caught.value.peer_id == "ghost"
    with pytest.raises(UnknownPeer):
        mesh.hold("ghost", (0, 1))


def test_a_blob_keeps_its_chunk_count(mesh: Mesh) -> None:
    mesh.add("me")
    mesh.hold("me", (0, 1))
    with pytest.raises(ChunkCountMismatch) as caught:
        mesh.s.announce(Announce(peer_id="me", blob_id=BLOB, chunk_count=7, ranges=()), 0.0)
    assert (caught.value.known, caught.value.found) == (COUNT, 7)


def test_registering_again_keeps_chunks_and_updates_addresses(mesh: Mesh) -> None:
    mesh.add("p", zone="z1")
    mesh.add("me", zone="z2")
    mesh.hold("p", (0, 10))
    mesh.add("p", zone="z2", capacity=3)
    peer = mesh.s.peer("p")
    assert peer is not None and (peer.zone, peer.capacity) == ("z2", 3)
    assert mesh.s.holdings("p") == {BLOB: ChunkSet.from_ranges(COUNT, [(0, 10)])}


def test_leave_forgets_everything(mesh: Mesh) -> None:
    mesh.add("p")
    mesh.add("me")
    mesh.hold("p", (0, 10))
    assert mesh.s.leave(Leave(peer_id="p"), mesh.now)
    assert not mesh.s.leave(Leave(peer_id="p"), mesh.now)
    assert mesh.s.holders(BLOB) == {}
    assert not any(isinstance(p, FromParents) for p in mesh.ask("me", (0, 10)).plans)


def test_drain_changes_hands_over_what_changed(mesh: Mesh) -> None:
    mesh.add("p")
    mesh.add("q")
    mesh.hold("p", (0, 10))
    mesh.hold("q", (0, 5))
    changes = mesh.s.drain_changes()
    assert set(changes.peers) == {"p", "q"}
    assert changes.holdings == {
        ("p", BLOB): ChunkSet.from_ranges(COUNT, [(0, 10)]),
        ("q", BLOB): ChunkSet.from_ranges(COUNT, [(0, 5)]),
    }
    assert not mesh.s.drain_changes()
    mesh.s.leave(Leave(peer_id="q"), mesh.now)
    mesh.hold("p", (20, 30))
    changes = mesh.s.drain_changes()
    assert changes.removed_peers == {"q"}
    assert changes.holdings == {("p", BLOB): ChunkSet.from_ranges(COUNT, [(0, 10), (20, 30)])}


def test_restore_reloads_without_marking_changes(mesh: Mesh) -> None:
    mesh.add("p")
    mesh.s.drain_changes()
    mesh.s.restore("p", BLOB, ChunkSet.from_ranges(COUNT, [(0, 10)]))
    assert not mesh.s.drain_changes()
    assert set(mesh.s.holders(BLOB)) == {"p"}


# --- preheat -----------------------------------------------------------------------------------


def test_preheat_seeds_every_missing_chunk_before_anyone_asks(mesh: Mesh) -> None:
    mesh.add("seed", seed=True)
    mesh.add("early")
    mesh.hold("early", (0, 40))
    status = mesh.s.preheat(
        [PreheatBlob(blob_id=BLOB, origin_url=ORIGIN, chunk_count=COUNT)], mesh.now
    )
    assert status.state is JobState.PENDING and status.chunks_done == 40
    tasks = mesh.s.take_seed_tasks("seed", mesh.now)
    assert [t.ranges for t in tasks] == [((40, COUNT),)]
    assert mesh.s.job_status(status.job_id).state is JobState.RUNNING
    mesh.hold("seed", (40, COUNT))
    done = mesh.s.job_status(status.job_id)
    assert (done.state, done.blobs_done, done.chunks_done) == (JobState.SUCCEEDED, 1, COUNT)


def test_preheat_of_a_blob_of_unknown_size_fetches_it_whole(mesh: Mesh) -> None:
    mesh.add("seed", seed=True)
    mesh.add("me")
    status = mesh.s.preheat([PreheatBlob(blob_id=BLOB, origin_url=ORIGIN)], mesh.now, "job-x")
    assert status.job_id == "job-x"
    (task,) = mesh.s.take_seed_tasks("seed", mesh.now)
    assert task.chunk_count is None and task.ranges == ()
    # a peer asks before the seed announced: the whole-blob task covers it, no new task
    assert isinstance(only_plan(mesh.ask("me", (0, 10))), RetryLater)
    assert mesh.s.queued_seed_tasks() == []
    mesh.hold("seed", (0, COUNT))
    assert mesh.s.job_status("job-x").state is JobState.SUCCEEDED


def test_preheat_fails_after_its_attempts() -> None:
    mesh = Mesh(seed_task_ttl=10.0, preheat_attempts=2, peer_ttl=1e9)
    mesh.add("seed", seed=True)
    status = mesh.s.preheat(
        [PreheatBlob(blob_id=BLOB, origin_url=ORIGIN, chunk_count=COUNT)], mesh.now
    )
    for step in (1, 2):
        mesh.now = 11.0 * step
        mesh.s.expire(mesh.now)
    final = mesh.s.job_status(status.job_id)
    assert final.state is JobState.FAILED and final.error and BLOB in final.error


def test_an_unknown_job_is_an_error(mesh: Mesh) -> None:
    with pytest.raises(UnknownJob):
        mesh.s.job_status("nope")


# --- purity ------------------------------------------------------------------------------------


def test_the_policy_imports_no_io_and_no_clock() -> None:
    tree = ast.parse(inspect.getsource(_policy))
    names = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    forbidden = {"asyncio", "aiohttp", "socket", "time", "datetime", "sqlalchemy", "random", "os"}
    assert not names & forbidden


def test_asking_for_a_huge_blob_costs_no_memory_per_chunk(mesh: Mesh) -> None:
    mesh.add("me")
    huge = protocol.MAX_CHUNKS
    msg = ScheduleRequest(peer_id="me", blob_id=OTHER, chunk_count=huge, wanted=((0, 10),))
    assert isinstance(only_plan(mesh.s.schedule(msg, mesh.now)), FromOrigin)
    blob = mesh.s.blob(OTHER)
    assert blob is not None and blob.counts == []


def test_stats_count_decisions_and_plans(mesh: Mesh) -> None:
    mesh.add("a")
    mesh.add("me")
    mesh.hold("a", (0, 10))
    mesh.ask("me", (0, 20))
    stats = mesh.s.stats
    assert (stats.decisions, stats.parent_plans, stats.origin_plans) == (1, 1, 1)


def test_policy_errors_belong_to_the_supernode_tree() -> None:
    from supernode import SupernodeError

    for error in (UnknownPeer, UnknownJob, ChunkCountMismatch):
        assert issubclass(error, _policy.PolicyError)
        assert issubclass(error, SupernodeError)
