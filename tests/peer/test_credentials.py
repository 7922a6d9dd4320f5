"""Registry credentials for `dfdaemon`: `--mount` of an image in an htpasswd registry with
the Docker config's entry (and one clear error without it), a seed fetching its origin
with `--registry-creds`, the origin pool against a token-auth registry in process, and the
mirror passing the client's own credentials upstream.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from peer import OriginPool, RegistryBlobUrl
from peer.cli import _parser as dfdaemon_parser
from peer.cli import options_from
from rafs._regaccess import RegistryCredentials
from rafs._regauth import basic_header
from rafs._registry import Unauthorized
from tests.fixtures.registry import (  # noqa: F401
    RegistryServer,
    registry_basic,
    registry_bearer,
    token_signing_key,
)

from .cluster import BIN, Cluster, Image, build_and_push, free_port, http_get, sample_files

pytestmark = pytest.mark.timeout(90)


def docker_config(directory: Path, host: str, user: str, password: str) -> Path:
    """A Docker config dir with one `auths` entry, as `docker login HOST` writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return directory


def creds_of(server: RegistryServer) -> tuple[str, str]:
    assert server.username is not None and server.password is not None
    return server.username, server.password


@pytest.fixture
def private_image(registry_basic: RegistryServer, tmp_path: Path) -> Image:  # noqa: F811
    files = {name: data[:300_000] for name, data in sample_files().items()}
    return build_and_push(registry_basic, tmp_path / "image", files, "private/mesh")


def errors_of(log: str) -> list[str]:
    assert "Traceback" not in log
    return [line for line in log.splitlines() if line.startswith("dfdaemon: error:")]


# --- options ---------------------------------------------------------------------------


def test_registry_creds_options_are_kept_by_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    creds = ["--registry-creds", "a.example:5000=u:p:w", "--registry-creds", "B.example=v:q"]
    args = dfdaemon_parser().parse_args(["--supernode", "http://x", "--data-dir", "d", *creds])
    credentials = options_from(args).credentials
    assert credentials.lookup("http://a.example:5000") == ("u", "p:w")
    assert credentials.lookup("b.example") == ("v", "q")
    assert credentials.lookup("c.example") is None
    assert "p:w" not in repr(options_from(args))


def test_a_broken_docker_config_stops_dfdaemon_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{broken")
    argv = [str(BIN / "dfdaemon"), "--supernode", "http://127.0.0.1:9", "--data-dir",
            str(tmp_path / "data")]  # fmt: skip
    env = {"DOCKER_CONFIG": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 1, done.stderr
    [error] = errors_of(done.stderr)
    assert f"cannot read Docker config {tmp_path / 'config.json'}" in error
    bad = subprocess.run([*argv, "--registry-creds", "reg.example"], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 1 and "--registry-creds must be HOST=USER:PASSWORD" in bad.stderr


# --- dfdaemon --mount ------------------------------------------------------------------


def test_mount_of_a_private_image_uses_the_docker_config(
    cluster: Cluster,
    registry_basic: RegistryServer,  # noqa: F811
    private_image: Image,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user, password = creds_of(registry_basic)
    config = docker_config(tmp_path / "docker", registry_basic.host, user, password)
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    cluster.start_supernode()
    a = cluster.start_peer("a", mount=private_image.reference)
    assert a.mountpoint is not None
    for name, data in private_image.files.items():
        assert (a.mountpoint / name).read_bytes() == data, name
    assert a.metric("dfdaemon_origin_bytes_total") > 0
    assert password not in a.log_text()


def test_mount_of_a_private_image_without_credentials_is_one_error_line(
    cluster: Cluster, private_image: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    cluster.start_supernode()
    a = cluster.start_peer("a", mount=private_image.reference, wait=False)
    assert a.process.wait(30) == 1
    [error] = errors_of(a.log_text())
    assert "requires credentials and none were given" in error and "private/mesh" in error


# --- a seed's origin -------------------------------------------------------------------


@pytest.mark.parametrize("seed_has_creds", [True, False], ids=["with-creds", "refused"])
def test_a_seed_fetches_from_a_private_registry_or_reports_that_it_cannot(
    cluster: Cluster,
    registry_basic: RegistryServer,  # noqa: F811
    private_image: Image,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    seed_has_creds: bool,
) -> None:
    user, password = creds_of(registry_basic)
    sn = cluster.start_supernode()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    creds = ["--registry-creds", f"{registry_basic.host}={user}:{password}"]
    seed = cluster.start_peer("seed", "--seed", *(creds if seed_has_creds else []))
    config = docker_config(tmp_path / "docker", registry_basic.host, user, password)
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    a = cluster.start_peer("a", mount=private_image.reference)
    assert a.mountpoint is not None
    for name, data in private_image.files.items():  # refused, unreported: 20 s a read
        assert (a.mountpoint / name).read_bytes() == data, name
    failures = [line for line in http_get(sn.url + "/metrics").decode().splitlines()
                if line.startswith("supernode_seed_failures_total ")]  # fmt: skip
    if seed_has_creds:
        assert seed.metric("dfdaemon_seed_tasks_total") >= 1, seed.log_text()
        assert seed.metric("dfdaemon_origin_bytes_total") > 0
        assert a.metric("dfdaemon_origin_bytes_total") == 0  # every chunk came by the seed
        assert "failed" not in seed.log_text() and failures == ["supernode_seed_failures_total 0.0"]
    else:  # the seed reported it, so the peer went to the origin at once
        assert "failed" in seed.log_text() and seed.metric("dfdaemon_origin_bytes_total") == 0
        assert a.metric("dfdaemon_origin_bytes_total") > 0
        assert len(failures) == 1 and failures != ["supernode_seed_failures_total 0.0"]


# --- the origin pool against token auth, in process -------------------------------------


async def test_origin_pool_fetches_a_private_blob_by_bearer_token(
    registry_bearer: RegistryServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    files = {"f": bytes(range(256)) * 1000}
    image = await asyncio.to_thread(
        build_and_push, registry_bearer, tmp_path / "image", files, "tok/app"
    )
    async with registry_bearer.client() as client:
        boot_digest = (await client.get_manifest("tok/app", "v1")).layers[-1].digest
    url = RegistryBlobUrl(registry_bearer.url, "tok/app", image.blob_ids[0], boot_digest)
    user, password = creds_of(registry_bearer)
    config = docker_config(tmp_path / "docker", registry_bearer.host, user, password)
    pool = OriginPool(tmp_path / "boots", RegistryCredentials(docker_config=config / "config.json"))
    try:
        entry = await pool.chunk_table(url.blob_id, str(url))
        fetched = await pool.source(url).get(entry.ref, list(entry.chunks.values()))
    finally:
        await pool.close()
    assert b"".join(chunk.data for chunk in fetched) == files["f"]
    assert registry_bearer.tokens is not None and registry_bearer.tokens.issued


async def test_origin_pool_without_credentials_is_refused(
    registry_basic: RegistryServer,  # noqa: F811
    private_image: Image,
    tmp_path: Path,
) -> None:
    url = RegistryBlobUrl(
        registry_basic.url, "private/mesh", private_image.blob_ids[0], "sha256:" + "0" * 64
    )
    pool = OriginPool(tmp_path / "boots", RegistryCredentials(docker_config=tmp_path / "none.json"))
    try:
        with pytest.raises(Unauthorized, match="requires credentials and none were given"):
            await pool.chunk_table(url.blob_id, str(url))
    finally:
        await pool.close()


# --- the registry mirror ---------------------------------------------------------------


def mirror_get(url: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), dict(exc.headers)


def test_the_mirror_passes_the_clients_credentials_upstream(
    cluster: Cluster,
    registry_basic: RegistryServer,  # noqa: F811
    private_image: Image,
) -> None:
    port = free_port()
    cluster.start_supernode()
    cluster.start_peer(
        "m", "--mirror", f"127.0.0.1:{port}", "--mirror-upstream", registry_basic.url
    )
    base = f"http://127.0.0.1:{port}/v2/private/mesh"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    status, _, headers = mirror_get(f"{base}/manifests/v1", accept)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    login = {"Authorization": basic_header(*creds_of(registry_basic))}
    status, body, _ = mirror_get(f"{base}/manifests/v1", {**accept, **login})
    assert status == 200, body
    layer = json.loads(body)["layers"][0]
    status, body, _ = mirror_get(f"{base}/blobs/{layer['digest']}", {})
    assert status == 502 and b"HTTP 401" in body  # refused upstream, not served around it
    status, blob, _ = mirror_get(f"{base}/blobs/{layer['digest']}", login)
    assert status == 200 and "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
