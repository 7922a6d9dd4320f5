"""The peer's libp2p identity: an Ed25519 key kept in the data dir, so its peer id (the
`/p2p/...` part of its multiaddr) stays the same across restarts.

The file holds the key in libp2p's own protobuf encoding (`PrivateKey.serialize`). It is
made once: written to a temp file created with mode 0600, synced, and renamed into place,
so a crash leaves either no key or a whole one, never a key others could read.

Rule: a key file that cannot be read as a key is an error naming the file, never silently
replaced (that would change the peer id under the supernode's feet).
"""

from __future__ import annotations

import os
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key

from ._errors import PeerError

KEY_FILE = "p2p_key"


class BadPeerKey(PeerError):
    """The key file exists but does not hold a libp2p private key."""


def load_or_create_key(data_dir: Path) -> KeyPair:
    """The key kept in `data_dir`, made (and kept) on first use."""
    path = data_dir / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        pair = create_new_key_pair()
        _write_private(path, pair.private_key.serialize())
        return pair
    try:
        private = deserialize_private_key(data)
    except Exception as exc:  # protobuf and per-key-type errors: no common base
        raise BadPeerKey(f"{path}: not a libp2p private key ({exc})") from exc
    return KeyPair(private, private.get_public_key())


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask or an old temp file said
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
