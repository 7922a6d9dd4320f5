"""Pieces every benchmark script shares: stopping what it started, its `main`, the CPU
time of the processes it measures, the machine it ran on, a daemon's counters.

The scripts run as `python benchmarks/NAME.py`, so this module is imported by its plain
name from the scripts' own directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
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


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a live process has used (from /proc/PID/stat); OSError
    (FileNotFoundError) once it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def children_cpu() -> float:
    """User + system CPU seconds of this process's children that have been waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.date.today().isoformat(),
    }


def metric_values(text: str, prefix: str, wanted: Iterable[str]) -> dict[str, float]:
    """The `wanted` samples (names without `prefix`) of a Prometheus text exposition."""
    names = set(wanted)
    found = {}
    for line in text.splitlines():
        metric, _, value = line.partition(" ")
        short = metric.removeprefix(prefix)
        if short in names:
            found[short] = float(value)
    return found
