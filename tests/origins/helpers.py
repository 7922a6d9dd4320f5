"""Small builders shared by the origin tests."""

from __future__ import annotations

import json

from rafs._registry import OCI_MANIFEST, RegistryClient

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


async def push_image(client: RegistryClient, repo: str, tag: str, layers: list[bytes]) -> str:
    """A minimal OCI image (config + layers) pushed by the client; its manifest digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    config_digest = await client.push_blob(repo, config)
    descriptors = []
    for layer in layers:
        digest = await client.push_blob(repo, layer)
        descriptors.append({"mediaType": LAYER_TYPE, "digest": digest, "size": len(layer)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
        "layers": descriptors,
    }
    return await client.put_manifest(repo, tag, json.dumps(manifest).encode())
