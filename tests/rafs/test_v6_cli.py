"""The v6 vector through the same commands users run on v5 images."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from pathlib import Path

import pytest

V = Path(__file__).resolve().parents[3] / "shared/vectors/nydus"
EXE = str(Path(__file__).resolve().parents[2] / ".venv/bin/nydus-image")
pytestmark = pytest.mark.skipif(not V.exists(), reason=f"vectors not found at {V}")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_v6_check_and_unpack(tmp_path: Path) -> None:
    boot = str(V / "bootstrap/rafs-v6-2.2.boot")
    run = subprocess.run(
        [EXE, "check", "-B", boot, "-D", str(V / "blobs")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "2 chunks" in run.stdout
    out = tmp_path / "v6.tar"
    subprocess.run([EXE, "unpack", "-B", boot, "-D", str(V / "blobs"), "-o", str(out)], check=True)
    with tarfile.open(out) as tar:
        files = {}
        for m in tar:
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                files[m.name] = f.read()
    assert {k: len(v) for k, v in files.items()} == {"lib.rs": 16931, "sync_io.rs": 13400}
    assert git_blob_sha1(files["lib.rs"]).startswith("68ef5bc3")
    assert git_blob_sha1(files["sync_io.rs"]).startswith("e91f7e83")


def test_v6_inspect_json(tmp_path: Path) -> None:
    import json

    run = subprocess.run(
        [EXE, "inspect", "-B", str(V / "bootstrap/rafs-v6-2.2.boot"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(run.stdout)
    assert info["version"] == 6 and info["compressor"] == "zstd" and info["digester"] == "blake3"
    assert [e["path"] for e in info["entries"]] == ["/", "/lib.rs", "/sync_io.rs"]
