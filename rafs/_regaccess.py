"""How to reach a registry: plain HTTP or not, and the credentials to present.

Credentials come from the command line (`USER:PASSWORD`, or `HOST=USER:PASSWORD` for a
daemon that talks to several registries) or, failing that, from the Docker client's config
file (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, its `auths` section),
which is where `docker login` and `skopeo login --authfile` put them. Hosts are compared
as `host[:port]`, so `https://reg.example:5000/v1/` in the config is `reg.example:5000`.

The rule it keeps: a malformed credential or config file is refused with a `RegistryError`
naming the file or the option, never read half-way; the password never appears in it, nor
in any `repr`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
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
        username, password = self.username, self.password
        if username is None:
            found = docker_credentials(registry)
            if found is not None:
                username, password = found
        return RegistryClient(
            registry, insecure=self.insecure, username=username, password=password
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
        """A client for `registry` (a name or a base URL) presenting what `lookup` finds."""
        username, password = self.lookup(registry) or (None, None)
        return RegistryClient(registry, insecure=insecure, username=username, password=password)

    def check(self) -> None:
        """Read the Docker config once, so a daemon with a broken one refuses to start."""
        docker_auths(self.docker_config or docker_config_path())


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
    """The `auths` entry for `registry` in a Docker config file, if there is one."""
    path = path or docker_config_path()
    host = registry_host(registry)
    for key, entry in docker_auths(path).items():
        if registry_host(key) == host and isinstance(entry, dict):
            return _entry_credentials(entry, path, registry)
    return None


def docker_auths(path: Path) -> dict[str, Any]:
    """The `auths` section of a Docker config file (empty when the file is missing)."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read Docker config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise RegistryError(f"cannot read Docker config {path}: not a JSON object")
    auths = config.get("auths", {})
    if not isinstance(auths, dict):
        raise RegistryError(f"cannot read Docker config {path}: `auths` is not an object")
    return auths


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
