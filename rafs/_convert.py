"""`nydusify convert`: an OCI (or Docker) image in a registry becomes a Nydus image.

Each source layer is streamed into the work directory (its digest checked), built into one
Nydus blob and a per-layer bootstrap that keeps the layer's whiteouts, and remembered in the
conversion cache; the layer bootstraps are merged into the image's bootstrap, which alone
gets the prefetch table (a listed path may live in any layer, so neither a layer's build
nor its cache key depends on the list). Then, into the target repository: every blob the
bootstrap uses (built here, or a chunk dictionary's blob mounted or copied in), the
bootstrap layer, the new config, and last the manifest.

The pushed image follows Nydus's converter: blob layers (media type
`application/vnd.oci.image.layer.nydus.blob.v1`, annotated `containerd.io/snapshot/nydus-blob:
"true"`) in the bootstrap's blob table order, then the bootstrap as a gzip tar layer annotated
with the RAFS version, the blob ids and the chunk dictionary blobs it refers to; the config's
`rootfs.diff_ids` are the blobs' own digests and the bootstrap tar's sha256, its history
dropped; the manifest carries `nydus.trace.*` annotations (tool, source reference, digest).

The rule it keeps: the manifest is pushed last, so a failure leaves nothing tagged; a layer
already converted with the same settings is not downloaded or built again, and a blob the
target already has is not sent again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from ._builder import BuildOptions, build, gc_paused, writer_for
from ._chunkdicts import BlobOrigin, ChunkDicts, load_chunk_dicts
from ._errors import RafsError
from ._load import load_bootstrap
from ._merge import build_merged, choose_prefetch, overlay
from ._nydusimage import (
    ANNOTATION_BLOB,
    ANNOTATION_BOOTSTRAP,
    MEDIA_TYPE_BOOTSTRAP_LAYER,
    MEDIA_TYPE_NYDUS_BLOB,
    bootstrap_annotations,
    pack_bootstrap_layer,
)
from ._oci import OCI_MANIFEST, Descriptor, ImageReference, Manifest, sha256_digest
from ._regaccess import RegistryAccess
from ._registry import NotFound, RegistryClient
from ._steps import QuietSteps, Steps
from ._tarimport import import_tar
from ._v5write import dump_v5
from ._workdir import LayerRecord, WorkDir, spool_blob

T = TypeVar("T")

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
ANNOTATION_REFERENCE_BLOB_IDS = "containerd.io/snapshot/nydus-reference-blob-ids"
TOOL_VERSION = "nydus-mesh 0.1.0"
FS_VERSION = 5
SOURCE_LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
DOWNLOADS = 3  # source layers streamed at once
BUILDS = 2  # layers built at once (each build has its own thread pool)
PUSHES = 4  # blobs uploaded at once


class ConvertError(RafsError):
    """The source cannot be converted, or the result cannot be pushed."""


@dataclass(frozen=True)
class ConvertRequest:
    source: str
    target: str
    work_dir: Path
    platform: str = "linux/amd64"
    options: BuildOptions = field(default_factory=BuildOptions)
    chunk_dicts: tuple[str, ...] = ()
    source_access: RegistryAccess = field(default_factory=RegistryAccess)
    target_access: RegistryAccess = field(default_factory=RegistryAccess)
    # Absolute paths for the merged bootstrap's prefetch table (never a layer's: the layer
    # cache key does not depend on them); `options.prefetch_files` is not used.
    prefetch_patterns: tuple[str, ...] = ()


@dataclass
class ConvertSummary:
    source: str
    target: str
    source_digest: str = ""
    manifest_digest: str = ""
    bootstrap_digest: str = ""
    layers: int = 0  # source layers
    converted: int = 0  # built here in this run
    reused: int = 0  # taken from the conversion cache
    blobs: int = 0  # blob layers of the Nydus image
    blobs_pushed: int = 0
    blobs_present: int = 0  # the target had them already
    blobs_mounted: int = 0  # cross-repository mounts (chunk dictionary blobs)
    bytes_pushed: int = 0  # blobs, bootstrap layer and config sent this run
    chunk_dict_blobs: list[str] = field(default_factory=list)
    prefetch: list[str] = field(default_factory=list)  # paths the prefetch table names
    prefetch_ignored: list[str] = field(default_factory=list)  # one warning line each
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def convert_image(req: ConvertRequest, steps: Steps | None = None) -> ConvertSummary:
    source, target = _reference(req.source, "source"), _reference(req.target, "target")
    if target.digest is not None:
        raise ConvertError(f"target {req.target} names a digest; give a tag to push to")
    work = WorkDir(req.work_dir)
    source_client = req.source_access.client(source.registry)
    target_client = req.target_access.client(target.registry)
    try:
        access = _access_for(req, source, target)
        dicts = await load_chunk_dicts(
            list(req.chunk_dicts), req.options.digester, access, req.platform
        )
        try:
            job = _Conversion(req, work, source, target, source_client, target_client, dicts)
            return await job.run(steps or QuietSteps())
        finally:
            await dicts.close()
    finally:
        await source_client.close()
        await target_client.close()


def _reference(text: str, what: str) -> ImageReference:
    try:
        return ImageReference.parse(text)
    except RafsError as exc:
        raise ConvertError(f"{what}: {exc}") from None


def _access_for(
    req: ConvertRequest, source: ImageReference, target: ImageReference
) -> Callable[[str], RegistryAccess]:
    def access(registry: str) -> RegistryAccess:
        if registry == target.registry:
            return req.target_access
        if registry == source.registry:
            return req.source_access
        return RegistryAccess()

    return access


class _Conversion:
    def __init__(
        self,
        req: ConvertRequest,
        work: WorkDir,
        source: ImageReference,
        target: ImageReference,
        source_client: RegistryClient,
        target_client: RegistryClient,
        dicts: ChunkDicts,
    ) -> None:
        self.req = req
        self.opts = replace(req.options, prefetch_files=())
        self.work = work
        self.source, self.target = source, target
        self.pull, self.push = source_client, target_client
        self.dicts = dicts
        self.dict_blobs = frozenset(dicts.blob_ids)
        self.steps: Steps = QuietSteps()
        self.summary = ConvertSummary(source=str(source), target=str(target))
        self._downloads = asyncio.Semaphore(DOWNLOADS)
        self._builds = asyncio.Semaphore(BUILDS)
        self._pushes = asyncio.Semaphore(PUSHES)

    @property
    def settings(self) -> dict[str, Any]:
        """What a layer's conversion depends on besides its bytes (the cache key)."""
        return {
            "chunk_size": self.opts.chunk_size,
            "compressor": self.opts.compressor.value,
            "digester": self.opts.digester.value,
            "explicit_uidgid": self.opts.explicit_uidgid,
            "fs_version": FS_VERSION,
            "chunk_dict": sorted(self.dicts.blob_ids),
        }

    async def run(self, steps: Steps) -> ConvertSummary:
        started, self.steps = time.monotonic(), steps
        manifest = await self.pull.get_manifest(
            self.source.repository, self.source.ref, self.req.platform
        )
        self.summary.source_digest = manifest.digest
        layers = oci_layers(manifest, str(self.source))
        config = await self._source_config(manifest)
        self.summary.layers = len(layers)
        records = await run_all(self._convert_layer(layer) for layer in _distinct(layers))
        by_source = {r.source: r for r in records}
        boot_bytes, blob_ids = await asyncio.to_thread(
            self._merge, [by_source[layer.digest] for layer in layers]
        )
        blob_layers = await run_all(self._provide_blob(blob_id) for blob_id in blob_ids)
        bootstrap, boot_diff_id = await self._push_bootstrap(boot_bytes, blob_ids)
        diff_ids = [layer.digest for layer in blob_layers]  # a Nydus blob is not compressed
        config_layer = await self._push_config(config, [*diff_ids, boot_diff_id])
        raw = self._manifest(manifest, config_layer, [*blob_layers, bootstrap])
        self.summary.chunk_dict_blobs = [b for b in blob_ids if b in self.dict_blobs]
        self.summary.manifest_digest = await self.push.put_manifest(
            self.target.repository, self.target.tag or "latest", raw, OCI_MANIFEST
        )
        self.summary.seconds = round(time.monotonic() - started, 3)
        return self.summary

    # --- the source ---------------------------------------------------------------------

    async def _source_config(self, manifest: Manifest) -> dict[str, Any]:
        descriptor = manifest.config
        if descriptor is None:
            raise ConvertError(f"source {self.source}: the manifest has no config")
        raw = await self.pull.get_blob(self.source.repository, descriptor.digest)
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise ConvertError(f"source {self.source}: config is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ConvertError(f"source {self.source}: config is not a JSON object")
        return config

    # --- layers -------------------------------------------------------------------------

    async def _convert_layer(self, layer: Descriptor) -> LayerRecord:
        key = WorkDir.cache_key(layer.digest, self.settings)
        step = self.steps.step(f"layer {_short(layer.digest)}", layer.size)
        record = self.work.lookup(key)
        if record is not None and await self._usable(record):
            self.summary.reused += 1
            step.finish("cached")
            return record
        async with self._downloads:
            step.describe("downloading")
            path = await spool_blob(
                self.pull, self.source.repository, layer, self.work.spool, step.advance
            )
        try:
            step.describe("building")
            async with self._builds:
                boot, blob_id = await asyncio.to_thread(self._build_layer, path)
        finally:
            path.unlink(missing_ok=True)
        record = self.work.store(key, layer.digest, boot, blob_id)
        self.summary.converted += 1
        step.finish("built")
        return record

    async def _usable(self, record: LayerRecord) -> bool:
        """A cached layer is usable while its blob is here or already in the target."""
        if record.blob_id is None or self.work.blob_path(record.blob_id).is_file():
            return True
        return await self.push.blob_exists(self.target.repository, f"sha256:{record.blob_id}")

    def _build_layer(self, layer: Path) -> tuple[bytes, str | None]:
        """One layer's bootstrap (whiteouts kept) and its new blob, if it stored any chunk."""
        chunk_dict = self.dicts.chunk_dict
        writer = writer_for(self.work.blobs, self.opts, chunk_dict)
        try:
            with gc_paused():  # the tree's objects are in no cycle: do not re-walk them
                root = import_tar(layer, writer, keep_whiteouts=True, mark_implicit=True)
                result = build(root, self.opts, writer, chunk_dict)
                boot = dump_v5(result.bootstrap)
        except BaseException:
            writer.abort()
            raise
        return boot, result.blob.blob_id if result.blob else None

    def _merge(self, records: list[LayerRecord]) -> tuple[bytes, list[str]]:
        """The image's bootstrap, its prefetch table taken from the request's patterns."""
        with gc_paused():  # 30% of the merge was the collector walking the trees
            tree = overlay([load_bootstrap(r.bootstrap) for r in records])
            choice = choose_prefetch(tree, self.req.prefetch_patterns)
            self.summary.prefetch = list(choice.paths)
            self.summary.prefetch_ignored = list(choice.ignored)
            opts = replace(self.opts, prefetch_files=choice.paths)
            merged = build_merged(tree, opts).bootstrap
            return dump_v5(merged), [b.blob_id for b in merged.blobs]

    # --- pushing ------------------------------------------------------------------------

    async def _provide_blob(self, blob_id: str) -> Descriptor:
        """Make sure the target has the blob; its layer descriptor."""
        digest = f"sha256:{blob_id}"
        async with self._pushes:
            step = self.steps.step(f"blob {blob_id[:12]}")
            try:
                size = await self.push.head_blob(self.target.repository, digest)
                self.summary.blobs_present += 1
                step.finish("present", size)
            except NotFound:
                size = await self._upload_blob(blob_id, digest)
                step.finish("pushed", size)
        self.summary.blobs += 1
        return Descriptor(MEDIA_TYPE_NYDUS_BLOB, digest, size, {ANNOTATION_BLOB: "true"})

    async def _upload_blob(self, blob_id: str, digest: str) -> int:
        """A chunk dict blob is cross-mounted where it can be; others are uploaded."""
        origin = self.dicts.origins.get(blob_id)
        if origin is not None and await self._mounted(origin, digest):
            return await self.push.head_blob(self.target.repository, digest)
        local = self.work.blob_path(blob_id)
        if not local.is_file():
            if origin is None:
                raise ConvertError(
                    f"blob {blob_id} is used by the image but is neither in the target "
                    f"repository nor in {self.work.blobs} (a chunk dict bootstrap's blobs "
                    "must be in one of them)"
                )
            await self._fetch_dict_blob(origin, digest, local)
        await self.push.push_blob(self.target.repository, local, digest)
        size = local.stat().st_size
        self.summary.blobs_pushed += 1
        self.summary.bytes_pushed += size
        return size

    async def _mounted(self, origin: BlobOrigin, digest: str) -> bool:
        if origin.client.registry != self.push.registry:
            return False
        if not await self.push.mount_blob(self.target.repository, digest, origin.repo):
            return False
        self.summary.blobs_mounted += 1
        return True

    async def _fetch_dict_blob(self, origin: BlobOrigin, digest: str, local: Path) -> None:
        size = await origin.client.head_blob(origin.repo, digest)
        layer = Descriptor(MEDIA_TYPE_NYDUS_BLOB, digest, size)
        path = await spool_blob(origin.client, origin.repo, layer, self.work.spool)
        path.replace(local)

    async def _push_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not await self.push.blob_exists(self.target.repository, digest):
            await self.push.push_blob(self.target.repository, data, digest)
            self.summary.bytes_pushed += len(data)
        return digest

    async def _push_bootstrap(self, boot: bytes, blob_ids: list[str]) -> tuple[Descriptor, str]:
        """The bootstrap layer's descriptor and its diff id (the sha256 of its tar)."""
        packed, diff_id = await asyncio.to_thread(pack_bootstrap_layer, boot)
        annotations = bootstrap_annotations(FS_VERSION, blob_ids)
        referenced = [b for b in blob_ids if b in self.dict_blobs]
        if referenced:
            annotations[ANNOTATION_REFERENCE_BLOB_IDS] = json.dumps(
                referenced, separators=(",", ":")
            )
        digest = await self._push_bytes(packed)
        self.summary.bootstrap_digest = digest
        layer = Descriptor(MEDIA_TYPE_BOOTSTRAP_LAYER, digest, len(packed), annotations)
        return layer, diff_id

    async def _push_config(self, config: dict[str, Any], diff_ids: list[str]) -> Descriptor:
        new = dict(config)
        new["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        new.pop("history", None)  # one entry per source layer: it no longer fits
        raw = json.dumps(new, separators=(",", ":")).encode()
        return Descriptor(OCI_CONFIG, await self._push_bytes(raw), len(raw))

    def _manifest(self, source: Manifest, config: Descriptor, layers: list[Descriptor]) -> bytes:
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [d.to_json() for d in layers],
            "annotations": {
                "nydus.trace.nydusify-version": TOOL_VERSION,
                "nydus.trace.source-reference": str(self.source),
                "nydus.trace.source-digest": source.digest,
            },
        }
        return json.dumps(body, separators=(",", ":")).encode()


def oci_layers(manifest: Manifest, name: str) -> list[Descriptor]:
    """The layers of an OCI or Docker image manifest; refused if any is not a tar layer."""
    if manifest.is_index:
        raise ConvertError(f"source {name}: got an image index, not a manifest")
    layers = manifest.layers
    if any(_is_nydus(layer) for layer in layers):
        raise ConvertError(f"source {name} is a Nydus image already")
    for layer in layers:
        if layer.media_type not in SOURCE_LAYER_TYPES:
            raise ConvertError(
                f"source {name}: layer {layer.digest} has media type {layer.media_type!r}, "
                "not a tar layer this converter reads (tar, tar+gzip, tar+zstd)"
            )
    if not layers:
        raise ConvertError(f"source {name}: the manifest has no layers")
    return layers


def _is_nydus(layer: Descriptor) -> bool:
    bootstrap = layer.annotations.get(ANNOTATION_BOOTSTRAP) == "true"
    return bootstrap or layer.media_type == MEDIA_TYPE_NYDUS_BLOB


def _distinct(layers: list[Descriptor]) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    for layer in layers:
        seen.setdefault(layer.digest, layer)
    return list(seen.values())


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12]


async def run_all(jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Run the jobs together; on the first failure cancel the others and raise it alone."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(job)) for job in jobs]
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    return [task.result() for task in tasks]


async def _awaited(job: Awaitable[T]) -> T:
    return await job


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
