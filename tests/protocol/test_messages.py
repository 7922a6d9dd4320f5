"""Messages: table-driven encode/decode, malformed input, hypothesis round trips."""

from __future__ import annotations

import contextlib
import typing

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Announce,
    AnyMessage,
    FailureKind,
    FromOrigin,
    FromParents,
    Heartbeat,
    InvalidMessage,
    Leave,
    Message,
    MessageTooLarge,
    Parent,
    ParentResult,
    PieceResults,
    PreheatRequest,
    ProtocolError,
    Register,
    RetryLater,
    ScheduleAnswer,
    ScheduleRequest,
    UnsupportedVersion,
    Withdraw,
    decode,
    encode,
)

from .strategies import MESSAGES

BLOB = "0123456789abcdef" * 4
BLOB_JSON = BLOB.encode()

# --- encode: message -> exact JSON --------------------------------------------------------

ENCODED: list[tuple[Message, bytes]] = [
    (
        Heartbeat(peer_id="p1", current_uploads=3),
        b'{"type":"heartbeat","version":1,"peer_id":"p1","current_uploads":3}',
    ),
    (Leave(peer_id="p1"), b'{"type":"leave","version":1,"peer_id":"p1"}'),
    (
        Announce(peer_id="p1", blob_id=BLOB, chunk_count=10, ranges=((0, 4), (6, 10))),
        b'{"type":"announce","version":1,"peer_id":"p1","blob_id":"'
        + BLOB_JSON
        + b'","chunk_count":10,"ranges":[[0,4],[6,10]]}',
    ),
    (
        Withdraw(peer_id="p1", blob_id=BLOB, chunk_count=10, ranges=((4, 6),)),
        b'{"type":"withdraw","version":1,"peer_id":"p1","blob_id":"'
        + BLOB_JSON
        + b'","chunk_count":10,"ranges":[[4,6]]}',
    ),
    (
        ScheduleAnswer(
            blob_id=BLOB,
            plans=(
                FromParents(start=0, end=2, parents=(Parent(peer_id="a", http_url="http://a:1"),)),
                RetryLater(start=2, end=3, retry_after_ms=500),
                FromOrigin(start=3, end=4),
            ),
        ),
        b'{"type":"schedule_answer","version":1,"blob_id":"' + BLOB_JSON + b'","plans":['
        b'{"action":"parents","start":0,"end":2,'
        b'"parents":[{"peer_id":"a","http_url":"http://a:1","multiaddrs":[]}]},'
        b'{"action":"retry","start":2,"end":3,"retry_after_ms":500},'
        b'{"action":"origin","start":3,"end":4,"origin_url":null}]}',
    ),
    (
        PieceResults(
            peer_id="p1",
            blob_id=BLOB,
            results=(
                ParentResult(parent_id="a", failure=FailureKind.DIGEST_MISMATCH, mismatched=(7,)),
            ),
        ),
        b'{"type":"piece_results","version":1,"peer_id":"p1","blob_id":"' + BLOB_JSON + b'",'
        b'"results":[{"parent_id":"a","chunks_ok":0,"bytes":0,"duration_ms":0,'
        b'"failure":"digest_mismatch","mismatched":[7]}]}',
    ),
]


@pytest.mark.parametrize(("msg", "expected"), ENCODED)
def test_encode_json_is_exact(msg: Message, expected: bytes) -> None:
    assert encode(msg) == expected
    assert decode(expected) == msg


@pytest.mark.parametrize(("msg", "expected"), ENCODED)
def test_msgpack_round_trip_of_the_table(msg: Message, expected: bytes) -> None:
    data = encode(msg, "msgpack")
    assert data != expected
    assert decode(data, "msgpack", type(msg)) == msg


# --- decode: bad input -> typed error with the field path ---------------------------------

REGISTER = b'"type":"register","peer_id":"p1","host_name":"h1","ip":"10.0.0.1","upload_port":80'
BAD: list[tuple[str, bytes, type[ProtocolError], str]] = [
    ("not json", b"{nope", InvalidMessage, "$"),
    ("not an object", b"[1,2]", InvalidMessage, "$"),
    ("no tag", b'{"peer_id":"p1"}', InvalidMessage, "$"),
    ("unknown tag", b'{"type":"gossip","peer_id":"p1"}', InvalidMessage, "$.type"),
    ("missing field", b'{"type":"heartbeat"}', InvalidMessage, "$"),
    ("wrong type", b'{"type":"heartbeat","peer_id":7}', InvalidMessage, "$.peer_id"),
    (
        "negative load",
        b'{"type":"heartbeat","peer_id":"p","current_uploads":-1}',
        InvalidMessage,
        "$.current_uploads",
    ),
    ("unknown field", b'{"type":"leave","peer_id":"p","evil":1}', InvalidMessage, "$"),
    ("bad peer id", b'{"type":"leave","peer_id":"no spaces"}', InvalidMessage, "$.peer_id"),
    (
        "upper-case blob id",
        b'{"type":"announce","peer_id":"p","blob_id":"'
        + BLOB.upper().encode()
        + b'","chunk_count":1,"ranges":[]}',
        InvalidMessage,
        "$.blob_id",
    ),
    (
        "short blob id",
        b'{"type":"announce","peer_id":"p","blob_id":"abc","chunk_count":1,"ranges":[]}',
        InvalidMessage,
        "$.blob_id",
    ),
    (
        "range past count",
        b'{"type":"announce","peer_id":"p","blob_id":"'
        + BLOB_JSON
        + b'","chunk_count":4,"ranges":[[0,5]]}',
        InvalidMessage,
        "$.ranges[0]",
    ),
    (
        "empty range",
        b'{"type":"announce","peer_id":"p","blob_id":"'
        + BLOB_JSON
        + b'","chunk_count":4,"ranges":[[0,1],[2,2]]}',
        InvalidMessage,
        "$.ranges[1]",
    ),
    (
        "range not a pair",
        b'{"type":"announce","peer_id":"p","blob_id":"'
        + BLOB_JSON
        + b'","chunk_count":4,"ranges":[[0,1,2]]}',
        InvalidMessage,
        "$.ranges[0]",
    ),
    (
        "zero chunks",
        b'{"type":"schedule","peer_id":"p","blob_id":"' + BLOB_JSON + b'","chunk_count":0}',
        InvalidMessage,
        "$.chunk_count",
    ),
    (
        "bad ip",
        b"{" + REGISTER.replace(b"10.0.0.1", b"10.0.0.300") + b',"http_url":"http://h1:80"}',
        InvalidMessage,
        "$.ip",
    ),
    ("no transport", b"{" + REGISTER + b"}", InvalidMessage, "$.http_url"),
    ("bad url", b"{" + REGISTER + b',"http_url":"ftp://h1"}', InvalidMessage, "$.http_url"),
    (
        "port 0",
        b"{"
        + REGISTER.replace(b'"upload_port":80', b'"upload_port":0')
        + b',"http_url":"http://h:1"}',
        InvalidMessage,
        "$.upload_port",
    ),
    (
        "bad failure kind",
        b'{"type":"piece_results","peer_id":"p","blob_id":"'
        + BLOB_JSON
        + b'","results":[{"parent_id":"a","failure":"meh"}]}',
        InvalidMessage,
        "$.results[0].failure",
    ),
    (
        "nested plan bad",
        b'{"type":"schedule_answer","blob_id":"'
        + BLOB_JSON
        + b'","plans":[{"action":"retry","start":3,"end":3,"retry_after_ms":1}]}',
        InvalidMessage,
        "$.plans[0].end",
    ),
    (
        "parents empty",
        b'{"type":"schedule_answer","blob_id":"'
        + BLOB_JSON
        + b'","plans":[{"action":"parents","start":0,"end":1,"parents":[]}]}',
        InvalidMessage,
        "$.plans[0].parents",
    ),
    ("preheat neither", b'{"type":"preheat"}', InvalidMessage, "$.image"),
    (
        "version as text",
        b'{"type":"leave","version":"1","peer_id":"p"}',
        InvalidMessage,
        "$.version",
    ),
    ("future version", b'{"type":"leave","version":2,"peer_id":"p"}', UnsupportedVersion, ""),
    (
        "future version, new shape",
        b'{"type":"hello","version":9,"anything":[1]}',
        UnsupportedVersion,
        "",
    ),
    ("version zero", b'{"type":"leave","version":0,"peer_id":"p"}', UnsupportedVersion, ""),
]


@pytest.mark.parametrize(("name", "data", "error", "path"), BAD, ids=[row[0] for row in BAD])
def test_bad_json_raises_typed_error_with_path(
    name: str, data: bytes, error: type[ProtocolError], path: str
) -> None:
    with pytest.raises(error) as caught:
        decode(data)
    if isinstance(caught.value, InvalidMessage):
        assert caught.value.path == path
    assert not isinstance(caught.value, msgspec.MsgspecError)


@pytest.mark.parametrize(
    ("name", "data", "error", "path"), BAD[2:], ids=[row[0] for row in BAD[2:]]
)
def test_bad_msgpack_raises_the_same_errors(
    name: str, data: bytes, error: type[ProtocolError], path: str
) -> None:
    as_msgpack = msgspec.msgpack.encode(msgspec.json.decode(data))
    with pytest.raises(error) as caught:
        decode(as_msgpack, "msgpack")
    if isinstance(caught.value, InvalidMessage):
        assert caught.value.path == path


def test_garbage_msgpack_is_invalid() -> None:
    with pytest.raises(InvalidMessage):
        decode(b"\xc1\xff\x00", "msgpack")


def test_oversized_message_is_refused_before_parsing() -> None:
    data = b" " * (MAX_MESSAGE_BYTES + 1)
    with pytest.raises(MessageTooLarge) as caught:
        decode(data)
    assert caught.value.size == MAX_MESSAGE_BYTES + 1


def test_list_longer_than_its_bound_is_refused() -> None:
    ranges = ",".join("[0,1]" for _ in range(protocol.MAX_RANGES + 1))
    data = (
        b'{"type":"announce","peer_id":"p","blob_id":"'
        + BLOB_JSON
        + b'","chunk_count":4,"ranges":['
        + ranges.encode()
        + b"]}"
    )
    with pytest.raises(InvalidMessage) as caught:
        decode(data)
    assert caught.value.path == "$.ranges"


def test_too_many_parents_are_refused() -> None:
    parent = b'{"peer_id":"a","http_url":"http://a:1"}'
    data = (
        b'{"type":"schedule_answer","blob_id":"' + BLOB_JSON + b'","plans":[{"action":"parents",'
        b'"start":0,"end":1,"parents":['
        + b",".join([parent] * (protocol.MAX_PARENTS + 1))
        + b"]}]}"
    )
    with pytest.raises(InvalidMessage) as caught:
        decode(data)
    assert caught.value.path == "$.plans[0].parents"


def test_decode_to_one_type_refuses_another() -> None:
    with pytest.raises(InvalidMessage):
        decode(encode(Leave(peer_id="p")), "json", Heartbeat)


def test_version_is_always_encoded() -> None:
    assert b'"version":1' in encode(Leave(peer_id="p"))
    assert PROTOCOL_VERSION == 1


def test_unknown_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        encode(Leave(peer_id="p"), "xml")  # type: ignore[arg-type]


def test_constructing_an_invalid_message_raises_invalid_message() -> None:
    with pytest.raises(InvalidMessage) as caught:
        ScheduleRequest(peer_id="p", blob_id=BLOB, chunk_count=2, wanted=((1, 3),))
    assert caught.value.path == "$.wanted[0]"
    with pytest.raises(InvalidMessage) as caught:
        PreheatRequest()
    assert caught.value.path == "$.image"


def test_messages_are_frozen_and_hashable() -> None:
    msg = Leave(peer_id="p")
    with pytest.raises(AttributeError):
        msg.peer_id = "q"  # type: ignore[misc]
    assert hash(msg) == hash(Leave(peer_id="p"))


def test_helpers_give_chunk_sets() -> None:
    announce = Announce(peer_id="p", blob_id=BLOB, chunk_count=10, ranges=((0, 2), (1, 4)))
    assert announce.chunks().ranges() == [(0, 4)]
    whole = ScheduleRequest(peer_id="p", blob_id=BLOB, chunk_count=5)
    assert whole.wanted_chunks().is_full()
    assert (
        Register(
            peer_id="p",
            host_name="h",
            ip="::1",
            upload_port=1,
            multiaddrs=("/ip6/::1/tcp/1",),
            labels={"zone": "z"},
        ).zone
        == "z"
    )


# --- hypothesis round trips ----------------------------------------------------------------


def test_every_envelope_has_a_strategy() -> None:
    assert set(typing.get_args(AnyMessage)) == set(MESSAGES)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("kind", list(MESSAGES), ids=lambda kind: kind.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(kind: type[Message], fmt: protocol.Format, data: st.DataObject) -> None:
    msg = data.draw(MESSAGES[kind])
    encoded = encode(msg, fmt)
    assert decode(encoded, fmt) == msg
    assert decode(encoded, fmt, kind) == msg


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_fuzz_decode_raises_only_protocol_errors(data: bytes) -> None:
    for fmt in ("json", "msgpack"):
        with contextlib.suppress(ProtocolError):
            decode(data, fmt)


@settings(max_examples=100, deadline=None)
@given(
    msg=st.sampled_from(list(MESSAGES)).flatmap(lambda kind: MESSAGES[kind]),
    cut=st.integers(0, 1000),
)
def test_truncated_messages_raise_protocol_errors(msg: Message, cut: int) -> None:
    data = encode(msg)
    cut = min(cut, len(data) - 1)
    with pytest.raises(ProtocolError):
        decode(data[:cut])
