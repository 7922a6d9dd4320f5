"""Builder throughput: `nydus-image create` against mksquashfs and tar | zstd, same tree.

A few hundred MB of a real tree (by default the first files of /usr/share in name order)
are copied into a temp dir, read once so every tool is measured with a warm page cache,
then each tool packs it `--runs` times, interleaved. Reported per tool: median wall time,
input throughput, CPU time and output size, and our ratios to the other two. Then a
second version of the tree (about 2% of its bytes changed, added or removed) is built
with `--chunk-dict` of the first bootstrap, to show how much of it is stored again.

Every tool runs as a subprocess with a timeout, in its own process group that is killed
if it overruns; the temp dir is removed at the end, also on Ctrl-C or SIGTERM.

    .venv/bin/python benchmarks/build.py [--tree /usr/share] [--max-mb 400] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import BenchmarkError, children_cpu, machine, report_main

MB = 1_000_000
TOOLS = ("nydus-image", "tar|zstd", "mksquashfs")
CHANGED = 0.02  # share of the tree's bytes (by file size) the second version touches
DEDUP_FIELDS = ("chunks_new", "chunks_deduped", "chunks_from_dict", "blob_compressed_size")


# --- the tree ------------------------------------------------------------------------


@dataclass
class TreeStats:
    source: str
    bytes: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0


def copy_selection(src: Path, dest: Path, cap: int) -> TreeStats:
    """Copy dirs, symlinks and regular files of `src` in name order, up to `cap` bytes."""
    stats = TreeStats(str(src))
    links: dict[tuple[int, int], Path] = {}
    dest.mkdir()
    for path, st in _walk(src):
        if stat.S_ISREG(st.st_mode) and stats.bytes + st.st_size > cap:
            break
        _copy_entry(path, st, dest / path.relative_to(src), links, stats)
    return stats


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        yield Path(entry.path), st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(Path(entry.path))


def _copy_entry(
    path: Path,
    st: os.stat_result,
    target: Path,
    links: dict[tuple[int, int], Path],
    stats: TreeStats,
) -> None:
    if not target.parent.is_dir():
        return  # its directory was not readable
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(path), target)
        stats.symlinks += 1
    elif stat.S_ISDIR(st.st_mode) and os.access(path, os.R_OK | os.X_OK):
        target.mkdir()
        stats.dirs += 1
    elif stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK):
        _copy_file(path, st, target, links, stats)


def _copy_file(
    path: Path,
    st: os.stat_result,
    target: Path,
    links: dict[tuple[int, int], Path],
    stats: TreeStats,
) -> None:
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in links:
        os.link(links[key], target)  # a hardlink stays one
        return
    shutil.copy2(path, target)
    links[key] = target
    stats.files += 1
    stats.bytes += st.st_size


def warm(tree: Path) -> int:
    """Read every file once so each tool finds the tree in the page cache."""
    total = 0
    buf = bytearray(1 << 20)
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


# --- running a tool ----------------------------------------------------------------


@dataclass
class Timing:
    wall: float
    cpu: float


def timed(commands: list[list[str]], timeout: float) -> Timing:
    """Wall time and the CPU time (user + system) of the pipeline's processes."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    run_pipeline(commands, timeout)
    return Timing(time.perf_counter() - t0, children_cpu() - cpu0)


def run_pipeline(commands: list[list[str]], timeout: float) -> None:
    """Run `a | b | ...` in one new process group; kill the group if it overruns."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n, cmd in enumerate(commands):
            upstream = procs[-1].stdout if procs else None
            last = n == len(commands) - 1
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdin=upstream or subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                    process_group=procs[0].pid if procs else 0,
                )
            )
            if upstream is not None:
                upstream.close()  # the reader holds it now; tar sees EPIPE if zstd dies
        _wait_all(procs, commands, time.monotonic() + timeout)
    finally:
        _kill_group(procs)


def _wait_all(
    procs: list[subprocess.Popen[bytes]], commands: list[list[str]], deadline: float
) -> None:
    for proc, cmd in zip(procs, commands, strict=True):
        try:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"{shown([cmd])} timed out") from None
        if code != 0:
            raise BenchmarkError(f"{shown([cmd])} exited with {code}")


def _kill_group(procs: list[subprocess.Popen[bytes]]) -> None:
    if procs and any(p.poll() is None for p in procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(procs[0].pid, signal.SIGKILL)
        for p in procs:
            p.wait()


# --- the three tools -----------------------------------------------------------------


def nydus_image() -> str:
    here = Path(sys.executable).parent / "nydus-image"
    found = str(here) if here.exists() else shutil.which("nydus-image")
    if found is None:
        raise BenchmarkError("nydus-image not found next to this Python or on PATH")
    return found


def ours_command(tree: Path, out: Path, chunk_dict: Path | None = None) -> list[str]:
    cmd = [nydus_image(), "create", "--bootstrap", str(out / "bootstrap")]
    cmd += ["--blob-dir", str(out / "blobs"), "--output-json", str(out / "build.json")]
    if chunk_dict is not None:
        cmd += ["--chunk-dict", str(chunk_dict)]
    return [*cmd, str(tree)]


def tool_commands(name: str, tree: Path, out: Path) -> list[list[str]]:
    if name == "nydus-image":
        return [ours_command(tree, out)]
    if name == "tar|zstd":
        tar = ["tar", "-cf", "-", "-C", str(tree), "."]
        return [tar, ["zstd", "-T0", "-3", "-q", "-o", str(out / "tree.tar.zst")]]
    return [
        ["mksquashfs", str(tree), str(out / "tree.sqfs"), "-comp", "zstd", "-noappend", "-quiet"]
    ]


def shown(commands: list[list[str]]) -> str:
    return " | ".join(" ".join(c) for c in commands)


def output_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.suffix != ".json")


# --- measuring -------------------------------------------------------------------------


@dataclass
class ToolResult:
    name: str
    command: str
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    output_bytes: int = 0
    median_s: float = 0.0
    median_cpu_s: float = 0.0
    mb_per_s: float = 0.0


def measure(
    tree: Path, work: Path, tree_bytes: int, runs: int, timeout: float
) -> dict[str, ToolResult]:
    """Run each tool `runs` times, interleaved, so a noisy neighbour hits all of them."""
    results = {n: ToolResult(n, shown(tool_commands(n, tree, Path("OUT")))) for n in TOOLS}
    for run in range(runs):
        for name in TOOLS:
            out = _fresh(work / f"out-{name.replace('|', '-')}")
            t = timed(tool_commands(name, tree, out), timeout)
            results[name].wall_s.append(round(t.wall, 3))
            results[name].cpu_s.append(round(t.cpu, 3))
            results[name].output_bytes = output_bytes(out)
            print(f"  run {run + 1}/{runs} {name:<12} {t.wall:8.2f} s", file=sys.stderr)
    for r in results.values():
        r.median_s = statistics.median(r.wall_s)
        r.median_cpu_s = statistics.median(r.cpu_s)
        r.mb_per_s = round(tree_bytes / MB / r.median_s, 1)
    return results


def check_ours(out: Path, timeout: float) -> None:
    """Untimed: the image we timed reads back and every chunk matches its digest."""
    boot, blobs = str(out / "bootstrap"), str(out / "blobs")
    run_pipeline([[nydus_image(), "check", "--bootstrap", boot, "--blob-dir", blobs]], timeout)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def ratios(results: dict[str, ToolResult]) -> dict[str, float]:
    ours, tar, sq = (results[n] for n in TOOLS)
    return {
        "throughput_vs_tar_zstd": round(ours.mb_per_s / tar.mb_per_s, 2),
        "throughput_vs_mksquashfs": round(ours.mb_per_s / sq.mb_per_s, 2),
        "size_vs_tar_zstd": round(ours.output_bytes / tar.output_bytes, 3),
        "size_vs_mksquashfs": round(ours.output_bytes / sq.output_bytes, 3),
    }


# --- the second version and the chunk dictionary --------------------------------------


@dataclass
class Mutation:
    modified: int = 0
    added: int = 0
    removed: int = 0
    touched_bytes: int = 0  # sizes of the files modified, added and removed


def mutate(tree: Path, budget: float, seed: int = 7) -> Mutation:
    """Modify, add and remove random files (not hardlinked) whose sizes add up to `budget`.

    Files that would overshoot are passed over, so a few big files cannot blow the budget.
    """
    rng = random.Random(seed)
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    sizes = {p: p.stat().st_size for p in files if p.stat().st_nlink == 1}
    files = [p for p in files if sizes.get(p, 0) > 0]
    rng.shuffle(files)
    kinds = itertools.cycle(range(5))
    done = Mutation()
    for path in files:
        if done.touched_bytes + sizes[path] <= budget:
            _mutate_one(path, sizes[path], next(kinds), rng, done)
    return done


def _mutate_one(path: Path, size: int, kind: int, rng: random.Random, done: Mutation) -> None:
    if kind < 3:  # a few bytes patched in place
        patch = rng.randbytes(min(64, size))
        with open(path, "r+b") as f:
            f.seek(rng.randrange(size - len(patch) + 1))
            f.write(patch)
        done.modified += 1
    elif kind == 3:
        path.unlink()
        done.removed += 1
    else:  # a new file next to it: the same content behind a new header
        new = path.with_name(path.name + ".v2")
        new.write_bytes(b"# version 2\n" + path.read_bytes())
        done.added += 1
        size += 12
    done.touched_bytes += size


def dedup(tree: Path, tree_bytes: int, work: Path, first: Path, timeout: float) -> dict[str, Any]:
    """Build a changed copy of `tree` alone and with `--chunk-dict` of its build in `first`."""
    v2 = work / "tree-v2"
    copy_selection(tree, v2, cap=tree_bytes)  # all of it, hardlinks kept
    change = mutate(v2, CHANGED * tree_bytes)
    base: dict[str, Any] = json.loads((first / "build.json").read_text())
    full = _build(v2, _fresh(work / "v2-full"), None, timeout)
    with_dict = _build(v2, _fresh(work / "v2-dict"), first / "bootstrap", timeout)
    refs = with_dict["chunks_new"] + with_dict["chunks_deduped"]
    return {
        "mutation": asdict(change),
        "changed_fraction": round(change.touched_bytes / max(tree_bytes, 1), 4),
        "v1_blob_bytes": base["blob_compressed_size"],
        "v2_full_blob_bytes": full["blob_compressed_size"],
        "v2_dict_blob_bytes": with_dict["blob_compressed_size"],
        "v2_dict_blob_vs_full": _ratio(
            with_dict["blob_compressed_size"], full["blob_compressed_size"]
        ),
        "chunks_reused_fraction": _ratio(with_dict["chunks_from_dict"], refs),
        **{k: with_dict[k] for k in DEDUP_FIELDS},
        "command": shown([ours_command(Path("TREE_V2"), Path("OUT"), Path("V1/bootstrap"))]),
    }


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _build(tree: Path, out: Path, chunk_dict: Path | None, timeout: float) -> dict[str, Any]:
    run_pipeline([ours_command(tree, out, chunk_dict)], timeout)
    summary: dict[str, Any] = json.loads((out / "build.json").read_text())
    return summary


# --- the report ------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    tree = report["tree"]
    print(f"tree: {tree['source']} selection, {tree['bytes'] / MB:.1f} MB in {tree['files']} files")
    print(f"{'tool':<12} {'median s':>9} {'MB/s':>8} {'cpu s':>8} {'output MB':>10}")
    for r in report["tools"].values():
        print(
            f"{r['name']:<12} {r['median_s']:>9.2f} {r['mb_per_s']:>8.1f}"
            f" {r['median_cpu_s']:>8.2f} {r['output_bytes'] / MB:>10.1f}"
        )
    load = report["load_avg"]
    print(f"load average before/after: {load['before']} / {load['after']}")
    for key, value in report["ratios"].items():
        print(f"{key}: {value}")
    for key, value in report["dedup"].items():
        print(f"dedup {key}: {value}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    cap = int(args.max_mb * MB)
    with tempfile.TemporaryDirectory(prefix="nydus-bench-", dir=args.tmp) as tmp:
        work = Path(tmp)
        tree = work / "tree"
        stats = copy_selection(args.tree, tree, cap)
        if stats.bytes == 0:
            raise BenchmarkError(f"no readable file content under {args.tree}")
        warm(tree)
        load_before = [round(x, 2) for x in os.getloadavg()]
        results = measure(tree, work, stats.bytes, args.runs, args.timeout)
        load_after = [round(x, 2) for x in os.getloadavg()]
        check_ours(work / "out-nydus-image", args.timeout)
        report = {
            "argv": sys.argv,
            "machine": machine(),
            "tree": asdict(stats),
            "runs": args.runs,
            # 1/5/15-minute load averages around the timed runs: on a shared machine
            # they say how far the wall times can be trusted
            "load_avg": {"before": load_before, "after": load_after},
            "page_cache": "warm (tree read once before timing)",
            "checked": "nydus-image check passed on the timed image",
            "tools": {n: asdict(r) for n, r in results.items()},
            "ratios": ratios(results),
            "dedup": dedup(tree, stats.bytes, work, work / "out-nydus-image", args.timeout),
        }
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tree", type=Path, default=Path("/usr/share"), help="real tree to copy from")
    p.add_argument("--max-mb", type=float, default=400.0, help="size cap of the copied tree")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out-json", type=Path)
    p.add_argument("--small", action="store_true", help="smoke run on a ~5 MB tree")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per tool run")
    p.add_argument("--tmp", type=Path, help="where the temp dir goes (default: $TMPDIR)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.max_mb <= 0 or args.timeout <= 0:
        p.error("--runs, --max-mb and --timeout must be positive")
    if args.small:
        args.max_mb = 5.0
    return args


def main(argv: list[str] | None = None) -> int:
    return report_main(parse_args(argv), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
