"""Mounts whose origin is a real registry: retried through faults, independent after prefetch."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.registry import RegistryServer, stop_registry

from .conftest import Mounter, build_image
from .test_mount import wait_prefetched


async def push_image_blobs(registry: RegistryServer, blobs: Path, repo: str) -> None:
    async with registry.client() as client:
        for blob in blobs.iterdir():
            await client.push_blob(repo, blob.read_bytes())


def backend_config(path: Path, host: str, repo: str) -> Path:
    config = {
        "device": {
            "backend": {
                "type": "registry",
                "config": {"host": host, "repo": repo, "scheme": "http"},
            }
        }
    }
    path.write_text(json.dumps(config))
    return path


def small_image(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{n}": os.urandom(90_000) for n in range(6)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    boot, blobs = build_image(src, tmp_path, "--chunk-size", "0x10000")
    return boot, blobs, files


async def test_registry_faults_are_retried_and_reads_recover(
    tmp_path: Path, mounter: Mounter, registry: RegistryServer
) -> None:
    boot, blobs, files = small_image(tmp_path)
    await push_image_blobs(registry, blobs, "faulty/blobs")
    async with FaultProxy(registry.host) as proxy:
        proxy.status(2, 500).reset(2).status(1, 503)
        config = backend_config(tmp_path / "backend.json", proxy.host, "faulty/blobs")
        m = await asyncio.to_thread(mounter.mount, "-B", str(boot), "--backend-config", str(config))
        for name, data in files.items():
            assert await asyncio.to_thread((m.mountpoint / name).read_bytes) == data
        actions = [a for _, _, a in proxy.seen]
    assert actions[:5] == ["status:500", "status:500", "reset:0", "reset:0", "status:503"]
    assert actions[5:] and set(actions[5:]) == {"pass"}


async def test_registry_stopped_after_prefetch_all_reads_still_succeed(
    tmp_path: Path, mounter: Mounter, registry: RegistryServer
) -> None:
    boot, blobs, files = small_image(tmp_path)
    await push_image_blobs(registry, blobs, "prefetched/blobs")
    config = backend_config(tmp_path / "backend.json", registry.host, "prefetched/blobs")
    m = await asyncio.to_thread(
        mounter.mount,
        "-B",
        str(boot),
        "--backend-config",
        str(config),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--prefetch-all",
    )
    await asyncio.to_thread(wait_prefetched, m.apisock)
    stop_registry(registry)  # the network is gone
    for name, data in files.items():
        assert await asyncio.to_thread((m.mountpoint / name).read_bytes) == data


async def test_a_slow_chunk_does_not_block_other_files(
    tmp_path: Path, mounter: Mounter, registry: RegistryServer
) -> None:
    boot, blobs, files = small_image(tmp_path)
    await push_image_blobs(registry, blobs, "slow/blobs")
    async with FaultProxy(registry.host) as proxy:
        config = backend_config(tmp_path / "backend.json", proxy.host, "slow/blobs")
        m = await asyncio.to_thread(mounter.mount, "-B", str(boot), "--backend-config", str(config))
        proxy.delay(1, 4.0)  # the next origin request hangs for 4 s
        slow = asyncio.create_task(asyncio.to_thread((m.mountpoint / "f0").read_bytes))
        while not proxy.seen:  # the slow read has reached the origin
            await asyncio.sleep(0.02)
        fast = await asyncio.to_thread((m.mountpoint / "f5").read_bytes)
        assert fast == files["f5"]
        assert not slow.done()  # f5 was served while f0's chunk was still on its way
        assert await slow == files["f0"]
