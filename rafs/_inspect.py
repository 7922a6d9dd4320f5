"""Summaries of bootstraps: one image described, and chunk statistics across images."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from ._model import Bootstrap


def image_stats(boot: Bootstrap) -> dict[str, Any]:
    files = [i for i in boot.inodes.values() if i.is_reg]
    chunks = [c for i in files for c in i.chunks]
    unique = {(c.digest, c.uncompressed_size) for c in chunks}
    return {
        "files": len({i.ino for i in files}),
        "entries": len(boot.inodes),
        "bytes": sum(i.size for i in {i.ino: i for i in files}.values()),
        "chunks": len(chunks),
        "unique_chunks": len(unique),
        "unique_bytes": sum(size for _, size in unique),
    }


def describe(boot: Bootstrap) -> dict[str, Any]:
    return {
        "version": boot.version,
        "chunk_size": boot.chunk_size,
        "flags": hex(boot.flags),
        "compressor": boot.compressor.value,
        "digester": boot.digester.value,
        "root_digest": boot.root.digest.hex(),
        "inodes": len(boot.inodes),
        "prefetch": boot.prefetch,
        "blobs": [
            {
                "id": b.blob_id,
                "chunks": b.chunk_count,
                "compressed_size": b.compressed_size,
                "uncompressed_size": b.uncompressed_size,
                "features": hex(b.features),
            }
            for b in boot.blobs
        ],
        "entries": [
            {
                "path": path.decode(errors="replace"),
                "ino": inode.ino,
                "mode": stat.filemode(inode.mode),
                "uid": inode.uid,
                "gid": inode.gid,
                "size": inode.size,
                "nlink": inode.nlink,
                "chunks": len(inode.chunks),
                "digest": inode.digest.hex(),
                **({"target": inode.symlink.decode(errors="replace")} if inode.symlink else {}),
            }
            for path, inode in boot.walk()
        ],
    }


def stats_across(boots: list[Bootstrap], names: list[Path]) -> dict[str, Any]:
    seen: set[tuple[bytes, int]] = set()
    per_image = []
    for name, boot in zip(names, boots, strict=True):
        s = image_stats(boot)
        keys = {(c.digest, c.uncompressed_size) for i in boot.inodes.values() for c in i.chunks}
        s["bootstrap"] = str(name)
        s["chunks_shared_with_earlier"] = len(keys & seen)
        seen |= keys
        per_image.append(s)
    total_unique = sum(size for _, size in seen)
    total_bytes = sum(s["unique_bytes"] for s in per_image)
    return {
        "images": per_image,
        "unique_chunks": len(seen),
        "unique_bytes": total_unique,
        "dedup_ratio": round(total_bytes / total_unique, 4) if total_unique else 1.0,
    }
