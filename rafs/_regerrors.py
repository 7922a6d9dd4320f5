"""The registry client's exception tree (all are `rafs.RafsError`):

    RegistryError                 status, registry, repo, digest, code
    ├── InvalidReference          a reference string that does not parse
    ├── NotFound                  404: unknown repository, manifest or blob
    │   └── PlatformNotFound      an index without the platform asked for
    ├── Unauthorized              401/403 after credentials (or none) were tried
    ├── RegistryUnavailable       5xx, 429, resets, timeouts (raised after the retries)
    └── BadResponse               a reply breaking the protocol: digest, length, JSON

Each carries what it was about, and its message says it, so one line is enough.
"""

from __future__ import annotations

from ._errors import RafsError


class RegistryError(RafsError):
    """A registry request failed; carries what it was about."""

    def __init__(
        self,
        message: str,
        *,
        registry: str = "",
        repo: str = "",
        digest: str = "",
        status: int | None = None,
        code: str = "",
    ) -> None:
        context = [
            f"registry {registry}" if registry else "",
            f"repository {repo}" if repo else "",
            digest,
            f"HTTP {status}" if status else "",
            code,
        ]
        where = ", ".join(part for part in context if part)
        super().__init__(f"{message} ({where})" if where else message)
        self.registry = registry
        self.repo = repo
        self.digest = digest
        self.status = status
        self.code = code


class InvalidReference(RegistryError):
    """An image reference that does not parse."""


class NotFound(RegistryError):
    """The registry has no such repository, manifest or blob."""


class PlatformNotFound(NotFound):
    """An image index lists no manifest for the platform asked for."""


class Unauthorized(RegistryError):
    """The registry (or its token service) refused the credentials, or wanted some."""


class RegistryUnavailable(RegistryError):
    """A transient failure: 5xx, 429, a reset connection or a timeout."""

    retry_after: float = 0.0


class BadResponse(RegistryError):
    """The registry answered something the protocol does not allow."""
