"""Auth against real registries: htpasswd Basic and Bearer tokens from a token service
(Distribution's `auth.token`, JWTs signed with an `openssl`-made key); plus the pure
challenge parsing and token bookkeeping."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from rafs import _registry as registry_module
from rafs._regauth import (
    AuthState,
    BearerToken,
    parse_challenges,
    scope_key,
    token_from_json,
)
from rafs._registry import Unauthorized
from tests.fixtures.registry import RegistryServer, TokenService

from .helpers import push_image

# --- pure parts ------------------------------------------------------------------------


def test_bearer_challenge_with_quoted_commas() -> None:
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/app:pull,push",error="invalid_token"'
    )
    [challenge] = parse_challenges([header])
    assert challenge.scheme == "bearer"
    assert challenge.params["realm"] == "https://auth.example.com/token"
    assert challenge.params["service"] == "registry.example.com"
    assert challenge.scopes == ("repository:team/app:pull,push",)


def test_basic_and_bearer_challenges_both_seen() -> None:
    found = parse_challenges(['Basic realm="x y"', 'Bearer realm="r",service=s'])
    assert [c.scheme for c in found] == ["basic", "bearer"]
    assert found[0].params == {"realm": "x y"} and found[1].params["service"] == "s"


@pytest.mark.parametrize(
    ("body", "lifetime"),
    [
        ({"token": "t", "expires_in": 300}, 270.0),  # margin capped at 30 s
        ({"access_token": "t", "expires_in": 10}, 8.0),  # 20 % margin
        ({"token": "t"}, 48.0),  # default 60 s
        ({"token": "t", "expires_in": -5}, 48.0),
    ],
)
def test_token_lifetime(body: dict[str, object], lifetime: float) -> None:
    token = token_from_json(body, now=1000.0)
    assert token.token == "t" and token.expires_at == pytest.approx(1000.0 + lifetime)


@pytest.mark.parametrize("body", [[], {"expires_in": 5}, {"token": ""}, "x"])
def test_token_response_without_token_is_refused(body: object) -> None:
    with pytest.raises(ValueError):
        token_from_json(body, now=0.0)


@pytest.mark.parametrize(
    ("scopes", "key"),
    [
        (["repository:a:pull", "repository:a:push,pull"], ("repository:a:pull,push",)),
        (["repository:b:pull", "repository:a:pull"], ("repository:a:pull", "repository:b:pull")),
        (["registry:catalog:*"], ("registry:catalog:*",)),
        (["repository:127.0.0.1:5000/x:pull"], ("repository:127.0.0.1:5000/x:pull",)),
    ],
)
def test_scope_key_merges_actions(scopes: list[str], key: tuple[str, ...]) -> None:
    assert scope_key(scopes) == key


def test_tokens_are_kept_per_scope_until_expiry() -> None:
    state = AuthState()
    pull, push = scope_key(["repository:a:pull"]), scope_key(["repository:a:pull,push"])
    state.store(pull, BearerToken("p", expires_at=10.0))
    assert state.header_for(pull, now=9.0) == "Bearer p"
    assert state.header_for(pull, now=10.0) is None
    assert state.header_for(push, now=0.0) is None
    state.forget(pull)
    assert state.header_for(pull, now=0.0) is None


# --- Basic -----------------------------------------------------------------------------


async def test_basic_auth_with_good_credentials(registry_basic: RegistryServer) -> None:
    async with registry_basic.client() as client:
        digest = await push_image(client, "secure/app", "v1", [b"layer-bytes"])
        manifest = await client.get_manifest("secure/app", "v1")
        before = client.requests
        await client.get_blob("secure/app", manifest.layers[0].digest)
        preemptive = client.requests - before
    assert manifest.digest == digest
    assert preemptive == 1  # Basic is sent up front once the registry asked for it


async def test_basic_auth_with_bad_credentials(registry_basic: RegistryServer) -> None:
    async with registry_basic.client(password="wrong") as client:
        with pytest.raises(Unauthorized) as info:
            await client.get_manifest("secure/app", "v1")
    message = str(info.value)
    assert "refused the credentials of user 'tester'" in message
    assert info.value.status == 401 and info.value.repo == "secure/app"
    assert registry_basic.host in message


async def test_basic_auth_without_credentials(registry_basic: RegistryServer) -> None:
    async with registry_basic.client(credentials=False) as client:
        with pytest.raises(Unauthorized, match="requires credentials and none were given"):
            await client.head_blob("secure/app", "sha256:" + "0" * 64)


# --- Bearer ----------------------------------------------------------------------------


def _tokens(server: RegistryServer) -> TokenService:
    assert server.tokens is not None
    return server.tokens


async def test_bearer_flow_fetches_one_token_per_scope(registry_bearer: RegistryServer) -> None:
    tokens = _tokens(registry_bearer)
    data = os.urandom(50_000)
    async with registry_bearer.client() as client:
        digest = await client.push_blob("bearer/app", data)
        for offset in range(0, 50_000, 10_000):
            got = await client.get_blob("bearer/app", digest, range=(offset, 10_000))
            assert got == data[offset : offset + 10_000]
        assert client.token_fetches == 2
    assert tokens.issued == [("repository:bearer/app:pull",),
                             ("repository:bearer/app:pull,push",)]  # fmt: skip


async def test_concurrent_requests_share_one_token(registry_bearer: RegistryServer) -> None:
    data = os.urandom(80_000)
    async with registry_bearer.client() as client:
        digest = await client.push_blob("bearer/many", data)
    async with registry_bearer.client() as client:
        reads = [client.get_blob("bearer/many", digest, range=(i * 8000, 8000)) for i in range(10)]
        assert b"".join(await asyncio.gather(*reads)) == data
        assert client.token_fetches == 1


async def test_bearer_token_refused_by_registry_is_fetched_again(
    registry_bearer: RegistryServer,
) -> None:
    """The first token grants nothing: the registry says 401 and the client asks again."""
    tokens = _tokens(registry_bearer)
    async with registry_bearer.client() as client:
        digest = await push_image(client, "bearer/retry", "v1", [b"x"])
    tokens.deny_next = 1
    async with registry_bearer.client() as client:
        assert (await client.get_manifest("bearer/retry", "v1")).digest == digest
    assert tokens.issued[-2:] == [("repository:bearer/retry:pull",)] * 2


async def test_expired_token_is_refreshed(registry_bearer: RegistryServer) -> None:
    tokens = _tokens(registry_bearer)
    tokens.expires_in = 1  # the client keeps it for 0.8 s
    async with registry_bearer.client() as client:
        digest = await push_image(client, "bearer/exp", "v1", [b"x"])
        await client.get_manifest("bearer/exp", digest)
        fetched = client.token_fetches
        await client.get_manifest("bearer/exp", digest)
        assert client.token_fetches == fetched  # still fresh
        await asyncio.sleep(0.9)
        await client.get_manifest("bearer/exp", digest)
        assert client.token_fetches == fetched + 1


async def test_bearer_with_bad_credentials_names_the_token_service(
    registry_bearer: RegistryServer,
) -> None:
    async with registry_bearer.client(password="nope") as client:
        with pytest.raises(Unauthorized) as info:
            await client.get_manifest("bearer/app", "v1")
    assert "token service refused the credentials of user 'tester'" in str(info.value)
    assert _tokens(registry_bearer).refused == 1


async def test_bearer_anonymous_token_lacks_access(registry_bearer: RegistryServer) -> None:
    async with registry_bearer.client(credentials=False) as client:
        with pytest.raises(Unauthorized, match="token service requires credentials"):
            await client.get_manifest("bearer/app", "v1")


# --- a credentials provider (a Docker credential helper behind it) ----------------------


class Provider:
    """Credentials handed out in turn (the last one repeated), counting the askings."""

    def __init__(self, *answers: tuple[str, str] | None, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.asked = 0
        self.delay = delay  # a helper that asks a cloud API takes its time

    def __call__(self) -> tuple[str, str] | None:
        self.asked += 1
        time.sleep(self.delay)
        return self.answers[min(self.asked, len(self.answers)) - 1]


def _good(server: RegistryServer) -> tuple[str, str]:
    assert server.username is not None and server.password is not None
    return server.username, server.password


async def test_a_provider_is_asked_once_when_many_requests_meet_the_first_challenge(
    registry_basic: RegistryServer,
) -> None:
    async with registry_basic.client() as client:
        await push_image(client, "secure/lazy", "v1", [b"layer-bytes"])
    provider = Provider(_good(registry_basic), delay=0.3)
    async with registry_basic.client(credentials=False, credentials_provider=provider) as client:
        manifests = [client.get_manifest("secure/lazy", "v1") for _ in range(8)]
        assert len({m.digest for m in await asyncio.gather(*manifests)}) == 1
    assert provider.asked == 1


async def test_an_open_registry_never_asks_the_provider(registry: RegistryServer) -> None:
    provider = Provider(("someone", "secret"))
    async with registry.client(credentials_provider=provider) as client:
        await push_image(client, "open/app", "v1", [b"x"])
    assert provider.asked == 0


@pytest.mark.parametrize("kind", ["basic", "bearer"])
async def test_refused_credentials_are_asked_for_again_once_the_interval_passed(
    kind: str,
    registry_basic: RegistryServer,
    registry_bearer: RegistryServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A helper's token expired: the registry refuses it, the provider gives a new one."""
    server = registry_basic if kind == "basic" else registry_bearer
    async with server.client() as client:
        digest = await push_image(client, "renew/app", "v1", [b"x"])
    user, _ = _good(server)
    provider = Provider((user, "expired"), _good(server))
    async with server.client(credentials=False, credentials_provider=provider) as client:
        with pytest.raises(Unauthorized, match=f"refused the credentials of user '{user}'"):
            await client.get_manifest("renew/app", "v1")  # asked just now: not again yet
        assert provider.asked == 1
        monkeypatch.setattr(registry_module, "RENEW_INTERVAL", 0.0)
        assert (await client.get_manifest("renew/app", "v1")).digest == digest
        assert provider.asked == 2
        assert (await client.get_manifest("renew/app", "v1")).digest == digest
    assert provider.asked == 2  # the renewed credentials are kept


async def test_a_provider_with_nothing_is_no_credentials(registry_basic: RegistryServer) -> None:
    provider = Provider(None)
    async with registry_basic.client(credentials=False, credentials_provider=provider) as client:
        with pytest.raises(Unauthorized, match="requires credentials and none were given"):
            await client.head_blob("secure/app", "sha256:" + "0" * 64)
    assert provider.asked == 1
