"""How to reach a registry: plain HTTP or not, and the credentials to present.

Credentials come from the command line (`USER:PASSWORD`, or `HOST=USER:PASSWORD` for a
daemon that talks to several registries) or, failing that, from the Docker client's config
file (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), which is where `docker
login` and `skopeo login --authfile` put them. Hosts are compared as `host[:port]`, so
`https://reg.example:5000/v1/` in the config is `reg.example:5000`.

In the config, as the Docker client reads it: a credential helper named for the host in
`credHelpers`, else the default helper `credsStore`, is asked first (the program
`docker-credential-NAME`, run with `get` and the registry on stdin, answers JSON with
`Username` and `Secret`); when it has nothing for the host, the `auths` entry is used
(`auth`, base64 of `USER:PASSWORD`, or `username`/`password`).

The rule it keeps: a malformed credential, config file or helper answer is refused with
a `RegistryError` naming the file, the option or the helper, never read half-way; the
password never appears in it, nor in any `repr`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._registry import RegistryClient, RegistryError

Credentials = tuple[str, str]  # (username, password)

# Docker Hub's names: `docker login` stores `https://index.docker.io/v1/`
_DOCKER_HUB = {"index.docker.io": "docker.io", "registry-1.docker.io": "docker.io"}


@dataclass(frozen=True, slots=True)
class RegistryAccess:
    """Plain HTTP (`insecure`) and credentials for one side of a conversion."""

    insecure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def client(self, registry: str) -> RegistryClient:
        """A client presenting the given credentials, else the Docker config's (asked when
        the registry first wants credentials, and again if it refuses them)."""
        if self.username is not None:
            return RegistryClient(
                registry, insecure=self.insecure, username=self.username, password=self.password
            )
        return RegistryClient(
            registry, insecure=self.insecure, credentials=lambda: docker_credentials(registry)
        )


@dataclass(frozen=True)
class RegistryCredentials:
    """Credentials per registry host, for a daemon that may talk to several registries.

    `lookup` tries, in order: `by_host` (`HOST=USER:PASSWORD` options), `every_host` (one
    `USER:PASSWORD` for whatever registry is asked), the Docker config's `auths` entry
    (`docker_config`, else the usual place, read at each lookup so a fresh `docker login`
    counts for the next client made).
    """

    by_host: Mapping[str, Credentials] = field(default_factory=dict, repr=False)
    every_host: Credentials | None = field(default=None, repr=False)
    docker_config: Path | None = None

    def lookup(self, registry: str) -> Credentials | None:
        host = registry_host(registry)
        for name, found in self.by_host.items():
            if registry_host(name) == host:
                return found
        return self.every_host or docker_credentials(host, self.docker_config)

    def client(self, registry: str, *, insecure: bool = False) -> RegistryClient:
        """A client for `registry` (a name or a base URL) presenting what `lookup` finds,
        when the registry first wants credentials (a Docker credential helper may be run
        then, on a thread) and again if it refuses them (a helper's token may expire)."""
        return RegistryClient(
            registry, insecure=insecure, credentials=lambda: self.lookup(registry)
        )

    def check(self) -> None:
        """Read the Docker config once, so a daemon with a broken one refuses to start."""
        docker_config(self.docker_config or docker_config_path())


def parse_credentials(text: str, option: str) -> Credentials:
    """`USER:PASSWORD` as given to `option`."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise RegistryError(f"{option} must be USER:PASSWORD")
    return user, password


def parse_host_credentials(text: str, option: str) -> tuple[str, Credentials]:
    """`HOST=USER:PASSWORD` as given to `option`: the host (normalized) and its credentials."""
    host, sep, creds = text.partition("=")
    if not sep or not registry_host(host):
        raise RegistryError(f"{option} must be HOST=USER:PASSWORD")
    return registry_host(host), parse_credentials(creds, f"{option} {host}=...")


def registry_host(registry: str) -> str:
    """`host[:port]` of a registry name, a base URL or a Docker config key, lower-cased."""
    text = registry.strip() if "://" in registry else f"//{registry.strip()}"
    try:
        host = urlsplit(text).netloc.lower()
    except ValueError:  # e.g. an unbalanced `[` in an IPv6 host
        return ""
    return _DOCKER_HUB.get(host, host)


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def docker_credentials(registry: str, path: Path | None = None) -> Credentials | None:
    """What a Docker config file gives for `registry`: its credential helper's answer,
    else its `auths` entry; None if neither has anything for the host."""
    path = path or docker_config_path()
    config = docker_config(path)
    host = registry_host(registry)
    helper = _helper_for(config, host)
    if helper is not None:
        found = helper_credentials(helper, _server_address(config, host))
        if found is not None:
            return found
    for key, entry in config.auths.items():
        if registry_host(key) == host and isinstance(entry, dict):
            return _entry_credentials(entry, path, registry)
    return None


@dataclass(frozen=True)
class DockerConfig:
    """The parts of a Docker config file that say where credentials are."""

    auths: dict[str, Any] = field(default_factory=dict)
    creds_store: str | None = None  # `credsStore`: the helper for every registry
    cred_helpers: dict[str, str] = field(default_factory=dict)  # `credHelpers`: per registry


def docker_config(path: Path) -> DockerConfig:
    """A Docker config file's credential sections (all empty when the file is missing)."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return DockerConfig()
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read Docker config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise RegistryError(f"cannot read Docker config {path}: not a JSON object")
    auths = config.get("auths", {})
    if not isinstance(auths, dict):
        raise RegistryError(f"cannot read Docker config {path}: `auths` is not an object")
    store = config.get("credsStore") or None
    if store is not None and not _helper_name_ok(store):
        raise RegistryError(f"cannot read Docker config {path}: `credsStore` is not a name")
    helpers = config.get("credHelpers", {})
    if not isinstance(helpers, dict) or not all(
        isinstance(k, str) and _helper_name_ok(v) for k, v in helpers.items()
    ):
        raise RegistryError(
            f"cannot read Docker config {path}: `credHelpers` is not an object of names"
        )
    return DockerConfig(auths, store, helpers)


def _helper_name_ok(name: object) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and name.strip() == name


def _helper_for(config: DockerConfig, host: str) -> str | None:
    for key, helper in config.cred_helpers.items():
        if registry_host(key) == host:
            return helper
    return config.creds_store


def _server_address(config: DockerConfig, host: str) -> str:
    """The name the helper keeps the registry's credentials under: the key `docker login`
    used (it is in `auths`, or in `credHelpers`), else Docker Hub's URL or the host."""
    for key in [*config.auths, *config.cred_helpers]:
        if registry_host(key) == host:
            return key
    return "https://index.docker.io/v1/" if host == "docker.io" else host


HELPER_TIMEOUT = 30.0  # seconds a credential helper may take (it may ask a cloud API)
_NOT_FOUND = "credentials not found in native keychain"  # the helpers' own "no entry" text


def helper_credentials(helper: str, server: str) -> Credentials | None:
    """Ask `docker-credential-HELPER get` for `server`; None if it has no entry for it."""
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run(
            [program, "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise RegistryError(
            f"credential helper {program} (set in the Docker config) is not on PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise RegistryError(
            f"credential helper {program} gave no answer for {server} in {HELPER_TIMEOUT:g} s"
        ) from None
    except OSError as exc:
        raise RegistryError(f"cannot run credential helper {program}: {exc}") from None
    if done.returncode != 0:
        said = (done.stdout.strip() or done.stderr.strip()).splitlines()
        if said and _NOT_FOUND in said[0]:
            return None
        reason = said[0][:200] if said else f"exit status {done.returncode}"
        raise RegistryError(f"credential helper {program} failed for {server}: {reason}")
    try:
        answer = json.loads(done.stdout)
        user, secret = answer["Username"], answer["Secret"]
        if not isinstance(user, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise RegistryError(
            f"credential helper {program} gave no Username and Secret for {server}"
        ) from None
    if user == "<token>":
        raise RegistryError(
            f"credential helper {program} gave an identity token for {server}:"
            " OAuth2 refresh tokens are not supported, use USER:PASSWORD"
        )
    if not user and not secret:
        return None
    return user, secret


def _entry_credentials(entry: dict[str, Any], path: Path, registry: str) -> Credentials | None:
    if isinstance(entry.get("username"), str):
        return entry["username"], str(entry.get("password", ""))
    if not entry.get("auth"):
        return None  # `{}`: the secret is in a credential helper (credsStore), not here
    try:
        decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise RegistryError(f"{path}: the auth entry for {registry} is not base64 of USER:PASS")
    return user, password
