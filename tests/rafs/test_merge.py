"""Per-layer images made from tar layers, merged into one image with whiteouts applied."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

EXE = str(Path(__file__).resolve().parents[2] / ".venv/bin/nydus-image")


def write_layer(path: Path, entries: list[tuple[str, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def nydus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, check=True)


def test_merge_applies_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    write_layer(
        tmp_path / "l1.tgz",
        [
            ("a", b"lower a"),
            ("b", None),
            ("b/x", b"lower x" * 999),
            ("c", None),
            ("c/keep", b"kept"),
        ],
    )
    write_layer(
        tmp_path / "l2.tgz",
        [
            (".wh.a", b""),
            ("b", None),
            ("b/.wh..wh..opq", b""),
            ("b/y", b"upper y"),
            ("c/z", b"upper z"),
        ],
    )
    blobs = tmp_path / "blobs"
    for n in (1, 2):
        nydus(
            "create",
            "-B",
            str(tmp_path / f"l{n}.boot"),
            "-D",
            str(blobs),
            str(tmp_path / f"l{n}.tgz"),
        )
    layer2 = json.loads(nydus("inspect", "-B", str(tmp_path / "l2.boot"), "--json").stdout)
    assert "/.wh.a" in [e["path"] for e in layer2["entries"]]  # a layer keeps its whiteouts
    nydus(
        "merge",
        "-B",
        str(tmp_path / "merged.boot"),
        str(tmp_path / "l1.boot"),
        str(tmp_path / "l2.boot"),
    )
    nydus("check", "-B", str(tmp_path / "merged.boot"), "-D", str(blobs))
    info = json.loads(nydus("inspect", "-B", str(tmp_path / "merged.boot"), "--json").stdout)
    assert [e["path"] for e in info["entries"]] == ["/", "/b", "/b/y", "/c", "/c/keep", "/c/z"]
    assert len(info["blobs"]) == 2
    out = tmp_path / "merged.tar"
    nydus("unpack", "-B", str(tmp_path / "merged.boot"), "-D", str(blobs), "-o", str(out))
    with tarfile.open(out) as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
    assert contents == {"b/y": b"upper y", "c/keep": b"kept", "c/z": b"upper z"}


def test_merge_drops_blobs_no_longer_referenced(tmp_path: Path) -> None:
    write_layer(tmp_path / "l1.tgz", [("a", b"only in the lower layer")])
    write_layer(tmp_path / "l2.tgz", [(".wh.a", b""), ("b", b"upper")])
    blobs = tmp_path / "blobs"
    for n in (1, 2):
        nydus(
            "create",
            "-B",
            str(tmp_path / f"l{n}.boot"),
            "-D",
            str(blobs),
            str(tmp_path / f"l{n}.tgz"),
        )
    nydus(
        "merge",
        "-B",
        str(tmp_path / "m.boot"),
        str(tmp_path / "l1.boot"),
        str(tmp_path / "l2.boot"),
    )
    info = json.loads(nydus("inspect", "-B", str(tmp_path / "m.boot"), "--json").stdout)
    l2 = json.loads(nydus("inspect", "-B", str(tmp_path / "l2.boot"), "--json").stdout)
    assert [b["id"] for b in info["blobs"]] == [b["id"] for b in l2["blobs"]]
