"""Plain files and OCI layers in the mesh: fixed-size pieces, and how they are trusted.

A Nydus blob's chunks are named by digest in a bootstrap, so every peer can check every
chunk. A plain file (any HTTP(S) URL) or an OCI layer has no such table, so, as Dragonfly
does, it is cut into pieces of `PIECE_SIZE` bytes (piece i = bytes `[i*P, min((i+1)*P,
size))`) and each piece gets its digest when it is first known:

- The file is a blob of the mesh whose id is `sha256(KEY)`, KEY being its content digest
  (`sha256:...`, from `--digest` or a registry blob URL) or else its URL. Piece i is chunk
  i of that blob, stored raw (no compression) in the chunk cache with its sha256 as the
  chunk digest, and served, announced and scheduled like any chunk: no message changed,
  the scheduler is unchanged.
- The daemon that fetches the file from the ORIGIN hashes each piece as it arrives and
  the whole file. Only when the whole-file sha256 is known (and equals the expected one,
  when one is known) does it publish the `PieceTable` (size, piece size, every piece's
  sha256, the whole-file digest) as the single chunk of a second blob, the table blob,
  id `sha256("piece-table:" + FILE_BLOB_ID)`, and announce it with the pieces.
- Another daemon asks the supernode for the table blob, takes the table from a parent
  (rejecting one whose whole-file digest is not the one it expects), then fetches the
  pieces through the mesh (`MeshSource`, falling back to the origin with Range requests);
  every piece from a peer (or the origin) is checked against the table's sha256 before it
  is stored. The whole file is hashed again over the verified pieces; if that fails the
  download fails and nothing is handed out.

So the final check is the whole-file sha256; piece digests bound what one lying parent
can cost (one piece) but are only as good as the first origin fetch for URL-keyed files
with no `--digest` (as in Dragonfly, the first fetcher's word). A URL-keyed file is also
fetched from its origin once: later downloads of the URL get the mesh's copy, even if the
origin's content changed since (pass `--digest` to pin the content).

Rule: this module is data only (no I/O): ids, the table, its JSON form, and the chunk
records of pieces.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from rafs import ChunkInfo
from rafs._chunksource import BlobRef, FetchedChunk
from rafs._digest import Compressor, Digester

from ._errors import PeerError

PIECE_SIZE = 4 << 20
_TABLE_VERSION = 1


class BadPieceTable(PeerError):
    """A piece table that does not parse or does not add up."""


def parse_digest(text: str) -> str:
    """`sha256:<64 hex>` (lower-cased), or ValueError naming the value."""
    algo, sep, hexa = text.strip().lower().partition(":")
    if algo != "sha256" or not sep or len(hexa) != 64 or not _is_hex(hexa):
        raise ValueError(f"digest {text!r}: expected sha256:<64 hex digits>")
    return f"sha256:{hexa}"


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def file_blob_id(url: str, digest: str | None) -> str:
    """The mesh blob id of a file: sha256 of its content digest, else of its URL."""
    return hashlib.sha256((digest or url).encode()).hexdigest()


def table_blob_id(file_id: str) -> str:
    """The blob whose one chunk is the piece table of `file_id`."""
    return hashlib.sha256(f"piece-table:{file_id}".encode()).hexdigest()


def piece_ref(blob_id: str, size: int = 0) -> BlobRef:
    """Pieces (and tables) are stored raw and named by sha256."""
    return BlobRef(blob_id, Compressor.NONE, Digester.SHA256, size)


def piece_spans(size: int, piece_size: int = PIECE_SIZE) -> list[tuple[int, int]]:
    """`(offset, length)` of every piece of a file of `size` bytes."""
    return [(off, min(piece_size, size - off)) for off in range(0, size, piece_size)]


def piece_info(index: int, offset: int, length: int, digest: bytes) -> ChunkInfo:
    """The chunk record of one piece (raw: stored bytes are the file's bytes)."""
    return ChunkInfo(digest=digest, blob_index=0, flags=0, compressed_size=length,
                     uncompressed_size=length, compressed_offset=offset,
                     uncompressed_offset=offset, file_offset=offset, index=index)  # fmt: skip


def piece_chunk(index: int, offset: int, data: bytes) -> FetchedChunk:
    """A piece just read from the origin: its digest is what it hashes to."""
    info = piece_info(index, offset, len(data), hashlib.sha256(data).digest())
    return FetchedChunk(info, data, data)


@dataclass(frozen=True, slots=True)
class PieceTable:
    """A whole file: its size, piece size, each piece's sha256 and the file's digest."""

    size: int
    piece_size: int
    digests: tuple[bytes, ...]
    content_digest: str  # sha256:... of the whole file

    def __post_init__(self) -> None:
        if self.size < 0 or self.piece_size <= 0:
            raise BadPieceTable(f"size {self.size} / piece size {self.piece_size}")
        expected = len(piece_spans(self.size, self.piece_size))
        if len(self.digests) != expected or any(len(d) != 32 for d in self.digests):
            raise BadPieceTable(f"{len(self.digests)} piece digests for {expected} pieces")

    @property
    def count(self) -> int:
        return len(self.digests)

    def infos(self) -> list[ChunkInfo]:
        spans = piece_spans(self.size, self.piece_size)
        return [piece_info(i, off, n, self.digests[i]) for i, (off, n) in enumerate(spans)]

    def encode(self) -> bytes:
        body = {"version": _TABLE_VERSION, "size": self.size, "piece_size": self.piece_size,
                "content_digest": self.content_digest,
                "digests": [d.hex() for d in self.digests]}  # fmt: skip
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PieceTable:
        try:
            body = json.loads(raw)
            if body["version"] != _TABLE_VERSION:
                raise BadPieceTable(f"piece table version {body['version']!r}")
            digests = tuple(bytes.fromhex(d) for d in body["digests"])
            return cls(int(body["size"]), int(body["piece_size"]), digests,
                       parse_digest(body["content_digest"]))  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise BadPieceTable(f"piece table does not parse: {exc}") from None

    def table_chunk(self) -> FetchedChunk:
        """The table as the single chunk of its table blob."""
        raw = self.encode()
        return FetchedChunk(piece_info(0, 0, len(raw), hashlib.sha256(raw).digest()), raw, raw)
