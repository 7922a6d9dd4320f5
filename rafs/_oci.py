"""OCI image references, descriptors and manifests (OCI and Docker v2 media types), pure.

The rule it keeps: a reference that does not parse is refused with the offending part
(`InvalidReference`); an index resolves to a platform or says which platforms it offers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._regerrors import InvalidReference, PlatformNotFound

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
_REPO = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")


@dataclass(frozen=True, slots=True)
class ImageReference:
    """`host[:port]/repo[:tag|@digest]`; names without a host are Docker Hub's."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        rest = re.sub(r"^[a-z]+://", "", text.strip())
        rest, _, digest = rest.partition("@")
        host, repo = _split_host(rest)
        tag = None
        if ":" in repo.rsplit("/", 1)[-1]:
            repo, _, tag = repo.rpartition(":")
        if not _REPO.fullmatch(repo):
            raise InvalidReference(f"bad repository name {repo!r} in reference {text!r}")
        if tag is not None and not _TAG.fullmatch(tag):
            raise InvalidReference(f"bad tag {tag!r} in reference {text!r}")
        if digest and not _DIGEST.fullmatch(digest):
            raise InvalidReference(f"bad digest {digest!r} in reference {text!r}")
        return cls(host, repo, tag, digest or None)

    @property
    def ref(self) -> str:
        """What goes after `/manifests/`: the digest if any, else the tag (default latest)."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        tail = (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return f"{self.registry}/{self.repository}{tail}"


def _split_host(text: str) -> tuple[str, str]:
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    if not sep:
        return "docker.io", f"library/{text}"
    return "docker.io", text


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform must be os/arch[/variant], got {text!r}")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, spec: Mapping[str, Any] | None) -> bool:
        if not spec or spec.get("os") != self.os or spec.get("architecture") != self.architecture:
            return False
        return self.variant is None or spec.get("variant") == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or another manifest."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, Any] | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Any) -> Descriptor:
        if not isinstance(value, dict) or not isinstance(value.get("digest"), str):
            raise ValueError(f"not a descriptor: {value!r:.120}")
        return cls(
            media_type=str(value.get("mediaType", "")),
            digest=value["digest"],
            size=int(value.get("size", 0)),
            annotations=dict(value.get("annotations") or {}),
            platform=value.get("platform"),
            urls=tuple(value.get("urls") or ()),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.urls:
            out["urls"] = list(self.urls)
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index as the registry sent it: `raw` is what `digest` was taken of."""

    media_type: str
    digest: str
    raw: bytes
    body: Mapping[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def config(self) -> Descriptor | None:
        value = self.body.get("config")
        return Descriptor.from_json(value) if value else None

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self.body.get("layers") or ()]

    @property
    def manifests(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self.body.get("manifests") or ()]

    @property
    def annotations(self) -> Mapping[str, str]:
        return dict(self.body.get("annotations") or {})


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(text: str) -> bool:
    return bool(_DIGEST.fullmatch(text))


def media_type_of(content_type: str, body: Mapping[str, Any]) -> str:
    declared = body.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    sent = content_type.split(";", 1)[0].strip()
    if sent in (*MANIFEST_TYPES, *INDEX_TYPES):
        return sent
    # an OCI manifest may omit mediaType: tell it by its fields
    return OCI_INDEX if "manifests" in body else OCI_MANIFEST if "layers" in body else sent


def select_platform(index: Manifest, want: Platform, registry: str, repo: str) -> Descriptor:
    entries = index.manifests
    for entry in entries:
        if want.matches(entry.platform):
            return entry
    offered = sorted({_platform_text(e.platform) for e in entries})
    raise PlatformNotFound(
        f"index has no manifest for {want}; it offers {', '.join(offered)}",
        registry=registry,
        repo=repo,
        digest=index.digest,
    )


def _platform_text(spec: Mapping[str, Any] | None) -> str:
    if not spec:
        return "(no platform)"
    parts = (spec.get("os"), spec.get("architecture"), spec.get("variant"))
    return "/".join(str(p) for p in parts if p)
