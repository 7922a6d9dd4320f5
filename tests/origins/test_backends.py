"""Blob backends: a directory, a real registry and a real S3-compatible server (moto), each
reading exact ranges and naming a missing blob or a range past the end."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from rafs import BlobMissing
from rafs._backends import BlobRangeError, LocalDirBackend, RegistryBackend
from rafs._chunksource import BlobBackend
from rafs._s3 import S3Backend, S3Error
from tests.fixtures.registry import RegistryServer
from tests.fixtures.s3 import S3Server

from .blobs import random_blob_id

DATA = os.urandom(300_000)
BLOB_ID = hashlib.sha256(DATA).hexdigest()
RANGES = [(0, 1), (0, 300_000), (65_536, 65_536), (299_990, 10), (123, 0)]


async def _reads_exact_ranges(backend: BlobBackend) -> None:
    assert await backend.blob_size(BLOB_ID) == len(DATA)
    for offset, length in RANGES:
        assert await backend.read(BLOB_ID, offset, length) == DATA[offset : offset + length]


async def _names_the_missing_blob(backend: BlobBackend) -> None:
    missing = random_blob_id()
    with pytest.raises(BlobMissing, match=missing):
        await backend.read(missing, 0, 10)
    with pytest.raises(BlobMissing, match=missing):
        await backend.blob_size(missing)


# --- directory -------------------------------------------------------------------------


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    (tmp_path / BLOB_ID).write_bytes(DATA)
    return tmp_path


async def test_local_dir_reads_exact_ranges(blob_dir: Path) -> None:
    backend = LocalDirBackend(blob_dir)
    await _reads_exact_ranges(backend)
    await _names_the_missing_blob(backend)
    await backend.close()


async def test_local_dir_range_past_the_end(blob_dir: Path) -> None:
    with pytest.raises(BlobRangeError) as info:
        await LocalDirBackend(blob_dir).read(BLOB_ID, 299_000, 2000)
    assert (info.value.offset, info.value.length, info.value.size) == (299_000, 2000, 300_000)
    assert BLOB_ID in str(info.value) and "it has 300000 bytes" in str(info.value)


@pytest.mark.parametrize("bad", ["../etc/passwd", "ABC", "a" * 63, "/" + "a" * 64])
async def test_local_dir_refuses_ids_that_are_not_digests(blob_dir: Path, bad: str) -> None:
    with pytest.raises(BlobMissing, match="not a blob id"):
        await LocalDirBackend(blob_dir).read(bad, 0, 1)


# --- registry --------------------------------------------------------------------------


async def test_registry_backend_reads_exact_ranges(registry: RegistryServer) -> None:
    client = registry.client()
    assert await client.push_blob("blobs/repo", DATA) == "sha256:" + BLOB_ID
    backend = RegistryBackend(client, "blobs/repo", own_client=True)
    await _reads_exact_ranges(backend)
    await _names_the_missing_blob(backend)
    await backend.close()
    assert client._session is None  # owned: closed with the backend


# --- S3 (moto server) ------------------------------------------------------------------


@pytest_asyncio.fixture
async def s3_backend(s3_server: S3Server) -> AsyncIterator[S3Backend]:
    bucket = s3_server.new_bucket_name()
    backend = S3Backend(bucket, prefix="nydus/", endpoint_url=s3_server.endpoint_url,
                        access_key_id=s3_server.access_key_id,
                        secret_access_key=s3_server.secret_access_key, max_attempts=2)  # fmt: skip
    client = await backend._s3()
    await client.create_bucket(Bucket=bucket)
    try:
        yield backend
    finally:
        await backend.close()


async def test_s3_reads_exact_ranges(s3_backend: S3Backend) -> None:
    await s3_backend.put_blob(BLOB_ID, DATA)
    await _reads_exact_ranges(s3_backend)
    await _names_the_missing_blob(s3_backend)
    client = await s3_backend._s3()
    listed = await client.list_objects_v2(Bucket=s3_backend.bucket)
    assert [o["Key"] for o in listed["Contents"]] == [f"nydus/{BLOB_ID}"]


async def test_s3_range_past_the_end(s3_backend: S3Backend) -> None:
    await s3_backend.put_blob(BLOB_ID, DATA)
    with pytest.raises(BlobRangeError, match=BLOB_ID):
        await s3_backend.read(BLOB_ID, 400_000, 10)
    with pytest.raises(BlobRangeError, match=BLOB_ID):
        await s3_backend.read(BLOB_ID, 299_000, 2000)  # S3 answers what it has: short


async def test_s3_missing_bucket_names_bucket_and_key(s3_server: S3Server) -> None:
    backend = S3Backend("no-such-bucket", endpoint_url=s3_server.endpoint_url,
                        access_key_id=s3_server.access_key_id,
                        secret_access_key=s3_server.secret_access_key)  # fmt: skip
    try:
        with pytest.raises(S3Error) as info:
            await backend.read(BLOB_ID, 0, 10)
    finally:
        await backend.close()
    assert info.value.code == "NoSuchBucket" and info.value.key == BLOB_ID
    assert "bucket no-such-bucket" in str(info.value)
