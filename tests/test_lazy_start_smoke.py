"""`benchmarks/lazy_start.py --small` runs end to end and reports every figure it promises.

A ~30 MB tree, one run: a registry, the paced proxy, skopeo + umoci, nydusd lazy mounts
and the squashfuse comparison all really run. Timings are not asserted (the machine is
shared); the figures' presence and their internal consistency are, and the run leaves no
mount, process or work dir behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.benchmark_runs import run_small

RUN_FIELDS = {"median_s", "runs_s", "median_steps_s", "link_bytes", "read_bytes", "metrics"}
LOCAL_FIELDS = {"read_first_mb_s", "read_warm_mb_s", "walk_cold_s", "walk_warm_s",
                "read_warm_runs_s", "walk_warm_runs_s"}  # fmt: skip
RATIOS = {
    "lazy_start_speedup",
    "lazy_start_speedup_prefetch",
    "warm_read_vs_squashfuse",
    "walk_speed_vs_squashfuse",
    "warm_read_vs_squashfuse_ll",
    "walk_speed_vs_squashfuse_ll",
    "targets_met",
}


def _missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not Path("/usr/bin/docker-registry").exists():
        return "docker-registry is not installed"
    for tool in ("skopeo", "umoci", "fusermount3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0 and not shutil.which("squashfuse"):
        return "squashfuse is not installed (the benchmark installs it only as root)"
    return None


pytestmark = [
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
    pytest.mark.timeout(240),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    return run_small("lazy_start.py", tmp_path_factory.mktemp("lazy"), timeout=180)


def test_tree_and_working_set(smoke: tuple[dict[str, Any], str, Path]) -> None:
    report = smoke[0]
    tree, ws = report["tree"], report["workset"]
    assert 20_000_000 < tree["bytes"] <= 30_000_000 and tree["files"] > 100
    assert set(tree["layers"]) == {"libs", "python", "app"}
    assert sum(tree["layers"].values()) == tree["bytes"]
    assert 0.06 <= ws["fraction"] < 0.2 and ws["files"] == ws["opened_files"] + ws["topup_files"]


def test_lazy_start_figures(smoke: tuple[dict[str, Any], str, Path]) -> None:
    lazy = smoke[0]["lazy_start"]
    for name in ("oci", "nydus", "nydus_prefetch"):
        run = lazy[name]
        assert set(run) >= RUN_FIELDS
        assert len(run["runs_s"]) == 1 and run["median_s"] > 0
        assert run["read_bytes"] == smoke[0]["workset"]["bytes"]
        assert run["link_bytes"] > 0 and run["metrics"]["cpu_s"] >= 0
    assert set(lazy["oci"]["median_steps_s"]) == {"skopeo_copy", "umoci_unpack", "read"}
    assert set(lazy["nydus"]["median_steps_s"]) == {"mounted", "read"}
    # the OCI path moves every layer over the link; the lazy one much less
    assert lazy["oci"]["link_bytes"] >= sum(lazy["oci_layer_bytes"])
    assert lazy["nydus"]["link_bytes"] < lazy["oci"]["link_bytes"]
    assert lazy["speedup"] == pytest.approx(
        lazy["oci"]["median_s"] / lazy["nydus"]["median_s"], abs=0.01
    )
    assert set(lazy["commands"]) == {"oci", "nydus", "nydus_prefetch", "convert"}


def test_local_figures_and_ratios(smoke: tuple[dict[str, Any], str, Path]) -> None:
    report = smoke[0]
    local, ratios = report["local"], report["ratios"]
    assert set(local["mounts"]) == {"nydusd", "squashfuse", "squashfuse_ll"}
    for figures in local["mounts"].values():
        assert set(figures) >= LOCAL_FIELDS
        assert figures["read_warm_mb_s"] > 0 and figures["walk_warm_s"] > 0
    assert local["entries"] > local["files"] > 0
    assert set(ratios) == RATIOS
    ours, sq = local["mounts"]["nydusd"], local["mounts"]["squashfuse"]
    assert ratios["warm_read_vs_squashfuse"] == pytest.approx(
        ours["read_warm_mb_s"] / sq["read_warm_mb_s"], abs=0.01
    )
    assert set(ratios["targets_met"]) == {"lazy_start_10x", "warm_read_1x", "walk_0.5x"}


def test_report_and_nothing_left_behind(smoke: tuple[dict[str, Any], str, Path]) -> None:
    report, stdout, tmp = smoke
    for word in ("lazy start", "speedup", "squashfuse", "nydusd", *RATIOS):
        assert word in stdout
    assert report["machine"]["nproc"] >= 1 and report["machine"]["cpu_model"]
    assert not list(tmp.glob("nydus-lazy-*"))  # the work dir is gone
    with open("/proc/self/mountinfo") as f:
        assert str(tmp) not in f.read()  # every mount under it is gone
