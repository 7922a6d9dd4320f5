"""Build real trees, unpack them again, and compare with the source, entry by entry."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rafs import BuildError
from rafs._builder import BuildOptions
from rafs._check import check
from rafs._create import CreateRequest, create_image
from rafs._digest import Compressor, Digester
from rafs._load import load_bootstrap
from rafs._unpack import unpack_to_tar

from .trees import make_rich_tree, tar_entries, tree_entries

SMALL = BuildOptions(chunk_size=0x10000)


def build_and_unpack(src: Path, work: Path, opts: BuildOptions = SMALL) -> Path:
    req = CreateRequest(src, work / "boot", work / "blobs", opts, [])
    create_image(req)
    boot = load_bootstrap(work / "boot")
    check(boot, work / "blobs")
    out = work / "out.tar"
    unpack_to_tar(boot, work / "blobs", out)
    return out


def assert_same_tree(src: Path, archive: Path) -> None:
    want, want_links = tree_entries(src)
    got, got_links = tar_entries(archive)
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path
    assert got_links == want_links


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for chown and mknod")
@pytest.mark.parametrize(
    "opts",
    [
        SMALL,
        BuildOptions(chunk_size=0x1000, compressor=Compressor.NONE, digester=Digester.SHA256),
        BuildOptions(chunk_size=0x100000, compressor=Compressor.LZ4_BLOCK),
        BuildOptions(chunk_size=0x4000, compressor=Compressor.GZIP),
    ],
    ids=["zstd-64k", "none-sha256-4k", "lz4-1m", "gzip-16k"],
)
def test_rich_tree_round_trips(tmp_path: Path, opts: BuildOptions) -> None:
    src = make_rich_tree(tmp_path / "src")
    archive = build_and_unpack(src, tmp_path, opts)
    assert_same_tree(src, archive)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for chown and mknod")
def test_hole_and_duplicate_chunks_are_stored_once(tmp_path: Path) -> None:
    src = make_rich_tree(tmp_path / "src")
    result = create_image(CreateRequest(src, tmp_path / "b", tmp_path / "blobs", SMALL, []))
    boot = result.bootstrap
    sparse = boot.lookup("/data/sparse.img")
    zero_chunks = {c.compressed_offset for c in sparse.chunks[:3]}
    assert len(sparse.chunks) == 4 and len(zero_chunks) == 1
    same1, same2 = boot.lookup("/data/same-1"), boot.lookup("/data/same-2")
    assert same1.chunks == same2.chunks and same1.digest == same2.digest
    assert result.stats["chunks_deduped"] >= 4


def test_real_tree_round_trips(tmp_path: Path) -> None:
    real = Path("/usr/share/zoneinfo")
    if not real.is_dir():
        pytest.skip("no /usr/share/zoneinfo on this machine")
    src = tmp_path / "src"
    shutil.copytree(real, src, symlinks=True)
    archive = build_and_unpack(src, tmp_path)
    assert_same_tree(src, archive)


def test_same_input_gives_identical_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(Path(__file__).parent, src, symlinks=True)
    outputs = []
    for n in range(2):
        create_image(CreateRequest(src, tmp_path / f"b{n}", tmp_path / f"blobs{n}", SMALL, []))
        blobs = sorted((tmp_path / f"blobs{n}").iterdir())
        outputs.append(((tmp_path / f"b{n}").read_bytes(), [b.read_bytes() for b in blobs]))
    assert outputs[0] == outputs[1]


def test_chunk_dict_makes_the_second_blob_hold_only_new_chunks(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    v1.mkdir()
    for n in range(8):
        (v1 / f"f{n}").write_bytes(os.urandom(200_000))
    first = create_image(CreateRequest(v1, tmp_path / "b1", tmp_path / "blobs", SMALL, []))
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2)
    (v2 / "f3").write_bytes(os.urandom(200_000))
    (v2 / "new").write_bytes(b"brand new")
    req = CreateRequest(v2, tmp_path / "b2", tmp_path / "blobs", SMALL, [tmp_path / "b1"])
    second = create_image(req)
    assert first.blob is not None and second.blob is not None
    assert second.stats["chunks_from_dict"] == 7 * 4
    assert second.stats["chunks_new"] == 4 + 1
    assert second.blob.compressed_size < first.blob.compressed_size / 5
    boot2 = load_bootstrap(tmp_path / "b2")
    assert [b.blob_id for b in boot2.blobs] == [first.blob.blob_id, second.blob.blob_id]
    check(boot2, tmp_path / "blobs")


def test_chunk_dict_digester_mismatch_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "f").write_bytes(b"data")
    create_image(CreateRequest(tmp_path / "s", tmp_path / "b1", tmp_path / "blobs", SMALL, []))
    opts = BuildOptions(digester=Digester.SHA256)
    req = CreateRequest(
        tmp_path / "s", tmp_path / "b2", tmp_path / "blobs", opts, [tmp_path / "b1"]
    )
    with pytest.raises(BuildError, match="chunk dict uses blake3"):
        create_image(req)


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(os.urandom(100_000))
    opts = BuildOptions(chunk_size=0x10000, prefetch_files=("/not/there",))
    blobs = tmp_path / "blobs"
    with pytest.raises(BuildError, match="prefetch file not in the image"):
        create_image(CreateRequest(src, tmp_path / "boot", blobs, opts, []))
    assert not (tmp_path / "boot").exists()
    assert list(blobs.iterdir()) == []


def test_prefetch_table_names_inos(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x").write_bytes(b"x")
    (src / "b").write_bytes(b"b")
    opts = BuildOptions(chunk_size=0x10000, prefetch_files=("/b", "/a"))
    create_image(CreateRequest(src, tmp_path / "boot", tmp_path / "blobs", opts, []))
    boot = load_bootstrap(tmp_path / "boot")
    assert boot.prefetch == [boot.lookup("/b").ino, boot.lookup("/a").ino]


def test_empty_directory_builds_an_image_with_no_blob(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    result = create_image(
        CreateRequest(tmp_path / "src", tmp_path / "b", tmp_path / "bl", SMALL, [])
    )
    assert result.blob is None and load_bootstrap(tmp_path / "b").blobs == []


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)
trees = st.recursive(
    st.binary(max_size=5000),
    lambda kids: st.dictionaries(names, kids, max_size=5),
    max_leaves=20,
)


def write_tree(root: Path, spec: dict[str, object]) -> None:
    for name, value in spec.items():
        path = root / name
        if isinstance(value, dict):
            path.mkdir()
            write_tree(path, value)
        else:
            assert isinstance(value, bytes)
            path.write_bytes(value)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=st.dictionaries(names, trees, max_size=6))
def test_random_trees_round_trip(
    tmp_path_factory: pytest.TempPathFactory, spec: dict[str, object]
) -> None:
    work = tmp_path_factory.mktemp("prop")
    src = work / "src"
    src.mkdir()
    write_tree(src, spec)
    archive = build_and_unpack(src, work, BuildOptions(chunk_size=0x1000))
    assert_same_tree(src, archive)


def test_cli_reports_one_line_errors(tmp_path: Path) -> None:
    exe = str(Path(__file__).parents[2] / ".venv/bin/nydus-image")
    bad = tmp_path / "bad.boot"
    bad.write_bytes(b"RAFS" * 3000)
    for args in (
        ["inspect", "-B", str(bad)],
        ["check", "-B", str(tmp_path / "missing")],
        ["create", "-B", str(tmp_path / "o"), "-D", str(tmp_path / "d"), str(tmp_path / "nope")],
    ):
        run = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
        assert run.returncode == 1, args
        assert run.stderr.count("\n") == 1 and run.stderr.startswith("nydus-image: error: "), (
            run.stderr
        )
    assert not (tmp_path / "o").exists()


def test_cli_create_inspect_stat(tmp_path: Path) -> None:
    exe = str(Path(__file__).parents[2] / ".venv/bin/nydus-image")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"hello" * 1000)
    os.symlink("f", src / "l")
    run = subprocess.run(
        [
            exe,
            "create",
            "-B",
            str(tmp_path / "b"),
            "-D",
            str(tmp_path / "blobs"),
            "--output-json",
            str(tmp_path / "o.json"),
            str(src),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    summary = json.loads((tmp_path / "o.json").read_text())
    assert summary["files"] == 1 and summary["chunks"] == 1 and len(summary["blobs"]) == 1
    assert (tmp_path / "blobs" / summary["new_blob"]).exists()
    run = subprocess.run(
        [exe, "inspect", "-B", str(tmp_path / "b"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(run.stdout)
    assert [e["path"] for e in info["entries"]] == ["/", "/f", "/l"]
    assert stat.S_ISLNK(os.lstat(src / "l").st_mode) and info["entries"][2]["target"] == "f"
    run = subprocess.run(
        [exe, "stat", "-B", str(tmp_path / "b"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(run.stdout)
    assert stats["images"][1]["chunks_shared_with_earlier"] == 1 and stats["dedup_ratio"] == 2.0
