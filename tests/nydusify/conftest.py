"""Real registries (tests/fixtures) and umoci-made images for the nydusify tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.registry import registry, registry_basic  # noqa: F401
from tests.nydusify.images import LayeredImage, layered_image, variant_image


@pytest.fixture(scope="session")
def layered(tmp_path_factory: pytest.TempPathFactory) -> LayeredImage:
    """Three layers (a real tree; deletions and changes; an opaque directory), made once."""
    return layered_image(tmp_path_factory.mktemp("layered"))


@pytest.fixture(scope="session")
def variant(tmp_path_factory: pytest.TempPathFactory, layered: LayeredImage) -> LayeredImage:
    """One layer: the layered image's final tree with two small changes."""
    return variant_image(tmp_path_factory.mktemp("variant"), layered.rootfs)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "work"
