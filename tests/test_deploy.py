"""The deployment: docker-compose.yml and the Dockerfile agree with each other and with the
CLIs, and `make cluster` runs the same topology as processes on loopback.

`docker-compose config` (Debian's docker-compose; no engine needed) validates the file and
prints it resolved (anchors merged, variables filled in); the tests read that output. They
are skipped, with the reason printed, only where docker-compose is not installed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from peer.cli import _parser as dfdaemon_parser
from peer.cli import options_from
from supernode._database import normalize_url
from supernode.cli import _parser as supernode_parser
from supernode.cli import parse_listen

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"registry", "postgres", "supernode", "seed", "peer1", "peer2"}
DFDAEMONS = ("seed", "peer1", "peer2")


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("docker-compose")
    if found is None:
        reason = "docker-compose is not installed (Debian package docker-compose)"
        print(f"\nskipping: {reason}")
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NYDUS_MESH_", "POSTGRES_"))}
    return subprocess.run(
        [found, "-f", str(COMPOSE), *args], capture_output=True, text=True, env=env, check=False
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    done = _compose("config")
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = yaml.safe_load(done.stdout)
    return resolved


def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = config["services"]
    return found


def depends(service: dict[str, Any]) -> dict[str, str]:
    """{dependency: condition}, from either form of depends_on."""
    raw = service.get("depends_on", {})
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host IP, host port, container port) for each port, short or long syntax."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            *ip, host, target = str(port).split("/")[0].split(":")
            found.append((ip[0] if ip else "", int(host), int(target)))
    return found


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_file_is_valid() -> None:
    done = _compose("config", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_the_services_and_their_images(config: dict[str, Any]) -> None:
    found = services(config)
    assert set(found) == SERVICES
    assert found["registry"]["image"] == "registry:2"
    assert found["postgres"]["image"] == "postgres:15"
    targets = {name: s["build"]["target"] for name, s in found.items() if "build" in s}
    assert targets == {"supernode": "supernode", **dict.fromkeys(DFDAEMONS, "dfdaemon")}
    for name in targets:
        assert Path(found[name]["build"]["context"]) == ROOT, name


def test_start_order_waits_for_health(config: dict[str, Any]) -> None:
    found = services(config)
    healthy = "service_healthy"
    assert depends(found["supernode"]) == {"postgres": healthy}
    assert depends(found["seed"]) == {"registry": healthy, "supernode": healthy}
    for peer in ("peer1", "peer2"):
        assert depends(found[peer]) == {"supernode": healthy, "seed": healthy}
    for name in ("registry", "postgres"):
        assert depends(found[name]) == {}


def test_every_service_has_a_health_check_on_its_own_port(config: dict[str, Any]) -> None:
    found = services(config)
    for name, service in found.items():
        check = service["healthcheck"]
        assert check["test"][0] == "CMD", name
        assert check["interval"] and check["retries"] >= 3, name
    assert found["registry"]["healthcheck"]["test"][-1] == "http://127.0.0.1:5000/v2/"
    assert "pg_isready" in found["postgres"]["healthcheck"]["test"]
    port = parse_listen(option(found["supernode"]["command"], "--listen"))[1]
    assert found["supernode"]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{port}/healthz"
    for name in DFDAEMONS:
        port = parse_listen(option(found[name]["command"], "--listen"))[1]
        assert found[name]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{port}/healthz"


def test_the_supernode_command_parses_and_uses_postgresql(config: dict[str, Any]) -> None:
    supernode = services(config)["supernode"]
    args = supernode_parser().parse_args(supernode["command"])
    assert args.command == "serve"
    assert parse_listen(args.listen)[0] == "0.0.0.0"
    assert normalize_url(args.db).startswith("postgresql+asyncpg://nydus:")
    assert args.db.endswith("@postgres:5432/supernode")
    pg = services(config)["postgres"]["environment"]
    assert f"//{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@" in args.db
    assert supernode["environment"]["NYDUS_MESH_TOKEN"]


def test_dfdaemon_commands_parse_and_advertise_their_network_address(
    config: dict[str, Any],
) -> None:
    found = services(config)
    subnet = ipaddress.ip_network(config["networks"]["mesh"]["ipam"]["config"][0]["subnet"])
    token = found["supernode"]["environment"]["NYDUS_MESH_TOKEN"]
    addresses = set()
    for name in DFDAEMONS:
        service = found[name]
        options = options_from(dfdaemon_parser().parse_args(service["command"]))
        assert options.seed == (name == "seed"), name
        assert options.supernode == "http://supernode:8002", name
        assert options.host_name == name
        address = service["networks"]["mesh"]["ipv4_address"]
        assert options.advertise_host == address and ipaddress.ip_address(address) in subnet
        addresses.add(address)
        assert service["environment"]["NYDUS_MESH_TOKEN"] == token, name
        assert any(v.endswith(":/var/lib/dfdaemon:rw") or v.endswith(":/var/lib/dfdaemon")
                   for v in map(_volume, service["volumes"])), name  # fmt: skip
    assert len(addresses) == len(DFDAEMONS)


def test_peers_can_mount_with_fuse(config: dict[str, Any]) -> None:
    for name in ("peer1", "peer2"):
        service = services(config)[name]
        assert any(str(d).startswith("/dev/fuse") for d in service["devices"]), name
        assert "SYS_ADMIN" in service["cap_add"], name


def test_published_ports_are_loopback_and_distinct(config: dict[str, Any]) -> None:
    ports = [p for s in services(config).values() for p in published(s)]
    host_ports = [host for _, host, _ in ports]
    assert len(host_ports) == len(set(host_ports)) >= 5
    assert all(ip == "127.0.0.1" for ip, _, _ in ports)


def test_stateful_services_keep_data_in_named_volumes(config: dict[str, Any]) -> None:
    named = set(config["volumes"])
    for name in ("registry", "postgres", *DFDAEMONS):
        sources = {_volume(v).split(":")[0] for v in services(config)[name]["volumes"]}
        assert sources & named, name


def _volume(entry: object) -> str:
    if isinstance(entry, dict):
        return f"{entry['source']}:{entry['target']}"
    return str(entry)


# --- the Dockerfile --------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    """The instructions of each named stage (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        found = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if found:
            current = stages.setdefault(found.group(1), [])
        current.append(line.strip())
    return stages


def test_the_dockerfile_has_a_target_per_entrypoint(config: dict[str, Any]) -> None:
    stages = dockerfile_stages()
    for target, tool in (("supernode", "supernode"), ("dfdaemon", "dfdaemon")):
        entry = [i for i in stages[target] if i.startswith("ENTRYPOINT")]
        assert entry and json.loads(entry[0].removeprefix("ENTRYPOINT"))[-1] == tool
        assert any(i.startswith("HEALTHCHECK") and "/healthz" in i for i in stages[target])
    assert list(stages)[-1] == "dfdaemon"  # the default target
    assert "debian:12-slim" in DOCKERFILE.read_text()
    runtime = " ".join(stages["base"])
    assert "fuse3" in runtime and "curl" in runtime  # mounts; the health checks


def test_the_dockerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    build = " ".join(dockerfile_stages()["build"])
    for package in packages:
        assert f"COPY {package} " in build, package
    assert "pip install --no-cache-dir '.[fuse]'" in build


# --- make cluster ----------------------------------------------------------------------


def test_make_cluster_runs_the_compose_topology_and_stops_it(tmp_path: Path) -> None:
    if not Path("/usr/bin/docker-registry").exists():
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    work, log = tmp_path / "cluster-work", tmp_path / "cluster.out"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "cluster.py"), "--work", str(work)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        addresses, pids = _wait_for_addresses(process, work / "cluster.json", log)
        assert set(addresses) == SERVICES - {"postgres"}  # --postgres adds it
        assert _answers(addresses["registry"] + "/v2/")
        for name in ("supernode", *DFDAEMONS):
            assert _answers(addresses[name] + "/healthz"), name
        health = json.loads(urllib.request.urlopen(addresses["supernode"] + "/healthz").read())
        assert health["peers"] == len(DFDAEMONS)
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, log.read_text()
        for name, pid in pids.items():
            assert not Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) outlived Ctrl-C"
        assert str(work) not in Path("/proc/self/mounts").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _wait_for_addresses(
    process: subprocess.Popen[bytes], path: Path, log: Path
) -> tuple[dict[str, str], dict[str, int]]:
    deadline = time.monotonic() + 60
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"cluster.py exited {process.returncode}: {log.read_text()}")
        assert time.monotonic() < deadline, "cluster.py did not start in 60 s"
        time.sleep(0.1)
    state = json.loads(path.read_text())
    return state["services"], state["pids"]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True
