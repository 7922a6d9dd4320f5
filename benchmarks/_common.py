"""Pieces every benchmark script shares: stopping what it started, and its `main`.

The scripts run as `python benchmarks/NAME.py`, so this module is imported by its plain
name from the scripts' own directory.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any


class BenchmarkError(RuntimeError):
    """A tool failed or overran, or something needed is missing; the run stops."""


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally, so cleanup runs


def report_main(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    print_report: Callable[[dict[str, Any]], None],
) -> int:
    """Run, print the report, write it to `--out-json`; a failure is one line and exit 1."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        report = run(args)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print_report(report)
    if args.out_json:
        args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
