"""Hypothesis strategies that build valid protocol messages (bounded sizes)."""

from __future__ import annotations

from hypothesis import strategies as st

from protocol import (
    Announce,
    ErrorAnswer,
    FailureKind,
    FromOrigin,
    FromParents,
    Heartbeat,
    HeartbeatAnswer,
    JobState,
    JobStatus,
    Leave,
    Message,
    Parent,
    ParentResult,
    PieceResults,
    PreheatBlob,
    PreheatRequest,
    Register,
    RegisterAnswer,
    RetryLater,
    ScheduleAnswer,
    ScheduleRequest,
    SeedTask,
    SeedTaskBatch,
    SeedTaskFailed,
    Withdraw,
)

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

blob_ids = st.text("0123456789abcdef", min_size=64, max_size=64)
peer_ids = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(ALNUM),
    st.text(ALNUM + "._:@-", max_size=40),
)
task_ids = st.builds(
    lambda head, tail: head + tail, st.sampled_from(ALNUM), st.text(ALNUM + "._:-", max_size=30)
)
host_names = st.builds(
    lambda head, tail: head + tail, st.sampled_from(ALNUM), st.text(ALNUM + ".-", max_size=40)
)
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
ports = st.integers(1, 65_535)
http_urls = st.builds(lambda host, port: f"http://{host}:{port}/", host_names, ports)
origin_urls = st.builds(
    lambda path: f"https://registry.example/v2/{path}", st.text(ALNUM, max_size=20)
)
multiaddrs = st.builds(lambda port: f"/ip4/127.0.0.1/tcp/{port}", ports)
counts = st.integers(0, 2**40)
millis = st.integers(0, 86_400_000)
chunk_counts = st.integers(1, 5_000)
texts = st.text(max_size=100)


@st.composite
def ranges_within(
    draw: st.DrawFn, chunk_count: int, max_size: int = 20
) -> tuple[tuple[int, int], ...]:
    """Non-empty half-open ranges inside `[0, chunk_count)`."""
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, chunk_count - 1), st.integers(1, chunk_count)),
            max_size=max_size,
        )
    )
    return tuple((min(a, b - 1), max(a + 1, b)) for a, b in pairs)


@st.composite
def chunks_of_blob(draw: st.DrawFn, kind: type[Announce] | type[Withdraw]) -> Announce | Withdraw:
    """An announce or a withdraw: one body, ranges within the blob."""
    count = draw(chunk_counts)
    return kind(
        peer_id=draw(peer_ids),
        blob_id=draw(blob_ids),
        chunk_count=count,
        ranges=draw(ranges_within(count)),
    )


@st.composite
def schedule_requests(draw: st.DrawFn) -> ScheduleRequest:
    count = draw(chunk_counts)
    return ScheduleRequest(
        peer_id=draw(peer_ids),
        blob_id=draw(blob_ids),
        chunk_count=count,
        wanted=draw(ranges_within(count)),
        origin_url=draw(st.none() | origin_urls),
    )


@st.composite
def seed_tasks(draw: st.DrawFn) -> SeedTask:
    count = draw(st.none() | chunk_counts)
    return SeedTask(
        task_id=draw(task_ids),
        blob_id=draw(blob_ids),
        origin_url=draw(origin_urls),
        chunk_count=count,
        ranges=draw(ranges_within(count)) if count else (),
    )


registers = st.builds(
    Register,
    peer_id=peer_ids,
    host_name=host_names,
    ip=ips,
    upload_port=ports,
    proxy_port=st.none() | ports,
    http_url=http_urls,
    multiaddrs=st.lists(multiaddrs, max_size=3).map(tuple),
    upload_capacity=st.integers(0, 4_096),
    labels=st.dictionaries(
        st.sampled_from(["zone", "rack", "idc"]), st.text(max_size=20), max_size=3
    ),
    seed=st.booleans(),
)
parents = st.builds(
    Parent,
    peer_id=peer_ids,
    http_url=st.none() | http_urls,
    multiaddrs=st.lists(multiaddrs, max_size=2).map(tuple),
)


@st.composite
def plans(draw: st.DrawFn) -> FromParents | RetryLater | FromOrigin:
    start = draw(st.integers(0, 10_000))
    end = start + draw(st.integers(1, 1_000))
    kind = draw(st.sampled_from(["parents", "retry", "origin"]))
    if kind == "parents":
        chosen = tuple(draw(st.lists(parents, min_size=1, max_size=4)))
        return FromParents(start=start, end=end, parents=chosen)
    if kind == "retry":
        return RetryLater(start=start, end=end, retry_after_ms=draw(millis))
    return FromOrigin(start=start, end=end, origin_url=draw(st.none() | origin_urls))


parent_results = st.builds(
    ParentResult,
    parent_id=peer_ids,
    chunks_ok=counts,
    bytes=counts,
    duration_ms=millis,
    failure=st.sampled_from(FailureKind),
    mismatched=st.lists(st.integers(0, 100_000), max_size=5).map(tuple),
)
preheat_blobs = st.builds(
    PreheatBlob, blob_id=blob_ids, origin_url=origin_urls, chunk_count=st.none() | chunk_counts
)

MESSAGES: dict[type[Message], st.SearchStrategy[Message]] = {
    Register: registers,
    RegisterAnswer: st.builds(
        RegisterAnswer,
        peer_id=peer_ids,
        heartbeat_interval_ms=st.integers(1, 3_600_000),
        expire_after_ms=st.integers(1, 86_400_000),
    ),
    Heartbeat: st.builds(Heartbeat, peer_id=peer_ids, current_uploads=st.integers(0, 65_535)),
    HeartbeatAnswer: st.builds(
        HeartbeatAnswer,
        known=st.booleans(),
        seed_tasks=st.lists(seed_tasks(), max_size=3).map(tuple),
    ),
    Leave: st.builds(Leave, peer_id=peer_ids),
    Announce: chunks_of_blob(Announce),
    Withdraw: chunks_of_blob(Withdraw),
    SeedTaskFailed: st.builds(
        SeedTaskFailed,
        peer_id=peer_ids,
        task_id=task_ids,
        blob_id=blob_ids,
        error=st.text(max_size=200),
    ),
    ScheduleRequest: schedule_requests(),
    ScheduleAnswer: st.builds(
        ScheduleAnswer, blob_id=blob_ids, plans=st.lists(plans(), max_size=6).map(tuple)
    ),
    PieceResults: st.builds(
        PieceResults,
        peer_id=peer_ids,
        blob_id=blob_ids,
        results=st.lists(parent_results, max_size=4).map(tuple),
    ),
    SeedTask: seed_tasks(),
    SeedTaskBatch: st.builds(SeedTaskBatch, tasks=st.lists(seed_tasks(), max_size=3).map(tuple)),
    PreheatRequest: st.one_of(
        st.builds(PreheatRequest, image=st.just("registry.example/library/app:1.0")),
        st.builds(PreheatRequest, blobs=st.lists(preheat_blobs, min_size=1, max_size=4).map(tuple)),
    ),
    JobStatus: st.builds(
        JobStatus,
        job_id=task_ids,
        state=st.sampled_from(JobState),
        blobs_total=counts,
        blobs_done=counts,
        chunks_total=counts,
        chunks_done=counts,
        error=st.none() | texts,
    ),
    ErrorAnswer: st.builds(
        ErrorAnswer,
        code=st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20),
        message=texts,
        path=st.none() | st.just("$.ranges[0]"),
    ),
}
"""A strategy for every envelope type."""
