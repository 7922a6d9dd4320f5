"""`nydusify convert` and `check` against a real Distribution registry, with images made by
umoci from real trees and pushed by skopeo."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

from rafs._load import load_bootstrap_bytes
from tests.fixtures.images import add_index, push
from tests.fixtures.registry import RegistryServer
from tests.nydusify.helpers import (
    NYDUS_BLOB,
    OCI_MANIFEST,
    blob,
    blob_uploads,
    bootstrap_of,
    check,
    convert,
    manifest,
    nydusify,
    one_error_line,
    push_image,
    tag_exists,
)
from tests.nydusify.images import LayeredImage


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_convert_pushes_a_nydus_image_that_checks_equal(
    registry: RegistryServer, layered: LayeredImage, work: Path
) -> None:
    push_image(registry, layered, "app:v1")
    summary = convert(registry, "app:v1", "app:nydus", work)
    assert (summary["layers"], summary["converted"], summary["reused"]) == (3, 3, 0)

    m = manifest(registry, "app", "nydus")
    assert m["mediaType"] == OCI_MANIFEST and m["schemaVersion"] == 2
    assert _sha256(json.dumps(m, separators=(",", ":")).encode()) == summary["manifest_digest"]
    *blobs, boot_layer = m["layers"]
    assert len(blobs) == summary["blobs"] == 3  # one per layer: each stores some content
    for layer in blobs:
        assert layer["mediaType"] == NYDUS_BLOB
        assert layer["annotations"] == {"containerd.io/snapshot/nydus-blob": "true"}
        assert _sha256(blob(registry, "app", layer["digest"])) == layer["digest"]
    assert boot_layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    notes = boot_layer["annotations"]
    assert notes["containerd.io/snapshot/nydus-bootstrap"] == "true"
    assert notes["containerd.io/snapshot/nydus-fs-version"] == "5"
    blob_ids = [layer["digest"].removeprefix("sha256:") for layer in blobs]
    assert json.loads(notes["containerd.io/snapshot/nydus-blob-ids"]) == blob_ids

    packed = blob(registry, "app", boot_layer["digest"])
    boot = load_bootstrap_bytes(bootstrap_of(packed))
    assert [b.blob_id for b in boot.blobs] == blob_ids
    assert boot.lookup("/replaced/only-new").is_reg
    assert not any(p.startswith(b"/gone-dir") for p, _ in boot.walk())

    config = json.loads(blob(registry, "app", m["config"]["digest"]))
    assert m["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    uncompressed_boot = _sha256(gzip.decompress(packed))
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": [layer["digest"] for layer in blobs] + [uncompressed_boot],
    }
    assert "history" not in config
    assert config["config"]["Cmd"] == ["/bin/tool"]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    source_digest = m["annotations"]["nydus.trace.source-digest"]
    assert m["annotations"]["nydus.trace.source-reference"] == f"{registry.host}/app:v1"
    assert source_digest == summary["source_digest"]

    run = check(registry, "app:v1", "app:nydus", work)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok: ") and run.stderr == ""


def test_second_convert_rebuilds_nothing_and_pushes_nothing(
    registry: RegistryServer, layered: LayeredImage, work: Path
) -> None:
    push_image(registry, layered, "app:v1")
    first = convert(registry, "app:v1", "app:nydus", work)
    built = {p.name: p.stat().st_mtime_ns for p in (work / "layers").iterdir()}
    built |= {p.name: p.stat().st_mtime_ns for p in (work / "blobs").iterdir()}
    uploads = blob_uploads(registry, "app")

    second = convert(registry, "app:v1", "app:nydus", work)
    assert (second["converted"], second["reused"]) == (0, 3)
    assert (second["blobs_pushed"], second["blobs_present"], second["bytes_pushed"]) == (0, 3, 0)
    assert second["manifest_digest"] == first["manifest_digest"]
    assert blob_uploads(registry, "app") == uploads  # the registry saw no upload at all
    again = {p.name: p.stat().st_mtime_ns for p in (work / "layers").iterdir()}
    again |= {p.name: p.stat().st_mtime_ns for p in (work / "blobs").iterdir()}
    assert again == built

    # Another target repository: nothing is rebuilt, but it gets every blob.
    third = convert(registry, "app:v1", "elsewhere:nydus", work)
    assert (third["converted"], third["reused"], third["blobs_pushed"]) == (0, 3, 3)
    assert third["manifest_digest"] == first["manifest_digest"]
    assert check(registry, "app:v1", "elsewhere:nydus", work).returncode == 0


def test_check_tells_a_different_target_or_source(
    registry: RegistryServer, layered: LayeredImage, variant: LayeredImage, work: Path
) -> None:
    push_image(registry, layered, "app:v1")
    push_image(registry, variant, "variant:v1")
    convert(registry, "app:v1", "app:nydus", work)
    convert(registry, "variant:v1", "variant:nydus", work)

    # A different image converted to the same target...
    convert(registry, "variant:v1", "app:nydus", work)
    run = check(registry, "app:v1", "app:nydus", work)
    assert run.returncode == 1
    assert "/etc/variant: only in the target" in run.stdout
    assert "/etc/to-rewrite: size 26 in the source, 25 in the target" in run.stdout
    assert one_error_line(run).startswith("nydusify: check failed: ")

    # ... and a source changed after the conversion.
    convert(registry, "app:v1", "app:nydus", work)
    assert check(registry, "app:v1", "app:nydus", work).returncode == 0
    push_image(registry, variant, "app:v1")
    run = check(registry, "app:v1", "app:nydus", work, "--max-differences", "1")
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("... and ") and "more" in lines[1]


def test_docker_format_source_converts(
    registry: RegistryServer, layered: LayeredImage, work: Path
) -> None:
    push_image(registry, layered, "docker:v1", docker_format=True)
    summary = convert(registry, "docker:v1", "docker:nydus", work, "--compressor", "lz4_block")
    assert summary["converted"] == 3
    assert check(registry, "docker:v1", "docker:nydus", work).returncode == 0


def test_chunk_dict_makes_the_new_blob_small(
    registry: RegistryServer,
    layered: LayeredImage,
    variant: LayeredImage,
    work: Path,
    tmp_path: Path,
) -> None:
    push_image(registry, layered, "base:v1")
    push_image(registry, variant, "variant:v1")
    convert(registry, "base:v1", "base:nydus", work)
    plain = convert(registry, "variant:v1", "variant:plain", tmp_path / "work-plain")
    plain_blob = manifest(registry, "variant", "plain")["layers"][0]["size"]
    assert plain_blob > 5 << 20  # the whole tree's content

    dict_ref = f"bootstrap:registry:{registry.host}/base:nydus"
    summary = convert(registry, "variant:v1", "variant:nydus", work, "--chunk-dict", dict_ref)
    assert summary["converted"] == 1 and plain["converted"] == 1
    m = manifest(registry, "variant", "nydus")
    base_blobs = [x["digest"] for x in manifest(registry, "base", "nydus")["layers"][:-1]]
    *blobs, boot_layer = m["layers"]
    new = [x for x in blobs if x["digest"] not in base_blobs]
    assert len(new) == 1 and new[0]["size"] < 64 << 10  # only the two changed files
    used = [x["digest"] for x in blobs if x["digest"] in base_blobs]
    assert used and summary["blobs_mounted"] == len(used)  # cross-mounted, not uploaded
    assert sorted(summary["chunk_dict_blobs"]) == sorted(d.removeprefix("sha256:") for d in used)
    notes = boot_layer["annotations"]
    assert json.loads(notes["containerd.io/snapshot/nydus-reference-blob-ids"]) == [
        d.removeprefix("sha256:") for d in used
    ]
    assert summary["bytes_pushed"] < plain["bytes_pushed"] / 10
    assert check(registry, "variant:v1", "variant:nydus", work).returncode == 0

    # The dictionary as a local bootstrap: its blobs come from the work dir.
    local = tmp_path / "base.boot"
    base_boot = manifest(registry, "base", "nydus")["layers"][-1]["digest"]
    local.write_bytes(bootstrap_of(blob(registry, "base", base_boot)))
    summary = convert(registry, "variant:v1", "copy:nydus", work, "--chunk-dict", str(local))
    assert summary["blobs_pushed"] == summary["blobs"] and summary["reused"] == 1
    assert check(registry, "variant:v1", "copy:nydus", work).returncode == 0

    # ... and with neither the work dir nor the target holding them: refused, nothing tagged.
    empty = str(tmp_path / "empty-work")
    run = nydusify("convert", "--source", f"{registry.host}/variant:v1", "--target",
                   f"{registry.host}/lost:nydus", "--work-dir", empty,
                   "--chunk-dict", f"bootstrap:local:{local}")  # fmt: skip
    assert "is used by the image but is neither in the target" in one_error_line(run)
    assert not tag_exists(registry, "lost", "nydus")


def test_basic_auth_registry(
    registry_basic: RegistryServer, layered: LayeredImage, work: Path, tmp_path: Path
) -> None:
    reg = registry_basic
    push_image(reg, layered, "app:v1")
    summary = convert(reg, "app:v1", "app:nydus", work)
    assert summary["converted"] == 3
    assert check(reg, "app:v1", "app:nydus", work).returncode == 0

    run = nydusify("convert", "--source", f"{reg.host}/app:v1", "--target",
                   f"{reg.host}/app:other", "--work-dir", str(work))  # fmt: skip
    assert "requires credentials" in one_error_line(run)
    wrong = f"{reg.username}:wrong"
    run = nydusify("convert", "--source", f"{reg.host}/app:v1", "--target",
                   f"{reg.host}/app:other", "--work-dir", str(work), "--target-creds", wrong,
                   "--source-creds", f"{reg.username}:{reg.password}")  # fmt: skip
    assert "refused the credentials" in one_error_line(run)
    assert not tag_exists(reg, "app", "other")

    # Credentials from a Docker config file, as `docker login` leaves them.
    docker = tmp_path / "docker"
    docker.mkdir()
    auth = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
    env = {**os.environ, "DOCKER_CONFIG": str(docker)}
    run = nydusify("convert", "--source", f"{reg.host}/app:v1", "--target",
                   f"{reg.host}/app:other", "--work-dir", str(work), env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert tag_exists(reg, "app", "other")


def test_failures_are_one_line_and_tag_nothing(
    registry: RegistryServer, layered: LayeredImage, work: Path
) -> None:
    host = registry.host

    def convert_run(source: str, target: str, *extra: str) -> str:
        run = nydusify("convert", "--source", f"{host}/{source}", "--target", f"{host}/{target}",
                       "--work-dir", str(work), *extra)  # fmt: skip
        return one_error_line(run)

    assert "manifest unknown" in convert_run("missing:v1", "out:nydus")
    push_image(registry, layered, "app:v1")
    convert(registry, "app:v1", "app:nydus", work)
    assert "is a Nydus image already" in convert_run("app:nydus", "out:nydus")
    assert "names a digest" in convert_run("app:v1", "out@sha256:" + "0" * 64)
    assert "chunk size" in convert_run("app:v1", "out:nydus", "--chunk-size", "0x3000")
    assert "not found" in convert_run("app:v1", "out:nydus", "--chunk-dict", f"{host}/nope:x")
    assert "PATH" in convert_run("app:v1", "out:nydus", "--chunk-dict", "bootstrap:weird:x")
    assert not tag_exists(registry, "out", "nydus")

    run = check(registry, "app:v1", "app:v1", work)
    assert run.returncode == 2 and "not a Nydus image" in one_error_line(run)
    run = nydusify("convert", "--source", "x", "--target", "y", "--platform", "linux")
    assert run.returncode == 2 and "platform" in run.stderr and "Traceback" not in run.stderr


def _corrupt(server: RegistryServer, digest: str) -> None:
    """Flip one byte of a blob in the registry's storage: it serves it as it is."""
    hex_ = digest.removeprefix("sha256:")
    data = server.root / f"storage/docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


def test_corrupt_blobs_are_refused(
    registry: RegistryServer, layered: LayeredImage, work: Path
) -> None:
    push_image(registry, layered, "app:v1")
    convert(registry, "app:v1", "app:nydus", work)
    nydus_blob = manifest(registry, "app", "nydus")["layers"][0]["digest"]
    _corrupt(registry, nydus_blob)
    run = check(registry, "app:v1", "app:nydus", work)
    assert run.returncode == 2
    line = one_error_line(run)
    assert "chunk digest mismatch" in line and nydus_blob.removeprefix("sha256:") in line

    source_layer = manifest(registry, "app", "v1")["layers"][0]["digest"]
    _corrupt(registry, source_layer)
    run = nydusify("convert", "--source", f"{registry.host}/app:v1", "--target",
                   f"{registry.host}/fresh:nydus", "--work-dir", str(work / "fresh"))  # fmt: skip
    assert "hashes to sha256:" in one_error_line(run)
    assert not tag_exists(registry, "fresh", "nydus")
    assert list((work / "fresh" / "spool").iterdir()) == []
    records = [json.loads(p.read_text()) for p in (work / "fresh" / "layers").glob("*.json")]
    assert source_layer not in [r["source"] for r in records]  # good layers may stay cached


def test_an_index_resolves_to_the_platform_asked_for(
    registry: RegistryServer, layered: LayeredImage, work: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(layered.layout, layout)
    add_index(layout, "multi", {layered.tag: ("linux", "amd64")})
    push(layout, "multi", f"{registry.host}/multi:v1", all_platforms=True)
    summary = convert(registry, "multi:v1", "multi:nydus", work)
    assert summary["converted"] == 3
    assert check(registry, "multi:v1", "multi:nydus", work).returncode == 0
    run = nydusify("convert", "--source", f"{registry.host}/multi:v1", "--target",
                   f"{registry.host}/multi:arm", "--work-dir", str(work),
                   "--platform", "linux/arm64")  # fmt: skip
    assert "offers linux/amd64" in one_error_line(run)
