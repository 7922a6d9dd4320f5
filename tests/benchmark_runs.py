"""Running a benchmark script on its small input, as the smoke tests do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_small(script: str, tmp: Path, timeout: float) -> tuple[dict[str, Any], str, Path]:
    """`benchmarks/SCRIPT --small --runs 1`, its temp files under `tmp`: the JSON report,
    what it printed, and `tmp`. A failed run fails the test with its stderr."""
    out = tmp / "report.json"
    args = ["--small", "--runs", "1", "--out-json", str(out), "--tmp", str(tmp)]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout, tmp
