"""`nydus-image create`: pick the importer for a source, build, write outputs atomically.

A source is a directory, a tar layer (plain, gzip or zstd) or an OCI image layout. The
bootstrap is written to a temporary file and renamed; on any failure the new blob and the
temporary bootstrap are removed, so nothing half-made is left behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._blobwriter import BlobWriter
from ._builder import (
    BuildOptions,
    BuildResult,
    ChunkDict,
    ListChildren,
    build,
    gc_paused,
    writer_for,
)
from ._dirimport import directory_root, list_directory
from ._errors import BuildError
from ._load import load_bootstrap
from ._source import SourceEntry
from ._v5write import dump_v5


@dataclass
class CreateRequest:
    source: Path
    bootstrap: Path
    blob_dir: Path
    options: BuildOptions
    chunk_dict: list[Path]
    on_bytes: Callable[[int], None] | None = None


def create_image(req: CreateRequest) -> BuildResult:
    with gc_paused():  # the collector would re-walk the build's objects, none in cycles
        return _create(req)


def _create(req: CreateRequest) -> BuildResult:
    if not req.source.exists():
        raise BuildError(f"source not found: {req.source}")
    req.blob_dir.mkdir(parents=True, exist_ok=True)
    chunk_dict = _chunk_dict(req)
    writer = writer_for(req.blob_dir, req.options, chunk_dict)
    writer.on_bytes = req.on_bytes
    try:
        writer.settle_later = True  # the blob syncs while the bootstrap is laid out ...
        root, list_children = _import(req.source, writer)
        result = build(root, req.options, writer, chunk_dict, list_children)
        bootstrap = dump_v5(result.bootstrap)
        writer.settle()  # ... and is in place before the bootstrap naming it is
        write_atomically(req.bootstrap, bootstrap)
    except BaseException:
        writer.abort()
        raise
    return result


def _chunk_dict(req: CreateRequest) -> ChunkDict | None:
    if not req.chunk_dict:
        return None
    boots = [load_bootstrap(p) for p in req.chunk_dict]
    return ChunkDict.from_bootstraps(boots, req.options.digester)


def _import(source: Path, writer: BlobWriter) -> tuple[SourceEntry, ListChildren]:
    """The root of the source and how the builder lists the tree below it.

    A directory is walked by the builder as it lays the image out, so its content is
    stored while the walk goes on; tar layers are read here, whole, as they stream.
    """
    if source.is_dir():
        from ._tarimport import import_oci_layout, is_oci_layout

        if is_oci_layout(source):
            return import_oci_layout(source, writer), SourceEntry.sorted_children
        return directory_root(source), list_directory
    from ._tarimport import import_tar

    tree = import_tar(source, writer, keep_whiteouts=True)  # a layer: merge applies them
    return tree, SourceEntry.sorted_children


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
