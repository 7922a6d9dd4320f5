"""`nydusify convert --prefetch-patterns`: the list read from STDIN becomes the merged
bootstrap's prefetch table and never a layer's, so the layer cache is reused whatever the
list; a path that is not in the image is left out, as Nydus does, with a warning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rafs import Bootstrap
from rafs._load import load_bootstrap, load_bootstrap_bytes
from tests.fixtures.registry import RegistryServer
from tests.nydusify.helpers import blob, bootstrap_of, convert, manifest, push_image
from tests.nydusify.images import LayeredImage

NYDUS_IMAGE = str(Path(sys.executable).with_name("nydus-image"))
PATTERNS = "--prefetch-patterns"


def _pushed(server: RegistryServer, repo: str, tag: str, into: Path) -> Bootstrap:
    """The bootstrap of the pushed image, also written to `into` for `nydus-image`."""
    *_, boot_layer = manifest(server, repo, tag)["layers"]
    into.write_bytes(bootstrap_of(blob(server, repo, boot_layer["digest"])))
    return load_bootstrap_bytes(into.read_bytes())


def _inspected_prefetch(path: Path) -> list[int]:
    run = subprocess.run([NYDUS_IMAGE, "inspect", "-B", str(path), "--json"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    table: list[int] = json.loads(run.stdout)["prefetch"]
    return table


def _cache_state(work: Path) -> dict[str, int]:
    """The conversion cache's files (layer records, bootstraps, blobs) and their mtimes."""
    files = [*(work / "layers").iterdir(), *(work / "blobs").iterdir()]
    return {p.name: p.stat().st_mtime_ns for p in files}


def test_patterns_fill_the_merged_table_and_leave_the_layer_cache_alone(
    registry: RegistryServer, layered: LayeredImage, work: Path, tmp_path: Path
) -> None:
    push_image(registry, layered, "app:v1")
    paths = ["/bin/tool", "/new", "/replaced/only-new"]  # one from each of the three layers
    first = convert(registry, "app:v1", "app:hot", work, PATTERNS, stdin="\n".join(paths))
    assert (first["converted"], first["prefetch"], first["prefetch_ignored"]) == (3, paths, [])
    boot = _pushed(registry, "app", "hot", tmp_path / "hot.boot")
    assert boot.prefetch == [boot.lookup(p).ino for p in paths]
    assert boot.lookup("/new").is_dir  # a directory stands for its subtree, as in Nydus
    assert _inspected_prefetch(tmp_path / "hot.boot") == boot.prefetch
    layer_boots = sorted((work / "layers").glob("*.boot"))
    assert len(layer_boots) == 3
    assert all(load_bootstrap(p).prefetch == [] for p in layer_boots)
    cached = _cache_state(work)

    second = convert(registry, "app:v1", "app:warm", work, PATTERNS, stdin="/etc/hosts\n")
    assert (second["converted"], second["reused"], second["blobs_pushed"]) == (0, 3, 0)
    assert _cache_state(work) == cached
    warm = _pushed(registry, "app", "warm", tmp_path / "warm.boot")
    assert warm.prefetch == [warm.lookup("/etc/hosts").ino]
    assert second["manifest_digest"] != first["manifest_digest"]

    plain = convert(registry, "app:v1", "app:plain", work)
    assert (plain["reused"], plain["prefetch"]) == (3, [])
    assert _pushed(registry, "app", "plain", tmp_path / "plain.boot").prefetch == []
    assert _cache_state(work) == cached


def test_paths_not_in_the_image_are_left_out_with_a_warning(
    registry: RegistryServer, layered: LayeredImage, work: Path, tmp_path: Path
) -> None:
    push_image(registry, layered, "app:v1")
    stdin = (
        "/gone-dir/sub/file\n"  # in layer 1, deleted by layer 2
        "\n  /etc/hosts  \n"  # blank lines and spaces are nothing
        "etc/to-rewrite\n"  # not absolute
        "/etc/hosts/\n"  # the same path again: adds nothing
        "/nowhere\n"
        "/bin\n"
        "/bin/tool\n"  # below /bin: adds nothing
    )
    summary = convert(registry, "app:v1", "app:nydus", work, PATTERNS, stdin=stdin, warnings=(
        "prefetch path /gone-dir/sub/file is not in the image: ignored",
        "prefetch path etc/to-rewrite is not absolute: ignored",
        "prefetch path /nowhere is not in the image: ignored",
    ))  # fmt: skip
    assert summary["prefetch"] == ["/etc/hosts", "/bin"]
    boot = _pushed(registry, "app", "nydus", tmp_path / "image.boot")
    assert boot.prefetch == [boot.lookup("/etc/hosts").ino, boot.lookup("/bin").ino]
