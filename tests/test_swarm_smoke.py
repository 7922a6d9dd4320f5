"""`benchmarks/swarm.py --small` runs every mode end to end and reports every figure.

Three peers and an 8 MiB blob, one run of each mode (mesh, direct, aria2) in network
namespaces the benchmark makes and deletes. Timings are not asserted (the machine is
shared); the figures' presence and their consistency are, and no namespace is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "swarm.py"
RUN_FIELDS = {"last_peer_s", "peer_s", "origin_egress_bytes", "origin_egress_payload_bytes",
              "egress_ratio", "egress_ratio_payload"}  # fmt: skip
MODE_FIELDS = {"runs", "median_last_peer_s", "median_egress_ratio", "median_egress_ratio_payload"}
TOP_FIELDS = {"date", "machine", "peers", "size_mb", "blob_bytes", "floor_s", "modes",
              "load_before", "load_after", "targets", "netns_prefix"}  # fmt: skip


def _netns_permitted() -> str | None:
    name = f"nmsw-probe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, FUSE)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    for tool in ("ip", "tc", "nsenter", "curl", "docker-registry", "fusermount3", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return _netns_permitted()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = _missing()
    if reason:
        print(f"skipping the swarm smoke test: {reason}")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("swarm") / "swarm.json"
    argv = [sys.executable, str(SCRIPT), "--small", "--mode", "all", "--out-json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    if done.returncode != 0 and "missing tools" in done.stderr:
        print(f"skipping the swarm smoke test: {done.stderr.strip()}")
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr[-3000:]
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_the_report_has_every_field(report: dict[str, Any]) -> None:
    assert set(report) >= TOP_FIELDS
    assert set(report["modes"]) == {"mesh", "direct", "aria2"}
    for mode, summary in report["modes"].items():
        assert set(summary) >= MODE_FIELDS, mode
        for run in summary["runs"]:
            assert set(run) >= RUN_FIELDS, mode
            assert len(run["peer_s"]) == report["peers"] == 3
            assert run["last_peer_s"] == max(run["peer_s"]) > 0
            assert run["origin_egress_bytes"] >= report["blob_bytes"]  # the blob left once
    assert {"mesh_egress_at_most_1_05x", "mesh_faster_than_aria2"} <= set(report["targets"])


def test_direct_sends_the_blob_once_per_peer(report: dict[str, Any]) -> None:
    ratio = report["modes"]["direct"]["median_egress_ratio"]
    assert 3.0 <= ratio < 3.3


def test_no_namespace_is_left_behind(report: dict[str, Any]) -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert report["netns_prefix"] + "-" not in listed
