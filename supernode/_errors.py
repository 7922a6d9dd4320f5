"""The supernode's exception tree, one root so callers can catch everything it raises.

    SupernodeError
    ├── DatabaseError      the database is unreachable, malformed URL, migration failed
    └── ApiError           an HTTP request was refused; carries status, code and detail
        ├── Unauthorized   401: missing or wrong token
        ├── BadRequest     400: a body or parameter that does not decode or validate
        ├── NotFound       404: an unknown job, peer or blob
        ├── Conflict       409: the request contradicts current state
        └── PayloadTooLarge 413: a body over the size limit

Third-party exceptions (SQLAlchemy, msgspec, protocol errors) are translated into these in
exactly one place each: `_repo.py`/`_migrate.py` for the database, `_http.py` for requests.
"""

from __future__ import annotations


class SupernodeError(Exception):
    """Root of everything the supernode raises on purpose."""


class DatabaseError(SupernodeError):
    """The database could not be opened, migrated, read or written."""


class ApiError(SupernodeError):
    """A refused request; rendered as `{"error": code, "detail": detail}` with `status`."""

    status = 400
    code = "bad_request"

    def __init__(self, detail: str, path: str | None = None, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.path = path
        if code is not None:
            self.code = code


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"
