"""`benchmarks/build.py --small` runs end to end and reports every figure it promises.

Timings are not asserted (the machine is shared); the figures' presence and their
internal consistency are: sizes are real, ratios agree with the figures they come from,
and the second version reuses most chunks from the first one's dictionary.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.benchmark_runs import run_small

TOOL_FIELDS = {"name", "command", "wall_s", "cpu_s", "output_bytes", "median_s", "mb_per_s"}
RATIOS = {
    "throughput_vs_tar_zstd",
    "throughput_vs_mksquashfs",
    "size_vs_tar_zstd",
    "size_vs_mksquashfs",
}
DEDUP = {
    "chunks_new",
    "chunks_deduped",
    "chunks_from_dict",
    "blob_compressed_size",
    "v1_blob_bytes",
    "v2_full_blob_bytes",
    "v2_dict_blob_bytes",
    "chunks_reused_fraction",
    "changed_fraction",
}

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mksquashfs", "zstd", "tar")),
    reason="mksquashfs, zstd and tar are the tools compared against",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    return run_small("build.py", tmp_path_factory.mktemp("bench"), timeout=120)


def test_every_tool_has_its_figures(smoke: tuple[dict[str, Any], str, Path]) -> None:
    report, _, _ = smoke
    assert set(report["tools"]) == {"nydus-image", "tar|zstd", "mksquashfs"}
    for result in report["tools"].values():
        assert set(result) >= TOOL_FIELDS
        assert len(result["wall_s"]) == 1
        assert result["output_bytes"] > 0
        assert result["mb_per_s"] > 0


def test_tree_is_a_few_mb_of_real_files(smoke: tuple[dict[str, Any], str, Path]) -> None:
    tree = smoke[0]["tree"]
    assert 1_000_000 < tree["bytes"] <= 5_000_000
    assert tree["files"] > 10


def test_ratios_follow_from_the_figures(smoke: tuple[dict[str, Any], str, Path]) -> None:
    report, _, _ = smoke
    tools, ratios = report["tools"], report["ratios"]
    assert set(ratios) == RATIOS
    ours, tar = tools["nydus-image"], tools["tar|zstd"]
    assert ratios["size_vs_tar_zstd"] == pytest.approx(
        ours["output_bytes"] / tar["output_bytes"], abs=1e-3
    )
    assert ratios["throughput_vs_tar_zstd"] == pytest.approx(
        ours["mb_per_s"] / tar["mb_per_s"], abs=0.01
    )


def test_second_version_reuses_the_dictionary(smoke: tuple[dict[str, Any], str, Path]) -> None:
    dedup = smoke[0]["dedup"]
    assert set(dedup) >= DEDUP
    assert 0.01 <= dedup["changed_fraction"] < 0.1
    assert dedup["chunks_from_dict"] > 0 and dedup["chunks_new"] > 0
    assert dedup["chunks_reused_fraction"] > 0.8
    assert 0 < dedup["v2_dict_blob_bytes"] < dedup["v2_full_blob_bytes"] / 4


def test_printed_report_and_clean_temp_dir(smoke: tuple[dict[str, Any], str, Path]) -> None:
    report, stdout, tmp = smoke
    for word in ("nydus-image", "tar|zstd", "mksquashfs", *RATIOS, "chunks_from_dict"):
        assert word in stdout
    assert report["machine"]["nproc"] >= 1 and report["machine"]["cpu_model"]
    assert not list(tmp.glob("nydus-bench-*"))  # its work dir is gone
