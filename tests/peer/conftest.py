"""Fixtures for the mesh tests: a cluster of real processes and a Nydus image in a real
registry. FUSE tests are skipped (with the reason) where /dev/fuse or root is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer, registry  # noqa: F401

from .cluster import Cluster, Image, build_and_push, sample_files


def fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: FUSE mounts cannot run here"
    if os.geteuid() != 0:
        return "FUSE mount tests need root here (allow_other)"
    return None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    reason = fuse_missing()
    if reason:
        pytest.skip(reason)
    found = Cluster(tmp_path / "cluster")
    found.base.mkdir()
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
def image(registry: RegistryServer, tmp_path: Path) -> Image:  # noqa: F811
    return build_and_push(registry, tmp_path / "image", sample_files())
