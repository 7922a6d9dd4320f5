"""Opening a bootstrap file of either version: v5 by its RAFS magic, v6 by the EROFS one."""

from __future__ import annotations

from pathlib import Path

from ._errors import CorruptBootstrap, RafsError, UnsupportedFormat
from ._model import Bootstrap
from ._v5 import is_v5, load_v5

MAX_BOOTSTRAP_BYTES = 2 << 30


def load_bootstrap_bytes(data: bytes) -> Bootstrap:
    if is_v5(data):
        return load_v5(data)
    from ._v6 import is_v6, load_v6

    if is_v6(data):
        return load_v6(data)
    head = data[:4].hex() if data else "empty file"
    raise CorruptBootstrap("magic (neither RAFS v5 nor v6)", head, 0)


def load_bootstrap(path: Path) -> Bootstrap:
    try:
        size = path.stat().st_size
        if size > MAX_BOOTSTRAP_BYTES:
            raise CorruptBootstrap("file size", size)
        data = path.read_bytes()
    except OSError as exc:
        raise RafsError(f"cannot read bootstrap {path}: {exc.strerror}") from exc
    try:
        return load_bootstrap_bytes(data)
    except UnsupportedFormat as exc:
        raise UnsupportedFormat(f"{path}: {exc}") from exc
