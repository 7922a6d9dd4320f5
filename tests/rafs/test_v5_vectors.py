"""The Nydus RAFS v5 vectors: load, check, unpack, and rebuild byte for byte."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from rafs import CorruptBootstrap, RafsError, UnsupportedFormat
from rafs._builder import BuildOptions, build, writer_for
from rafs._check import check
from rafs._digest import Compressor, Digester
from rafs._dirimport import import_directory
from rafs._load import load_bootstrap
from rafs._unpack import unpack_to_tar
from rafs._v5 import load_v5
from rafs._v5write import dump_v5

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "nydus"
REPEATABLE = VECTORS / "repeatable"
V5_NAMES = ["sha256-nocompress-repeatable", "blake3-lz4_block-non_repeatable"]

pytestmark = pytest.mark.skipif(not VECTORS.exists(), reason=f"vectors not found at {VECTORS}")


def expected_md5s(name: str) -> dict[str, str]:
    text = (REPEATABLE / f"{name}.result").read_text()
    return {
        path.lstrip("/"): md5
        for md5, path in re.findall(r"^([0-9a-f]{32})\s+(\S+)$", text, flags=re.MULTILINE)
    }


@pytest.mark.parametrize("name", V5_NAMES)
def test_vector_loads_with_expected_settings(name: str) -> None:
    boot = load_bootstrap(REPEATABLE / name)
    assert boot.version == 5 and boot.chunk_size == 0x100000
    assert boot.compressor is Compressor.NONE
    assert boot.digester is (Digester.SHA256 if name.startswith("sha256") else Digester.BLAKE3)
    assert len(boot.inodes) == 54
    assert [b.blob_id[:8] for b in boot.blobs] == ["7334a259"]
    hardlinked = [i for i in boot.inodes.values() if i.ino == 5]
    assert [i.index for i in hardlinked] == [5, 6, 9] and {i.nlink for i in hardlinked} == {3}
    assert boot.lookup("/symlink-test/root-2").symlink == b"/foobar"


@pytest.mark.parametrize("name", V5_NAMES)
def test_vector_checks_and_unpacks_to_the_recorded_md5s(name: str, tmp_path: Path) -> None:
    boot = load_bootstrap(REPEATABLE / name)
    report = check(boot, REPEATABLE / "blobs")
    assert report.chunks_checked == 23 and report.blobs_checked == 1
    out = tmp_path / "out.tar"
    unpack_to_tar(boot, REPEATABLE / "blobs", out)
    got: dict[str, str] = {}
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar}
        for m in members.values():
            source = members[m.linkname] if m.islnk() else m
            if source.isreg():
                f = tar.extractfile(source)
                assert f is not None
                got[m.name] = hashlib.md5(f.read()).hexdigest()
    expected = expected_md5s(name)
    assert len(expected) == 23
    assert got == expected


def test_vector_reloads_and_dumps_identically_but_for_inodes_count() -> None:
    data = (REPEATABLE / V5_NAMES[0]).read_bytes()
    out = dump_v5(load_v5(data))
    diff = [i for i in range(len(data)) if data[i] != out[i]]
    assert len(out) == len(data)
    # s_inodes_count (offset 24): the 2022 builder did not count the root (51), we do (52).
    assert diff == [24] and data[24] == 51 and out[24] == 52


def test_vector_rebuilt_from_its_unpacked_tree_is_byte_identical(tmp_path: Path) -> None:
    name = V5_NAMES[0]
    boot = load_bootstrap(REPEATABLE / name)
    archive = tmp_path / "tree.tar"
    unpack_to_tar(boot, REPEATABLE / "blobs", archive)
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["tar", "-xpf", str(archive), "-C", str(src)], check=True)
    opts = BuildOptions(digester=Digester.SHA256, compressor=Compressor.NONE, explicit_uidgid=False)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    result = build(import_directory(src), opts, writer_for(blobs, opts, None))
    rebuilt = dump_v5(result.bootstrap)
    original = (REPEATABLE / name).read_bytes()
    assert [i for i in range(len(original)) if original[i] != rebuilt[i]] == [24]
    blob_id = result.bootstrap.blobs[0].blob_id
    assert (blobs / blob_id).read_bytes() == (REPEATABLE / "blobs" / blob_id).read_bytes()


def test_legacy_prerelease_bootstrap_is_refused_clearly() -> None:
    path = VECTORS / "bootstrap" / "nydusd_daemon_test_bootstrap"
    with pytest.raises(UnsupportedFormat, match="not a RAFS v5 inode layout"):
        load_bootstrap(path)


def test_corrupt_copy_of_vector_raises_rafs_errors_only() -> None:
    import random

    data = (REPEATABLE / V5_NAMES[0]).read_bytes()
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            pos = rng.choice([rng.randrange(0, 96), rng.randrange(8192, len(data))])
            mutated[pos] = rng.randrange(256)
        try:
            load_v5(bytes(mutated))
            outcomes["ok"] += 1
        except RafsError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50  # the checks do fire; nothing else escaped


@pytest.mark.parametrize("cut", [0, 7, 80, 8191, 8192, 8300, 8408, 8544, 9000, 18640])
def test_truncated_vector_is_refused(cut: int) -> None:
    data = (REPEATABLE / V5_NAMES[0]).read_bytes()[:cut]
    with pytest.raises(RafsError):
        load_bootstrap_bytes_or_magic(data)


def load_bootstrap_bytes_or_magic(data: bytes) -> None:
    from rafs._load import load_bootstrap_bytes

    load_bootstrap_bytes(data)


def test_unknown_magic_is_named() -> None:
    from rafs._load import load_bootstrap_bytes

    with pytest.raises(CorruptBootstrap, match="magic"):
        load_bootstrap_bytes(b"\x7fELF" + bytes(9000))


def test_cli_check_and_unpack_on_vector(tmp_path: Path) -> None:
    exe = shutil.which("nydus-image") or str(Path(__file__).parents[2] / ".venv/bin/nydus-image")
    boot = REPEATABLE / V5_NAMES[1]
    run = subprocess.run(
        [exe, "check", "-B", str(boot), "-D", str(REPEATABLE / "blobs")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "23 chunks" in run.stdout
    out = tmp_path / "x.tar"
    run = subprocess.run(
        [exe, "unpack", "-B", str(boot), "-D", str(REPEATABLE / "blobs"), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and out.exists()
