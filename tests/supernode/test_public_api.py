"""The public surface of `supernode`: exactly these names, each importable."""

from __future__ import annotations

import supernode

PUBLIC = {
    "ApiError", "BadRequest", "BitmapRecord", "Blacklist", "BlacklistItem", "BlacklistRecord",
    "BlacklistRequest", "BlobRecord", "Conflict", "DatabaseError", "ErrorBody", "Health",
    "HostRecord", "JobRecord", "Metrics", "NotFound", "PayloadTooLarge", "PeerRecord",
    "PolicyConfig", "Repository", "ReputationRecord", "ResolveError", "Scheduler", "Snapshot",
    "Supernode", "SupernodeConfig", "SupernodeError", "Unauthorized", "WriteBatch",
    "WriteBehind", "current_revision", "downgrade", "head_revision", "make_app",
    "normalize_url", "open_engine", "openapi_document", "parse_reference", "resolve_image",
    "upgrade",
}  # fmt: skip


def test_public_names_are_pinned() -> None:
    assert set(supernode.__all__) == PUBLIC
    assert all(getattr(supernode, name) is not None for name in supernode.__all__)


def test_errors_form_one_tree() -> None:
    for name in ("ApiError", "DatabaseError", "ResolveError"):
        assert issubclass(getattr(supernode, name), supernode.SupernodeError)
    for name in ("BadRequest", "Conflict", "NotFound", "PayloadTooLarge", "Unauthorized"):
        error = getattr(supernode, name)("detail")
        assert isinstance(error, supernode.ApiError) and 400 <= error.status < 500
