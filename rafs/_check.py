"""`check`: recompute every Merkle digest, and with blobs, every chunk.

A regular file's digest is H(its chunk ids), a symlink's H(target), a directory's
H(its children's digests) in child order, devices and fifos H(""); the root's digest
thus covers the whole tree. With a blob directory each distinct chunk is read,
decompressed and hashed, and each blob file's sha256 is compared with its id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import CheckFailed, RafsError
from ._model import Bootstrap, Inode
from ._reader import ChunkReader, LocalBlobs


@dataclass
class CheckReport:
    inodes: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    blobs_checked: int = 0
    problems: list[str] = field(default_factory=list)


def check(boot: Bootstrap, blob_dir: Path | None = None) -> CheckReport:
    """Raise `CheckFailed` listing every problem found; return counts when all is well."""
    report = CheckReport(inodes=len(boot.inodes))
    if boot.version == 5:  # v6 bootstraps carry no per-inode digests; chunks still checked
        _check_digests(boot, report)
    if blob_dir is not None:
        _check_chunks(boot, blob_dir, report)
        if boot.version == 5:  # a v6 blob id leaves out its digest section (rafs-v6.md 15.6)
            _check_blob_ids(boot, blob_dir, report)
    if report.problems:
        shown = "; ".join(report.problems[:5])
        more = f" (and {len(report.problems) - 5} more)" if len(report.problems) > 5 else ""
        raise CheckFailed(f"check failed: {shown}{more}")
    return report


def expected_digest(boot: Bootstrap, inode: Inode) -> bytes:
    h = boot.digester
    if inode.is_dir:
        return h.hash(b"".join(boot.inodes[i].digest for i in inode.children))
    if inode.is_reg:
        return h.hash(b"".join(c.digest for c in inode.chunks))
    if inode.is_symlink:
        return h.hash(inode.symlink or b"")
    return h.hash(b"")


def _check_digests(boot: Bootstrap, report: CheckReport) -> None:
    for path, inode in boot.walk():
        if inode.digest != expected_digest(boot, inode):
            report.problems.append(f"digest of {path.decode(errors='replace')} does not match")
        if inode.is_reg and sum(c.uncompressed_size for c in inode.chunks) > inode.size:
            report.problems.append(f"chunks of {path.decode(errors='replace')} exceed its size")


def _check_chunks(boot: Bootstrap, blob_dir: Path, report: CheckReport) -> None:
    seen: set[tuple[int, int]] = set()
    with LocalBlobs(blob_dir) as blobs:
        reader = ChunkReader(boot, blobs)
        for inode in boot.inodes.values():
            for chunk in inode.chunks:
                key = (chunk.blob_index, chunk.compressed_offset)
                if key in seen:
                    continue
                seen.add(key)
                try:
                    reader.read(chunk)
                except RafsError as exc:
                    report.problems.append(str(exc))
                    continue
                report.chunks_checked += 1
                report.bytes_checked += chunk.uncompressed_size


def _check_blob_ids(boot: Bootstrap, blob_dir: Path, report: CheckReport) -> None:
    for blob in boot.blobs:
        path = blob_dir / blob.blob_id
        if not path.exists():
            report.problems.append(f"blob {blob.blob_id} not found in {blob_dir}")
            continue
        if _sha256_file(path) != blob.blob_id:
            report.problems.append(f"blob {blob.blob_id}: file content does not hash to its id")
            continue
        report.blobs_checked += 1


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
