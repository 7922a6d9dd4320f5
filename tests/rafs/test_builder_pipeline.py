"""The builder's fast paths give the same image as the plain ones, and clean up the same.

A directory is walked while its content is stored (`build(list_children=...)`), file
inodes are made while the pipeline runs, the blob is synced while the bootstrap is laid
out: each is checked here against the straightforward way, byte for byte.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from rafs import BuildError
from rafs._blobwriter import BlobWriter
from rafs._builder import BuildOptions, ChunkDict, build, gc_paused, writer_for
from rafs._check import check
from rafs._create import CreateRequest, create_image
from rafs._digest import Compressor, Digester
from rafs._dirimport import directory_root, import_directory, list_directory
from rafs._load import load_bootstrap
from rafs._v5write import dump_v5

from .trees import make_rich_tree

SMALL = BuildOptions(chunk_size=0x1000)


def _image(tmp: Path, src: Path, walk_while_storing: bool) -> tuple[bytes, list[str]]:
    blobs = tmp / ("walked" if walk_while_storing else "read-first")
    blobs.mkdir()
    writer = writer_for(blobs, SMALL, None)
    if walk_while_storing:
        result = build(directory_root(src), SMALL, writer, None, list_directory)
    else:
        result = build(import_directory(src), SMALL, writer, None)
    return dump_v5(result.bootstrap), sorted(p.name for p in blobs.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for chown and mknod")
def test_walking_while_storing_gives_the_bytes_of_a_tree_read_first(tmp_path: Path) -> None:
    src = make_rich_tree(tmp_path / "src")
    for n in range(300):  # many small files: several batches in flight
        (src / "data" / f"small-{n:03}").write_bytes(os.urandom(n * 37))
    walked = _image(tmp_path, src, walk_while_storing=True)
    read_first = _image(tmp_path, src, walk_while_storing=False)
    assert walked == read_first
    assert len(walked[1]) == 1  # one blob, same name (its sha256) both ways


def test_inodes_made_early_are_made_again_when_dictionary_blobs_move_chunks(
    tmp_path: Path,
) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    (v1 / "kept").write_bytes(os.urandom(10_000))
    create_image(CreateRequest(v1, tmp_path / "b1", tmp_path / "blobs", SMALL, []))
    v2.mkdir()
    (v2 / "kept").write_bytes((v1 / "kept").read_bytes())
    (v2 / "new").write_bytes(os.urandom(10_000))
    req = CreateRequest(v2, tmp_path / "b2", tmp_path / "blobs", SMALL, [tmp_path / "b1"])
    create_image(req)
    boot = load_bootstrap(tmp_path / "b2")
    assert len(boot.blobs) == 2  # the dictionary's blob first, then the new one
    assert {c.blob_index for c in boot.lookup("/kept").chunks} == {0}
    assert {c.blob_index for c in boot.lookup("/new").chunks} == {1}
    check(boot, tmp_path / "blobs")


def _writer(blob_dir: Path) -> BlobWriter:
    return BlobWriter(
        blob_dir, chunk_size=0x1000, compressor=Compressor.ZSTD, digester=Digester.BLAKE3
    )


def _one_file_settling_later(tmp_path: Path) -> tuple[BlobWriter, Path]:
    """A writer with one 5000-byte file stored, set to settle later; and its blob dir."""
    (tmp_path / "f").write_bytes(os.urandom(5000))
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    writer = _writer(blobs)
    writer.settle_later = True
    list(writer.add_files([(1, os.fsencode(tmp_path / "f"), 5000)]))
    return writer, blobs


def test_settle_later_puts_the_blob_in_place_only_when_settled(tmp_path: Path) -> None:
    writer, blobs = _one_file_settling_later(tmp_path)
    info = writer.finish()
    assert info is not None
    writer.settle()
    assert [p.name for p in blobs.iterdir()] == [info.blob_id]


def test_abort_after_finish_leaves_nothing(tmp_path: Path) -> None:
    writer, blobs = _one_file_settling_later(tmp_path)
    writer.finish()
    writer.abort()
    assert list(blobs.iterdir()) == []


def test_a_file_gone_before_it_is_read_names_it_and_leaves_nothing(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    writer = _writer(blobs)
    with pytest.raises(BuildError, match=r"cannot read .*/gone: No such file"):
        list(writer.add_files([(1, os.fsencode(tmp_path / "gone"), 10)]))
    writer.abort()
    assert list(blobs.iterdir()) == []


def test_a_dictionary_blob_index_is_never_given_to_new_chunks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept").write_bytes(os.urandom(5000))
    (src / "f").write_bytes(os.urandom(5000))
    create_image(CreateRequest(src, tmp_path / "b1", tmp_path / "blobs", SMALL, []))
    (src / "f").write_bytes(os.urandom(5000))  # new chunks, beside ones the dictionary has
    boot = load_bootstrap(tmp_path / "b1")
    writer = writer_for(tmp_path / "blobs", SMALL, None)  # made without the dictionary
    chunk_dict = ChunkDict.from_bootstraps([boot], SMALL.digester)
    with pytest.raises(BuildError, match="blob index 0, a dictionary blob's"):
        build(import_directory(src), SMALL, writer, chunk_dict)
    writer.abort()


def test_gc_paused_leaves_the_objects_it_saw_made_out_of_the_young_generation() -> None:
    assert gc.isenabled()
    with gc_paused():
        made = [(n, str(n)) for n in range(20_000)]
        assert not gc.isenabled()
    assert gc.isenabled()
    young = {id(o) for o in gc.get_objects(generation=0)}
    assert not any(id(t) in young for t in made)
