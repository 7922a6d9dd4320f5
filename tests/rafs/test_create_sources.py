"""`nydus-image create` on each kind of source, end to end through unpack."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

EXE = str(Path(__file__).resolve().parents[2] / ".venv/bin/nydus-image")
TARS = Path(__file__).resolve().parents[3] / "shared/vectors/nydus/tar"


def nydus(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, check=check)


def listing(path: Path) -> dict[str, tuple[str, int, str, tuple[int, int]]]:
    """name -> (type, mode, link target, device) as tar records them."""
    out = {}
    with tarfile.open(path) as tar:
        for m in tar:
            name = m.name.removeprefix("./").rstrip("/")
            if name in ("", "."):
                continue
            out[name] = (
                m.type.decode(),
                m.mode & 0o7777,
                m.linkname.removeprefix("./"),
                (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0),
            )
    return out


@pytest.mark.skipif(not TARS.exists(), reason=f"vectors not found at {TARS}")
def test_all_entry_type_tar_keeps_every_kind(tmp_path: Path) -> None:
    source = TARS / "all-entry-type.tar"
    nydus("create", "-B", str(tmp_path / "b"), "-D", str(tmp_path / "blobs"), str(source))
    nydus("check", "-B", str(tmp_path / "b"), "-D", str(tmp_path / "blobs"))
    nydus(
        "unpack",
        "-B",
        str(tmp_path / "b"),
        "-D",
        str(tmp_path / "blobs"),
        "-o",
        str(tmp_path / "o.tar"),
    )
    want, got = listing(source), listing(tmp_path / "o.tar")
    # this vector holds files, hardlinks, a symlink and directories (devices and fifos are
    # covered by the rich-tree round trips, which make them with mknod)
    assert {v[0] for v in got.values()} == {v[0] for v in want.values()} == {"0", "1", "2", "5"}
    assert sorted(got) == sorted(want)
    for name, (kind, mode, target, dev) in want.items():
        g = got[name]
        assert g[0] == kind and g[2] == target and g[3] == dev, name
        if kind != "2":  # symlink modes are always 0777 on Linux
            assert g[1] == mode, name


def test_escaping_tar_member_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    layer = tmp_path / "evil.tar"
    with tarfile.open(layer, "w") as tar:
        good = tarfile.TarInfo("ok")
        good.size = 5
        tar.addfile(good, io.BytesIO(b"hello"))
        evil = tarfile.TarInfo("a/../../escape")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    run = nydus(
        "create", "-B", str(tmp_path / "b"), "-D", str(tmp_path / "blobs"), str(layer), check=False
    )
    assert run.returncode == 1 and "climbs above the root" in run.stderr
    assert run.stderr.count("\n") == 1
    assert not (tmp_path / "b").exists() and list((tmp_path / "blobs").iterdir()) == []


def test_gzip_and_zstd_layers_build_the_same_tree(tmp_path: Path) -> None:
    plain = tmp_path / "l.tar"
    with tarfile.open(plain, "w") as tar:
        for n in range(5):
            info = tarfile.TarInfo(f"d/f{n}")
            info.size = 1000 * n
            tar.addfile(info, io.BytesIO(bytes([n]) * info.size))
    subprocess.run(["gzip", "-k", str(plain)], check=True)
    subprocess.run(["zstd", "-q", str(plain)], check=True)
    roots = set()
    for layer in (plain, tmp_path / "l.tar.gz", tmp_path / "l.tar.zst"):
        boot = tmp_path / f"{layer.name}.boot"
        nydus("create", "-B", str(boot), "-D", str(tmp_path / "blobs"), str(layer))
        roots.add(nydus("inspect", "-B", str(boot)).stdout.split("root_digest: ")[1].split()[0])
    assert len(roots) == 1
