"""Running the real `nydusify` console script, and reading what it pushed (plain urllib)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.fixtures.images import push
from tests.fixtures.registry import RegistryServer
from tests.nydusify.images import LayeredImage

NYDUSIFY = str(Path(sys.executable).with_name("nydusify"))
NYDUSD = str(Path(sys.executable).with_name("nydusd"))
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"


def nydusify(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NYDUSIFY, *args], capture_output=True, text=True, timeout=120,
                          env=env, input=stdin)  # fmt: skip


def creds_args(server: RegistryServer) -> list[str]:
    if server.username is None:
        return []
    pair = f"{server.username}:{server.password}"
    return ["--source-creds", pair, "--target-creds", pair]


def convert(
    server: RegistryServer,
    source: str,
    target: str,
    work: Path,
    *extra: str,
    stdin: str | None = None,
    warnings: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Convert `source` to `target` (repo:tag on `server`); the JSON summary. The run must
    print exactly `warnings` (each after `nydusify: warning: `) on stderr, nothing else."""
    out = work.parent / f"summary-{len(list(work.parent.glob('summary-*')))}.json"
    run = nydusify("convert", "--source", f"{server.host}/{source}",
                   "--target", f"{server.host}/{target}", "--work-dir", str(work),
                   "--output-json", str(out), *creds_args(server), *extra,
                   stdin=stdin)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [f"nydusify: warning: {w}" for w in warnings]
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def check(
    server: RegistryServer, source: str, target: str, work: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return nydusify("check", "--source", f"{server.host}/{source}",
                    "--target", f"{server.host}/{target}", "--work-dir", str(work),
                    *creds_args(server), *extra)  # fmt: skip


def one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exactly one line on stderr, and no traceback."""
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("nydusify: ")
    return lines[0]


def push_image(server: RegistryServer, image: LayeredImage, dest: str, **kwargs: Any) -> None:
    creds = (server.username, server.password) if server.username else None
    push(image.layout, image.tag, f"{server.host}/{dest}", creds=creds, **kwargs)


# --- reading the registry -----------------------------------------------------------------


def _get(server: RegistryServer, path: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(f"{server.url}/v2/{path}")
    if accept:
        request.add_header("Accept", accept)
    if server.username:
        token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        data: bytes = resp.read()
        return data


def manifest(server: RegistryServer, repo: str, tag: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(_get(server, f"{repo}/manifests/{tag}", OCI_MANIFEST))
    return body


def blob(server: RegistryServer, repo: str, digest: str) -> bytes:
    return _get(server, f"{repo}/blobs/{digest}")


def tag_exists(server: RegistryServer, repo: str, tag: str) -> bool:
    try:
        _get(server, f"{repo}/manifests/{tag}", OCI_MANIFEST)
    except urllib.error.HTTPError as exc:
        assert exc.code == 404, exc
        return False
    return True


def bootstrap_of(layer: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        assert tar.getnames() == ["image/image.boot"]
        f = tar.extractfile("image/image.boot")
        assert f is not None
        return f.read()


def blob_uploads(server: RegistryServer, repo: str) -> int:
    """Blob uploads the registry's access log shows for `repo` (skopeo's included)."""
    return server.log.count(f'"POST /v2/{repo}/blobs/uploads/ HTTP')


def fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: FUSE mounts cannot run here"
    if os.geteuid() != 0:
        return "FUSE mount tests need root here (allow_other, device nodes)"
    return None
