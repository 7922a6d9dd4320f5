"""S3-compatible object storage as a blob backend (aiobotocore): blob `X` is the object
`<prefix>X` in one bucket, ranges are read with `Range: bytes=a-b`.

The rule it keeps: botocore's exceptions become rafs errors in one place (`_translated`):
a missing object is `BlobMissing`, a range past the end `BlobRangeError`, anything else
`S3Error` naming bucket, key and the service's error code. Retries are botocore's own
("standard" mode, bounded by `max_attempts`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from ._backends import BlobRangeError, check_blob_id
from ._errors import BlobMissing, RafsError

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class S3Error(RafsError):
    """The object store refused or failed a request."""

    def __init__(self, message: str, *, bucket: str, key: str, code: str = "") -> None:
        super().__init__(f"{message} (bucket {bucket}, key {key}{', ' + code if code else ''})")
        self.bucket = bucket
        self.key = key
        self.code = code


class S3Backend:
    """Blobs in one bucket of an S3-compatible store."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "config": AioConfig(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                s3={"addressing_style": "path"},
            ),
        }
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()
        self.requests = 0

    def key(self, blob_id: str) -> str:
        return self.prefix + check_blob_id(blob_id)

    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        key = self.key(blob_id)
        client = await self._s3()
        with self._translated(blob_id, key, (offset, length)):
            self.requests += 1
            reply = await client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            async with reply["Body"] as body:
                data: bytes = await body.read()
        if len(data) != length:
            raise BlobRangeError(blob_id, offset, length, None)
        return data

    async def blob_size(self, blob_id: str) -> int:
        key = self.key(blob_id)
        client = await self._s3()
        with self._translated(blob_id, key):
            self.requests += 1
            reply = await client.head_object(Bucket=self.bucket, Key=key)
        return int(reply["ContentLength"])

    async def put_blob(self, blob_id: str, data: bytes) -> None:
        """Store a whole blob (seeding a bucket; a builder's upload)."""
        key = self.key(blob_id)
        client = await self._s3()
        with self._translated(blob_id, key):
            self.requests += 1
            await client.put_object(Bucket=self.bucket, Key=key, Body=data)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                maker = get_session().create_client("s3", **self._client_args)
                self._client = await self._stack.enter_async_context(maker)
        return self._client

    @contextlib.contextmanager
    def _translated(
        self, blob_id: str, key: str, range: tuple[int, int] | None = None
    ) -> Iterator[None]:
        """The one place botocore's exceptions become rafs errors."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _MISSING:
                raise BlobMissing(f"blob {blob_id} not in s3://{self.bucket}/{key}") from None
            if code == "InvalidRange" and range is not None:
                raise BlobRangeError(blob_id, range[0], range[1], None) from None
            message = str(error.get("Message", exc))
            raise S3Error(message, bucket=self.bucket, key=key, code=code) from exc
        except (BotoCoreError, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise S3Error(f"{type(exc).__name__}: {exc}", bucket=self.bucket, key=key) from exc
