"""Nydus images in a registry: the media types and annotations Nydus tools read and write.

A Nydus image manifest lists one layer per data blob (media type
`application/vnd.oci.image.layer.nydus.blob.v1`, annotated `containerd.io/snapshot/nydus-blob`)
and last the bootstrap: an ordinary gzip tar layer whose single entry is `image/image.boot`,
annotated `containerd.io/snapshot/nydus-bootstrap` and with the fs version and blob ids.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile

from ._errors import RafsError
from ._oci import Descriptor, Manifest, sha256_digest

MEDIA_TYPE_NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
MEDIA_TYPE_BOOTSTRAP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_BLOB = "containerd.io/snapshot/nydus-blob"
ANNOTATION_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
ANNOTATION_FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
ANNOTATION_BLOB_IDS = "containerd.io/snapshot/nydus-blob-ids"
ANNOTATION_SOURCE_DIGEST = "containerd.io/snapshot/nydus-source-digest"
BOOTSTRAP_ENTRY = "image/image.boot"
MAX_BOOTSTRAP_LAYER = 1 << 30


class NotANydusImage(RafsError):
    """The manifest has no Nydus bootstrap layer."""


def bootstrap_layer(manifest: Manifest) -> Descriptor:
    for layer in reversed(manifest.layers):
        if layer.annotations.get(ANNOTATION_BOOTSTRAP) == "true":
            return layer
    raise NotANydusImage(
        f"manifest {manifest.digest} has no layer annotated {ANNOTATION_BOOTSTRAP}=true: "
        "not a Nydus image (convert it with nydusify)"
    )


def blob_layers(manifest: Manifest) -> list[Descriptor]:
    return [layer for layer in manifest.layers if layer.media_type == MEDIA_TYPE_NYDUS_BLOB]


def extract_bootstrap(layer: bytes) -> bytes:
    """The `image/image.boot` entry of a bootstrap layer (gzip tar, or plain tar)."""
    raw = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for member in tar:
            if member.name.lstrip("./") == BOOTSTRAP_ENTRY and member.isreg():
                f = tar.extractfile(member)
                if f is not None:
                    return f.read()
    raise NotANydusImage(f"bootstrap layer has no {BOOTSTRAP_ENTRY} entry")


BOOTSTRAP_GZIP_LEVEL = 6  # zlib's default; 9 took 1.7 s for an 11 MB bootstrap, 6 0.2 s


def pack_bootstrap(bootstrap: bytes) -> bytes:
    """A reproducible gzip tar holding `image/image.boot`."""
    return pack_bootstrap_layer(bootstrap)[0]


def pack_bootstrap_layer(bootstrap: bytes) -> tuple[bytes, str]:
    """`pack_bootstrap`'s layer and its diff id (the sha256 of the tar inside)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(BOOTSTRAP_ENTRY)
        info.size, info.mode, info.mtime = len(bootstrap), 0o644, 0
        tar.addfile(info, io.BytesIO(bootstrap))
    raw = buf.getvalue()
    packed = gzip.compress(raw, compresslevel=BOOTSTRAP_GZIP_LEVEL, mtime=0)
    return packed, sha256_digest(raw)


def bootstrap_annotations(fs_version: int, blob_ids: list[str]) -> dict[str, str]:
    return {
        ANNOTATION_BOOTSTRAP: "true",
        ANNOTATION_FS_VERSION: str(fs_version),
        ANNOTATION_BLOB_IDS: json.dumps(blob_ids, separators=(",", ":")),
    }
