"""How to reach a registry: plain HTTP or not, and the credentials to present.

Credentials come from the command line (`USER:PASSWORD`) or, failing that, from the Docker
client's config file (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, its
`auths` section), which is where `docker login` and `skopeo login --authfile` put them.

The rule it keeps: a malformed credential or config file is refused with a `RegistryError`
naming the file or the option, never read half-way; the password never appears in it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._registry import RegistryClient, RegistryError


@dataclass(frozen=True, slots=True)
class RegistryAccess:
    """Plain HTTP (`insecure`) and credentials for one side of a conversion."""

    insecure: bool = False
    username: str | None = None
    password: str | None = None

    def client(self, registry: str) -> RegistryClient:
        username, password = self.username, self.password
        if username is None:
            found = docker_credentials(registry)
            if found is not None:
                username, password = found
        return RegistryClient(
            registry, insecure=self.insecure, username=username, password=password
        )


def parse_credentials(text: str, option: str) -> tuple[str, str]:
    """`USER:PASSWORD` as given to `option`."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise RegistryError(f"{option} must be USER:PASSWORD")
    return user, password


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def docker_credentials(registry: str, path: Path | None = None) -> tuple[str, str] | None:
    """The `auths` entry for `registry` in a Docker config file, if there is one."""
    path = path or docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read Docker config {path}: {exc}") from None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    for key in (registry, f"http://{registry}", f"https://{registry}"):
        entry = auths.get(key)
        if isinstance(entry, dict):
            return _entry_credentials(entry, path, registry)
    return None


def _entry_credentials(entry: dict[str, Any], path: Path, registry: str) -> tuple[str, str]:
    if isinstance(entry.get("username"), str):
        return entry["username"], str(entry.get("password", ""))
    try:
        decoded = base64.b64decode(str(entry.get("auth", "")), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise RegistryError(f"{path}: the auth entry for {registry} is not base64 of USER:PASS")
    return user, password
