"""Imports flow one way (../shared/DESIGN.md): protocol and rafs import none of the others,
fuse imports only rafs, supernode never imports peer or fuse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"protocol", "rafs", "fuse", "peer", "supernode"}
ALLOWED = {
    "protocol": set(),
    "rafs": set(),
    "fuse": {"rafs"},
    "peer": {"protocol", "rafs", "fuse"},
    "supernode": {"protocol", "rafs"},
}


def imported_packages(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_flow_one_way(package: str) -> None:
    found = imported_packages(package)
    wrong = {dep: files for dep, files in found.items() if dep not in ALLOWED[package]}
    assert wrong == {}
