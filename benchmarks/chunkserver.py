"""Chunk server throughput: dfdaemon's chunk server against nginx serving the same chunks.

One chunk set (default 256 MiB of random bytes as a Nydus blob of 1 MiB chunks, made with
`nydus-image create`) is laid out twice:

- in a dfdaemon chunk cache (`rafs._cache.BlobCache`, each chunk verified on the way in),
  served by a real `dfdaemon` process on 127.0.0.1 (its supernode address answers nothing,
  so it only serves) as `GET /api/v1/blobs/B/chunks?start=i&end=i+1`;
- as one file per chunk (the stored bytes, what a frame carries) under an nginx root,
  served as `GET /B/i` (nginx, `sendfile on`, `worker_processes 1`, access log off).

`wrk` with one thread and C connections (default 16) fetches every chunk in turn for D
seconds from each server, alternating, R times (default 3); throughput is response bytes
over time (MB/s, 10^6 bytes). The figure is the ratio of medians, ours / nginx (target at
least 0.7). The CPU time each server used during a run (user + system, from /proc, nginx's
worker included) gives a second ratio, MB per server CPU-second, that a busy machine moves
less than wall-clock throughput. A second pair fetches runs of 16 chunks per request from
dfdaemon (its normal batch) against the same 16 files fetched one by one from nginx. Both
servers get one process (dfdaemon is one event loop); the machine's load is recorded.

Tools it lacks (nginx, wrk) are installed with apt-get when root. Both servers are
stopped and the work dir removed in `finally`.

    .venv/bin/python benchmarks/chunkserver.py [--size-mb 256] [--runs 3] [--seconds 10]
        [--connections 16] [--out-json F] [--small]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import process_cpu, stop_process

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peer import entries_from_bootstrap  # noqa: E402
from rafs._cache import BlobCache  # noqa: E402
from rafs._chunksource import BlobRef, verify_chunk  # noqa: E402
from rafs._load import load_bootstrap  # noqa: E402

BIN = Path(sys.executable).parent
RUN_CHUNKS = 16
TOOLS = {"nginx": "nginx-light", "wrk": "wrk"}
WRK_SCRIPT = """
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"bytes": %%d, "requests": %%d, "duration_us": %%d, ' ..
    '"errors": %%d}\\n', summary.bytes, summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""
NGINX_CONF = """
worker_processes 1;
pid %(work)s/nginx.pid;
error_log %(work)s/nginx-error.log warn;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types { }
  default_type application/octet-stream;
  client_body_temp_path %(work)s/tmp;
  proxy_temp_path %(work)s/tmp;
  fastcgi_temp_path %(work)s/tmp;
  uwsgi_temp_path %(work)s/tmp;
  scgi_temp_path %(work)s/tmp;
  server {
    listen 127.0.0.1:%(port)d;
    root %(root)s;
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


# --- the chunk set, twice -------------------------------------------------------------


def make_chunks(work: Path, size_mb: int) -> tuple[str, int, int]:
    """A blob of 1 MiB chunks in a dfdaemon cache and as files: (blob id, chunks, bytes)."""
    src = work / "src"
    src.mkdir()
    with open(src / "data.bin", "wb") as out:
        for _ in range(size_mb):
            out.write(os.urandom(1 << 20))
    boot_path, blobs = work / "image.boot", work / "blobs"
    argv = [str(BIN / "nydus-image"), "create", "-B", str(boot_path), "-D", str(blobs), str(src)]
    subprocess.run(argv, check=True, capture_output=True, timeout=900)
    shutil.rmtree(src)
    boot = load_bootstrap(boot_path)
    (entry,) = list(entries_from_bootstrap(boot, lambda blob_id: ""))
    ref = BlobRef.of(boot, 0)
    files = work / "www" / ref.blob_id
    files.mkdir(parents=True)
    total = 0
    with open(blobs / ref.blob_id, "rb") as blob, BlobCache(work / "cache") as cache:
        for index in sorted(entry.chunks):
            info = entry.chunks[index]
            stored = os.pread(blob.fileno(), info.compressed_size, info.compressed_offset)
            cache.put_many(ref, [verify_chunk(ref, info, stored)])
            (files / str(index)).write_bytes(stored)
            total += len(stored)
    shutil.rmtree(blobs)
    return ref.blob_id, len(entry.chunks), total


# --- the servers and the client -------------------------------------------------------


def start_dfdaemon(work: Path, port: int, connections: int) -> subprocess.Popen[bytes]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the daemon only serves
    argv = [str(BIN / "dfdaemon"), "--supernode", dead, "--listen", f"127.0.0.1:{port}",
            "--data-dir", str(work / "daemon"), "--cache-dir", str(work / "cache"),
            "--upload-slots", str(max(64, connections * 2)), "--log-level", "error"]  # fmt: skip
    with open(work / "dfdaemon.log", "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/healthz", process)
    return process


def start_nginx(work: Path, port: int) -> subprocess.Popen[bytes]:
    (work / "tmp").mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF % {"work": work, "port": port, "root": work / "www"})
    with open(work / "nginx.log", "ab") as log:
        argv = ["nginx", "-c", str(conf), "-e", str(work / "nginx-error.log")]
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    _wait_port(port, process)
    return process


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def wrk(work: Path, url: str, paths: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One wrk run over the paths; bytes, requests and MB/s."""
    listing = work / "paths.txt"
    listing.write_text("\n".join(paths) + "\n")
    script = work / "paths.lua"
    script.write_text(WRK_SCRIPT % {"paths": listing})
    argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "10s",
            "-s", str(script), url]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout} {done.stderr}")
    result: dict[str, Any] = json.loads(lines[0].removeprefix("RESULT "))
    if result["errors"]:
        raise RuntimeError(f"wrk saw {result['errors']} errors against {url}")
    result["mb_s"] = round(result["bytes"] / result["duration_us"], 2)  # bytes/us = MB/s
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (nginx's worker), from /proc."""
    try:
        own = process_cpu(pid)
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return 0.0
    return own + sum(cpu_seconds(int(child)) for child in children)


def timed_wrk(
    work: Path, port: int, pid: int, paths: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """One wrk run, with the CPU time the server used during it (load-independent-ish)."""
    before = cpu_seconds(pid)
    result = wrk(work, f"http://127.0.0.1:{port}", paths, args)
    cpu = cpu_seconds(pid) - before
    result["server_cpu_s"] = round(cpu, 2)
    result["mb_per_cpu_s"] = round(result["bytes"] / 1e6 / cpu, 1) if cpu else None
    return result


def measure(work: Path, blob_id: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    ours_port, nginx_port = free_port(), free_port()
    api = f"/api/v1/blobs/{blob_id}/chunks"
    cases = {
        "dfdaemon_1_chunk": (ours_port, [f"{api}?start={i}&end={i + 1}" for i in range(count)]),
        "nginx_1_chunk": (nginx_port, [f"/{blob_id}/{i}" for i in range(count)]),
        "dfdaemon_16_chunks": (
            ours_port,
            [f"{api}?start={i}&end={min(i + RUN_CHUNKS, count)}" for i in range(0, count, 16)],
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    servers = [start_dfdaemon(work, ours_port, args.connections), start_nginx(work, nginx_port)]
    pids = {ours_port: servers[0].pid, nginx_port: servers[1].pid}
    try:
        for number in range(args.runs):
            for name, (port, paths) in cases.items():
                runs[name].append(timed_wrk(work, port, pids[port], paths, args))
                print(f"chunkserver: run {number + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    finally:
        for process in servers:
            stop_process(process)
    return summarize(runs)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per case, and ours / nginx by throughput and by bytes per server CPU-second."""
    medians = {name: statistics.median(r["mb_s"] for r in found) for name, found in runs.items()}
    per_cpu = {
        name: statistics.median(r["mb_per_cpu_s"] or 0.0 for r in found)
        for name, found in runs.items()
    }
    nginx, nginx_cpu = medians["nginx_1_chunk"], per_cpu["nginx_1_chunk"] or float("nan")
    return {
        "runs": runs,
        "median_mb_s": medians,
        "median_mb_per_cpu_s": per_cpu,
        "ratio_1_chunk": round(medians["dfdaemon_1_chunk"] / nginx, 3),
        "ratio_16_chunks": round(medians["dfdaemon_16_chunks"] / nginx, 3),
        "cpu_ratio_1_chunk": round(per_cpu["dfdaemon_1_chunk"] / nginx_cpu, 3),
        "cpu_ratio_16_chunks": round(per_cpu["dfdaemon_16_chunks"] / nginx_cpu, 3),
    }


def ensure_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", *(TOOLS[t] for t in missing)],
                       env=env, capture_output=True, timeout=600)  # fmt: skip
        missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"chunkserver: missing tools: {', '.join(missing)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=256, help="chunk set size in MiB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=int, default=10, help="length of one wrk run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--small", action="store_true", help="smoke: 16 MiB, 1 run of 2 s")
    p.add_argument("--out-json", type=Path)
    args = p.parse_args(argv)
    if args.small:
        args.size_mb, args.runs, args.seconds = 16, 1, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="chunkserver-"))
    work.chmod(0o755)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "size_mb": args.size_mb,
        "connections": args.connections,
        "seconds": args.seconds,
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        blob_id, count, total = make_chunks(work, args.size_mb)
        report.update(chunks=count, chunk_bytes=total)
        report.update(measure(work, blob_id, count, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report["target_met"] = report["ratio_1_chunk"] >= 0.7
    text = json.dumps(report, indent=2)
    if args.out_json:
        args.out_json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
