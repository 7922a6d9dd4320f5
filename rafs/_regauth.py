"""The registry auth challenge flow without I/O: parse `WWW-Authenticate`, build the Basic
header, read a token service's answer and remember tokens per scope until they expire.

The rule it keeps: a token is used only for the exact set of scopes it was issued for and
only while it is fresh (its `expires_in` less a safety margin); the client forgets it on a
401 and asks again. `RegistryClient` does the HTTP; everything here is pure.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')
DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, what the token spec says to assume
MAX_MARGIN = 30.0  # a token is refreshed this long before its expiry, at most

Scheme = Literal["basic", "bearer"]
ScopeKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Challenge:
    """One `WWW-Authenticate` challenge: `scheme` lower-cased, its parameters unquoted."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes the registry named (one scope value may hold several, space-separated)."""
        return tuple(self.params.get("scope", "").split())


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge of the given header values, in order; unknown text is ignored."""
    found: list[Challenge] = []
    for header in headers:
        scheme, _, rest = header.strip().partition(" ")
        if scheme:
            found.append(Challenge(scheme.lower(), _parse_params(rest)))
    return found


def _parse_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in _PARAM.findall(text):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[name.lower()] = value
    return params


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class BearerToken:
    token: str
    expires_at: float  # on the clock passed to `token_from_json`, margin already taken off

    def fresh(self, now: float) -> bool:
        return now < self.expires_at


def token_from_json(body: object, now: float) -> BearerToken:
    """A token service's JSON answer as a token; ValueError naming what is missing."""
    if not isinstance(body, dict):
        raise ValueError(f"token response is not a JSON object: {body!r:.80}")
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError(f"token response has no token: keys {sorted(body)}")
    lifetime = body.get("expires_in", DEFAULT_TOKEN_LIFETIME)
    if not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    margin = min(MAX_MARGIN, lifetime * 0.2)
    return BearerToken(token, now + float(lifetime) - margin)


def scope_key(scopes: Iterable[str]) -> ScopeKey:
    """Scopes in one canonical form: actions of one resource merged and sorted.

    `repository:a:pull` + `repository:a:push,pull` -> (`repository:a:pull,push`,)."""
    actions: dict[str, set[str]] = {}
    for scope in scopes:
        resource, sep, names = scope.rpartition(":")
        if not sep or ":" not in resource:  # not type:name:actions, keep it whole
            actions.setdefault(scope, set())
            continue
        actions.setdefault(resource, set()).update(a for a in names.split(",") if a)
    return tuple(
        f"{resource}:{','.join(sorted(names))}" if names else resource
        for resource, names in sorted(actions.items())
    )


@dataclass(slots=True)
class AuthState:
    """What one client learned: the registry's scheme and the tokens it holds per scope."""

    scheme: Scheme | None = None
    basic: str | None = None  # the Basic header, once the registry asked for Basic
    tokens: dict[ScopeKey, BearerToken] = field(default_factory=dict)

    def header_for(self, scopes: ScopeKey, now: float) -> str | None:
        """The Authorization header to send up front, if one is known to be wanted."""
        if self.scheme == "basic":
            return self.basic
        token = self.tokens.get(scopes)
        if token is not None and token.fresh(now):
            return "Bearer " + token.token
        return None

    def store(self, scopes: ScopeKey, token: BearerToken) -> None:
        self.scheme = "bearer"
        self.tokens[scopes] = token

    def forget(self, scopes: ScopeKey) -> None:
        self.tokens.pop(scopes, None)
