"""The pieces of nydusify without a registry: comparing trees, chunk dict names, Docker
credentials, the conversion cache, merging layers whose tars leave directories out, and
matching a prefetch list against the merged tree."""

from __future__ import annotations

import base64
import io
import json
import stat
import tarfile
from pathlib import Path

import pytest

from rafs._builder import BuildOptions, build, writer_for
from rafs._chunkdicts import ChunkDictError, parse_spec
from rafs._imagecheck import EntryFacts, TreeFacts, compare
from rafs._merge import MergedTree, PrefetchChoice, choose_prefetch, merge
from rafs._oci import ImageReference
from rafs._regaccess import docker_credentials, parse_credentials
from rafs._registry import RegistryError
from rafs._source import SourceEntry, new_root
from rafs._tarimport import IMPLICIT_DIR, import_tar
from rafs._workdir import WorkDir

# --- compare --------------------------------------------------------------------------


def _file(mode: int = 0o644, sha: str = "aa", uid: int = 0, **kw: object) -> EntryFacts:
    base: dict[str, object] = dict(kind="file", mode=mode, uid=uid, gid=0, size=1, target=None,
                                   rdev=None, xattrs=(), sha256=sha)  # fmt: skip
    base.update(kw)
    return EntryFacts(**base)  # type: ignore[arg-type]


def _tree(links: set[frozenset[bytes]] | None = None, **entries: EntryFacts) -> TreeFacts:
    return TreeFacts({f"/{k}".encode(): v for k, v in entries.items()}, links or set())


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        (_tree(a=_file()), _tree(a=_file()), []),
        (_tree(a=_file()), _tree(), ["/a: only in the source"]),
        (_tree(), _tree(b=_file()), ["/b: only in the target"]),
        (_tree(a=_file(0o644)), _tree(a=_file(0o600)),
         ["/a: mode 0o644 in the source, 0o600 in the target"]),
        (_tree(a=_file(sha="aa", uid=1)), _tree(a=_file(sha="bb", uid=2)),
         ["/a: uid 1 in the source, 2 in the target",
          "/a: sha256 'aa' in the source, 'bb' in the target"]),
        (_tree(a=_file(xattrs=((b"user.x", b"1"),))), _tree(a=_file()),
         ["/a: xattrs ((b'user.x', b'1'),) in the source, () in the target"]),
        (_tree({frozenset({b"/a", b"/b"})}, a=_file(), b=_file()), _tree(a=_file(), b=_file()),
         ["hardlinks in the source only: /a, /b"]),
        (_tree(a=_file()), _tree(a=_file(kind="symlink", sha256=None, target=b"x")),
         ["/a: kind 'file' in the source, 'symlink' in the target",
          "/a: target None in the source, b'x' in the target",
          "/a: sha256 'aa' in the source, None in the target"]),
    ],
)  # fmt: skip
def test_compare(source: TreeFacts, target: TreeFacts, expected: list[str]) -> None:
    assert compare(source, target) == expected


# --- chunk dict names and credentials --------------------------------------------------


def test_chunk_dict_specs(tmp_path: Path) -> None:
    boot = tmp_path / "dict.boot"
    boot.write_bytes(b"")
    ref = ImageReference("127.0.0.1:5000", "base", "nydus")
    assert parse_spec("bootstrap:registry:127.0.0.1:5000/base:nydus") == ref
    assert parse_spec("127.0.0.1:5000/base:nydus") == ref
    assert parse_spec("bootstrap:local:/x/y.boot") == Path("/x/y.boot")
    assert parse_spec(str(boot)) == boot
    for bad in ("bootstrap:nowhere:x", "bootstrap:local:", "Not A Ref!"):
        with pytest.raises(ChunkDictError):
            parse_spec(bad)


def test_docker_credentials(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"alice:pa:ss").decode()
    config.write_text(json.dumps({"auths": {
        "reg.example:5000": {"auth": auth},
        "http://other.example": {"username": "bob", "password": "pw"},
        "broken.example": {"auth": "bm90LWEtcGFpcg=="},
    }}))  # fmt: skip
    assert docker_credentials("reg.example:5000", config) == ("alice", "pa:ss")
    assert docker_credentials("other.example", config) == ("bob", "pw")
    assert docker_credentials("unknown.example", config) is None
    assert docker_credentials("x", tmp_path / "missing.json") is None
    with pytest.raises(RegistryError, match="not base64 of USER:PASS"):
        docker_credentials("broken.example", config)
    config.write_text("{not json")
    with pytest.raises(RegistryError, match="cannot read Docker config"):
        docker_credentials("reg.example:5000", config)
    assert parse_credentials("u:p:w", "--x") == ("u", "p:w")
    with pytest.raises(RegistryError, match="--x must be USER:PASSWORD"):
        parse_credentials("nocolon", "--x")


# --- the conversion cache ---------------------------------------------------------------


def test_cache_records(tmp_path: Path) -> None:
    work = WorkDir(tmp_path / "w")
    key = WorkDir.cache_key("sha256:" + "1" * 64, {"chunk_size": 1 << 20})
    assert key != WorkDir.cache_key("sha256:" + "1" * 64, {"chunk_size": 1 << 19})
    assert key != WorkDir.cache_key("sha256:" + "2" * 64, {"chunk_size": 1 << 20})
    assert work.lookup(key) is None
    (work.blobs / ("b" * 64)).write_bytes(b"12345")
    stored = work.store(key, "sha256:" + "1" * 64, b"boot", "b" * 64)
    assert work.lookup(key) == stored and stored.blob_size == 5
    stored.bootstrap.unlink()
    assert work.lookup(key) is None  # a record without its bootstrap is no record
    work.store(key, "sha256:" + "1" * 64, b"boot", None)
    (work.layers / f"{key}.json").write_text("{broken")
    assert work.lookup(key) is None


# --- layers whose tars leave directories out ---------------------------------------------


def _layer(path: Path, *members: tuple[str, int, bytes | None, dict[str, str]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode, data, pax in members:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.pax_headers = mode, 7, pax
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return path


def test_merge_keeps_lower_metadata_of_directories_a_layer_leaves_out(tmp_path: Path) -> None:
    opts = BuildOptions()
    note = {"SCHILY.xattr.user.note": "lower"}
    lower = _layer(tmp_path / "1.tar", (".", 0o700, None, {}), ("etc", 0o750, None, note),
                   ("etc/a", 0o644, b"a", {}))  # fmt: skip
    upper = _layer(tmp_path / "2.tar", ("etc/b", 0o644, b"b", {}), ("new/sub/c", 0o644, b"c", {}))
    boots = []
    for layer in (lower, upper):
        writer = writer_for(tmp_path, opts, None)
        root = import_tar(layer, writer, keep_whiteouts=True, mark_implicit=True)
        boots.append(build(root, opts, writer).bootstrap)
    assert boots[1].lookup("/etc").xattrs == {IMPLICIT_DIR: b"y"}
    assert boots[1].root.xattrs == {IMPLICIT_DIR: b"y"}
    assert boots[0].lookup("/etc").xattrs == {b"user.note": b"lower"}  # listed: no marker

    merged = merge(boots, opts).bootstrap
    etc = merged.lookup("/etc")
    assert (stat.S_IMODE(etc.mode), etc.uid, etc.xattrs) == (0o750, 7, {b"user.note": b"lower"})
    assert stat.S_IMODE(merged.root.mode) == 0o700 and merged.root.uid == 7
    for path in ("/new", "/new/sub"):
        made = merged.lookup(path)
        assert (stat.S_IMODE(made.mode), made.uid, made.xattrs) == (0o755, 0, {})
    assert sorted(p for p, _ in merged.walk()) == [
        b"/",
        b"/etc",
        b"/etc/a",
        b"/etc/b",
        b"/new",
        b"/new/sub",
        b"/new/sub/c",
    ]
    assert not any(IMPLICIT_DIR in i.xattrs for i in merged.inodes.values())


# --- the prefetch list ---------------------------------------------------------------------


def _merged_tree() -> MergedTree:
    """/etc/hosts, /usr/bin/sh, /usr/lib/, and a name that is not UTF-8."""
    root = new_root()
    for path in (b"etc/hosts", b"usr/bin/sh", b"usr/lib/", b"caf\xe9"):
        node = root
        *dirs, name = path.split(b"/")
        for part in dirs:
            node = node.children.setdefault(part, SourceEntry(part, stat.S_IFDIR | 0o755))
        if name:
            node.children[name] = SourceEntry(name, stat.S_IFREG | 0o644)
    return MergedTree(root, [])


@pytest.mark.parametrize(
    ("patterns", "paths", "ignored"),
    [
        ([], [], []),
        (["/usr/bin/sh", "/etc"], ["/usr/bin/sh", "/etc"], []),
        (["/usr", "/usr/bin/sh", "/usr/lib"], ["/usr"], []),  # below an earlier one: nothing
        (["/usr/bin/sh", "/usr"], ["/usr/bin/sh", "/usr"], []),  # Nydus keeps both too
        (["/", "/etc"], ["/"], []),
        (["  /etc/hosts ", "", "/etc/hosts/", "//etc/./hosts"], ["/etc/hosts"], []),
        (["/usr/bi"], [], ["prefetch path /usr/bi is not in the image: ignored"]),
        (["/etc/hosts/x"], [], ["prefetch path /etc/hosts/x is not in the image: ignored"]),
        (["etc/hosts"], [], ["prefetch path etc/hosts is not absolute: ignored"]),
        (["/caf\udce9"], ["/caf\udce9"], []),  # names are bytes; surrogateescape as the builder
    ],
)
def test_choose_prefetch(patterns: list[str], paths: list[str], ignored: list[str]) -> None:
    got = choose_prefetch(_merged_tree(), patterns)
    assert got == PrefetchChoice(tuple(paths), tuple(ignored))
