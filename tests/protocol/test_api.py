"""The public surface of `protocol`: pinned names, and no I/O imports anywhere inside."""

from __future__ import annotations

import ast
from pathlib import Path

import protocol

FORBIDDEN = {"asyncio", "aiohttp", "libp2p", "trio", "socket", "uvloop", "anyio", "selectors"}
PACKAGE = Path(protocol.__file__).parent


def test_public_api_is_pinned() -> None:
    assert len(set(protocol.__all__)) == len(protocol.__all__)
    assert set(protocol.__all__) == {
        "FRAME_HEADER",
        "FRAME_MAGIC",
        "MAX_CHUNKS",
        "MAX_FRAME_PAYLOAD",
        "MAX_MESSAGE_BYTES",
        "MAX_PARENTS",
        "MAX_RANGES",
        "PROTOCOL_VERSION",
        "Announce",
        "AnyMessage",
        "BadFrameMagic",
        "BlobId",
        "ChunkRange",
        "ChunkSet",
        "Codec",
        "ErrorAnswer",
        "FailureKind",
        "Format",
        "Frame",
        "FrameDecoder",
        "FrameError",
        "FrameFlags",
        "FrameTooLarge",
        "FromOrigin",
        "FromParents",
        "Heartbeat",
        "HeartbeatAnswer",
        "InvalidMessage",
        "JobState",
        "JobStatus",
        "Leave",
        "Message",
        "MessageTooLarge",
        "Parent",
        "ParentResult",
        "PeerId",
        "PieceResults",
        "Plan",
        "PreheatBlob",
        "PreheatRequest",
        "ProtocolError",
        "RangePlan",
        "Register",
        "RegisterAnswer",
        "RetryLater",
        "ScheduleAnswer",
        "ScheduleRequest",
        "SeedTask",
        "SeedTaskBatch",
        "SeedTaskFailed",
        "TruncatedFrame",
        "UnsupportedVersion",
        "Withdraw",
        "decode",
        "encode",
        "encode_frame",
    }
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None


def test_every_error_is_a_protocol_error() -> None:
    for name in protocol.__all__:
        value = getattr(protocol, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, protocol.ProtocolError), name


def imported_roots(source: str) -> set[str]:
    """Top-level module names imported by `source` (absolute imports only)."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            roots |= {
                arg.value.split(".")[0]
                for arg in node.args
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            }
    return roots


def test_the_scan_sees_every_import_form() -> None:
    source = (
        "import asyncio.events\nfrom socket import socket\nimport os, trio\n"
        "__import__('aiohttp')\nfrom . import x"
    )
    assert imported_roots(source) == {"asyncio", "socket", "os", "trio", "aiohttp"}


def test_protocol_imports_no_io_library() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 5
    for path in files:
        bad = imported_roots(path.read_text()) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_protocol_imports_no_sibling_package() -> None:
    siblings = {"rafs", "fuse", "peer", "supernode", "migrations"}
    for path in PACKAGE.rglob("*.py"):
        assert not imported_roots(path.read_text()) & siblings, path.name
