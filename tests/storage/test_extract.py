"""Layer extraction: decompression, metadata, whiteouts, escapes and bad input, on real tarballs."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import struct
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
import zstandard

from storage.digest import Digest
from storage.errors import BadArchive, CorruptLayer, DigestMismatch, UnsafePath
from storage.extract import ExtractStats, extract_layer, open_layer_stream
from storage.oci import MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR, MEDIA_LAYER_ZSTD

MTIME = 1_600_000_000
Member = tuple[tarfile.TarInfo, bytes | None]


def _info(name: str, kind: bytes, mode: int, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"", mode: int = 0o644, **attrs: object) -> Member:
    info = _info(name, tarfile.REGTYPE, mode, **attrs)
    info.size = len(data)
    return info, data


def directory(name: str, mode: int = 0o755, **attrs: object) -> Member:
    return _info(name, tarfile.DIRTYPE, mode, **attrs), None


def symlink(name: str, target: str, **attrs: object) -> Member:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target, **attrs), None


def hardlink(name: str, target: str) -> Member:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def make_tar(*members: Member) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def extract(
    data: bytes,
    dest: Path,
    media_type: str = MEDIA_LAYER_TAR,
    diff_id: Digest | None = None,
    whiteouts: Literal["apply", "overlay"] = "apply",
) -> ExtractStats:
    return extract_layer(io.BytesIO(data), media_type, dest, diff_id=diff_id, whiteouts=whiteouts)


def sha256(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def skippable_frame(payload: bytes) -> bytes:
    return b"\x50\x2a\x4d\x18" + struct.pack("<I", len(payload)) + payload


def zstd_frames(data: bytes, cuts: int = 5) -> bytes:
    """Several zstd frames, like a zstd:chunked blob, cut at arbitrary (not block-aligned) offsets."""
    step = max(1, len(data) // cuts + 7)
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    return b"".join(compressor.compress(data[i : i + step]) for i in range(0, len(data), step))


def lstat(path: Path) -> os.stat_result:
    return os.lstat(path)


# --- the round trip ----------------------------------------------------------------------------


@pytest.mark.privileged
def test_round_trip_keeps_every_property(tmp_path: Path) -> None:
    owner = {"uid": 1234, "gid": 1234}
    xattrs = {
        "SCHILY.xattr.user.foo": "bar",
        # Not UTF-8: tarfile gives it back surrogate-escaped and it must come out as the same bytes.
        "SCHILY.xattr.user.bin": b"\xff\x00\x01".decode("utf-8", "surrogateescape"),
        "atime": "1500000000.5",
    }
    layer = make_tar(
        directory("./", mode=0o755, mtime=1_000_000_000),
        directory("etc", mode=0o750, mtime=1_100_000_000, **owner),
        reg("etc/file", b"hello", mode=0o4755, mtime=1_200_000_000, pax_headers=xattrs, **owner),
        reg("etc/empty", b"", mode=0o600, mtime=1_200_000_001),
        symlink("etc/link", "file", mtime=1_300_000_000, **owner),
        hardlink("etc/hard", "etc/file"),
        (_info("etc/fifo", tarfile.FIFOTYPE, 0o640, mtime=1_300_000_001, **owner), None),
        directory("tmp", mode=0o1777, mtime=1_400_000_000),
        directory("etc/sgid", mode=0o2755, mtime=1_400_000_001),
        (_info("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), None),
        (_info("dev/loop9", tarfile.BLKTYPE, 0o660, devmajor=7, devminor=9, gid=6), None),
    )
    dest = tmp_path / "root"
    stats = extract(layer, dest, diff_id=sha256(layer))
    assert stats == ExtractStats(entries=11, bytes=5)

    st = lstat(dest / "etc/file")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o4755
    assert (st.st_uid, st.st_gid) == (1234, 1234)
    assert (dest / "etc/file").read_bytes() == b"hello"
    assert st.st_mtime == 1_200_000_000 and st.st_atime == 1_500_000_000.5
    assert os.getxattr(dest / "etc/file", "user.foo") == b"bar"
    assert os.getxattr(dest / "etc/file", "user.bin") == b"\xff\x00\x01"

    st = lstat(dest / "etc/empty")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid, st.st_mtime) == (0, 0, 1_200_000_001)

    st = lstat(dest / "etc/link")
    assert stat.S_ISLNK(st.st_mode) and os.readlink(dest / "etc/link") == "file"
    assert (st.st_uid, st.st_gid, st.st_mtime) == (1234, 1234, 1_300_000_000)

    hard = lstat(dest / "etc/hard")
    assert hard.st_ino == lstat(dest / "etc/file").st_ino and hard.st_nlink == 2

    st = lstat(dest / "etc/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_mtime) == (1234, 1_300_000_001)

    st = lstat(dest / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) and stat.S_IMODE(st.st_mode) == 0o666
    st = lstat(dest / "dev/loop9")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 9) and st.st_gid == 6

    # Directory times survive the children written into them afterwards.
    st = lstat(dest / "etc")
    assert stat.S_IMODE(st.st_mode) == 0o750 and (st.st_uid, st.st_gid) == (1234, 1234)
    assert st.st_mtime == 1_100_000_000
    assert stat.S_IMODE(lstat(dest / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(lstat(dest / "etc/sgid").st_mode) == 0o2755
    assert lstat(dest).st_mtime == 1_000_000_000
    assert stat.S_IMODE(lstat(dest / "dev").st_mode) == 0o755  # made implicitly


def test_gnu_tar_layer_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n" * 1000)
    os.chmod(src / "bin/tool", 0o4755)
    (src / "bin/empty").write_bytes(b"")
    os.symlink("tool", src / "bin/alias")
    os.symlink("/nonexistent/abs", src / "dangling")
    os.link(src / "bin/tool", src / "bin/tool2")
    os.mkfifo(src / "pipe", 0o600)
    os.setxattr(src / "bin/empty", "user.foo", b"bar")
    for i, path in enumerate(sorted(src.rglob("*"), reverse=True)):
        os.utime(path, (1_000_000_000 + i, 1_500_000_000 + i), follow_symlinks=False)
    os.utime(src, (1_000_000_000, 1_700_000_000))
    layer = subprocess.run(
        [
            "tar",
            "--format=pax",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
            src,
            "-cf",
            "-",
            ".",
        ],
        check=True,
        capture_output=True,
    ).stdout
    dest = tmp_path / "dest"
    extract(layer, dest, diff_id=sha256(layer))

    def describe(root: Path) -> dict[str, tuple[object, ...]]:
        out: dict[str, tuple[object, ...]] = {}
        for path in [root, *root.rglob("*")]:
            st = lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
            xattrs = {n: os.getxattr(path, n) for n in os.listxattr(path)} if not target else {}
            out[str(path.relative_to(root))] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_mtime,
                st.st_nlink,
                target,
                content,
                xattrs,
            )
        return out

    assert describe(dest) == describe(src)
    assert lstat(dest / "bin/tool").st_ino == lstat(dest / "bin/tool2").st_ino


# --- compression --------------------------------------------------------------------------------


def _cli(*argv: str) -> Callable[[bytes], bytes]:
    return lambda data: subprocess.run(argv, input=data, check=True, capture_output=True).stdout


COMPRESSIONS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "plain": (MEDIA_LAYER_TAR, lambda data: data),
    "gzip": (MEDIA_LAYER_GZIP, lambda data: gzip.compress(data)),
    "gzip-cli": (MEDIA_LAYER_GZIP, _cli("gzip", "-c")),
    "zstd": (MEDIA_LAYER_ZSTD, lambda data: zstandard.ZstdCompressor().compress(data)),
    "zstd-frames": (MEDIA_LAYER_ZSTD, zstd_frames),
    "zstd-cli": (MEDIA_LAYER_ZSTD, _cli("zstd", "-q", "-c", "--check")),
    # zstd:chunked: the tar frames, then skippable frames for the TOC, tar-split and footer.
    "zstd-chunked": (
        MEDIA_LAYER_ZSTD,
        lambda data: (
            zstd_frames(data)
            + skippable_frame(b'{"version": 1, "entries": []}' * 100)
            + skippable_frame(struct.pack("<4Q", 1, 2, 3, 1) + b"GnUlInUx")
        ),
    ),
}


BIG = os.urandom(300_000) + bytes(200_000)


def sample_layer() -> bytes:
    return make_tar(
        directory("usr"),
        reg("usr/big", BIG),
        reg("usr/small", b"small"),
        symlink("usr/link", "big"),
    )


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_compressed_layers_extract_and_hash_the_tar(tmp_path: Path, compression: str) -> None:
    media_type, compress = COMPRESSIONS[compression]
    layer = sample_layer()
    blob = compress(layer)
    stats = extract(blob, tmp_path, media_type, diff_id=sha256(layer))
    assert stats.bytes == 500_005
    assert (tmp_path / "usr/big").read_bytes() == BIG
    assert (tmp_path / "usr/small").read_bytes() == b"small"

    stream = open_layer_stream(io.BytesIO(blob), media_type)
    assert stream.read() == layer
    assert stream.digest == sha256(layer) and stream.size == len(layer)


def test_compression_is_told_by_magic_not_media_type(tmp_path: Path) -> None:
    layer = sample_layer()
    extract(gzip.compress(layer), tmp_path / "a", MEDIA_LAYER_ZSTD, diff_id=sha256(layer))
    extract(zstd_frames(layer), tmp_path / "b", MEDIA_LAYER_GZIP, diff_id=sha256(layer))
    extract(layer, tmp_path / "c", MEDIA_LAYER_GZIP, diff_id=sha256(layer))
    assert (tmp_path / "c/usr/small").read_bytes() == b"small"


def test_digest_is_refused_before_the_end(tmp_path: Path) -> None:
    stream = open_layer_stream(io.BytesIO(gzip.compress(sample_layer())), MEDIA_LAYER_GZIP)
    stream.read(100)
    with pytest.raises(ValueError):
        _ = stream.digest


# --- whiteouts ----------------------------------------------------------------------------------


def lower_layer() -> bytes:
    return make_tar(
        reg("file", b"lower"),
        reg("keep", b"keep"),
        directory("tree"),
        directory("tree/sub"),
        reg("tree/sub/deep", b"deep"),
        symlink("tree/link", "/etc"),
        directory("opaque"),
        reg("opaque/old", b"old"),
        directory("opaque/sub"),
        reg("opaque/sub/old", b"old"),
        directory("opaque/gone"),
        reg("opaque/gone/old", b"old"),
    )


def test_whiteouts_remove_lower_files_and_trees(tmp_path: Path) -> None:
    extract(lower_layer(), tmp_path)
    upper = make_tar(reg(".wh.file"), reg(".wh.tree"), reg(".wh.absent"), reg("new", b"new"))
    stats = extract(upper, tmp_path)
    assert stats.entries == 4
    assert sorted(os.listdir(tmp_path)) == ["keep", "new", "opaque"]


def test_opaque_directory_keeps_only_this_layers_children(tmp_path: Path) -> None:
    extract(lower_layer(), tmp_path)
    upper = make_tar(
        directory("opaque", mode=0o700),
        reg("opaque/new", b"new"),
        reg("opaque/sub/new", b"new"),  # in a lower directory this layer writes into
        reg("opaque/.wh..wh..opq"),
        reg("opaque/later", b"later"),
    )
    extract(upper, tmp_path)
    tree = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "opaque").rglob("*"))
    assert tree == ["opaque/later", "opaque/new", "opaque/sub", "opaque/sub/new"]
    assert stat.S_IMODE(lstat(tmp_path / "opaque").st_mode) == 0o700
    assert (tmp_path / "keep").read_bytes() == b"keep"


def test_whiteout_spares_what_the_same_layer_wrote(tmp_path: Path) -> None:
    extract(make_tar(directory("d"), reg("d/lower", b"x"), reg("f", b"lower")), tmp_path)
    extract(make_tar(reg("f", b"upper"), reg("d/upper", b"y"), reg(".wh.f"), reg(".wh.d")), tmp_path)
    assert (tmp_path / "f").read_bytes() == b"upper"
    assert os.listdir(tmp_path / "d") == ["upper"]


@pytest.mark.privileged
def test_overlay_whiteouts_become_devices_and_xattrs(tmp_path: Path) -> None:
    layer = make_tar(
        directory("d"),
        reg("d/.wh..wh..opq"),
        reg("d/file", b"x"),
        reg(".wh.gone"),
        reg("sub/.wh.deep"),
        directory("same"),
        reg(".wh.same"),  # this layer's own directory stays, hiding the lower one: opaque
        reg(".wh.later"),
        directory("later"),  # written over its own whiteout: opaque too
    )
    extract(layer, tmp_path, whiteouts="overlay")
    for name in ("gone", "sub/deep"):
        st = lstat(tmp_path / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    for name in ("d", "same", "later"):
        assert os.getxattr(tmp_path / name, "trusted.overlay.opaque") == b"y"
    assert (tmp_path / "d/file").read_bytes() == b"x"
    assert not list(tmp_path.rglob(".wh.*"))


@pytest.mark.privileged
def test_overlay_xattrs_from_the_tar_are_ignored(tmp_path: Path) -> None:
    layer = make_tar(directory("d", pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y"}))
    extract(layer, tmp_path, whiteouts="overlay")
    assert "trusted.overlay.opaque" not in os.listxattr(tmp_path / "d")


# --- replacing what is there --------------------------------------------------------------------


def test_entries_replace_and_update_existing_ones(tmp_path: Path) -> None:
    extract(make_tar(reg("x", b"file"), directory("y"), reg("y/child"), directory("d"), reg("d/a")), tmp_path)
    extract(
        make_tar(
            directory("x"), reg("x/c", b"c"), reg("y", b"file now"), directory("d", mode=0o711), reg("d/b")
        ),
        tmp_path,
    )
    assert (tmp_path / "x/c").read_bytes() == b"c"
    assert (tmp_path / "y").read_bytes() == b"file now"
    assert sorted(os.listdir(tmp_path / "d")) == ["a", "b"]
    assert stat.S_IMODE(lstat(tmp_path / "d").st_mode) == 0o711


def test_names_that_are_not_utf8_keep_their_bytes(tmp_path: Path) -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    extract(make_tar(directory(name), reg(name + "/" + name, b"x")), tmp_path)
    assert os.listdir(bytes(tmp_path)) == [b"caf\xe9"]
    assert os.listdir(bytes(tmp_path / name)) == [b"caf\xe9"]


# --- escapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/abs-lazyctr-{}"])
def test_escaping_names_are_refused(tmp_path: Path, name: str) -> None:
    name = name.format(uuid.uuid4().hex)
    dest = tmp_path / "root"
    with pytest.raises(UnsafePath):
        extract(make_tar(reg("fine", b"ok"), reg(name, b"evil")), dest)
    assert sorted(os.listdir(tmp_path)) == ["root"]
    assert not Path("/" + name.lstrip("/")).exists()


def test_escaping_hardlink_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    with pytest.raises(UnsafePath):
        extract(make_tar(hardlink("stolen", "../secret")), tmp_path / "root")
    assert lstat(tmp_path / "secret").st_nlink == 1


def test_symlinks_never_lead_writes_outside(tmp_path: Path) -> None:
    dest = tmp_path / "x" / "root"
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    os.chmod(outside, 0o600)
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    extract(
        make_tar(
            symlink("abs", "/"),
            symlink("up", "../../.."),
            symlink("deep", "up/x/.."),
            symlink("out", str(outside)),
            symlink("hard_src", str(outside)),
        ),
        dest,
    )
    before = sorted(os.listdir(tmp_path.parent))
    extract(
        make_tar(
            reg("abs/evil1", b"1"),
            reg("up/evil2", b"2"),
            reg("deep/sub/evil3", b"3"),
            directory("up/evildir"),
            reg(".wh.victim"),
            reg("up/.wh.victim"),
            reg("out", b"overwritten?", mode=0o666),  # replaces the symlink, never writes through it
            hardlink("hard", "hard_src"),  # links the symlink itself, not what it points to
        ),
        dest,
    )
    assert sorted(os.listdir(tmp_path.parent)) == before
    assert sorted(os.listdir(tmp_path)) == ["outside.txt", "victim", "x"]
    assert os.listdir(tmp_path / "x") == ["root"]
    assert outside.read_bytes() == b"precious" and stat.S_IMODE(lstat(outside).st_mode) == 0o600
    assert lstat(outside).st_nlink == 1
    assert victim.read_bytes() == b"victim"
    for name, data in (("evil1", b"1"), ("evil2", b"2"), ("sub/evil3", b"3")):
        assert (dest / name).read_bytes() == data
    assert (dest / "evildir").is_dir()
    assert (dest / "out").read_bytes() == b"overwritten?" and not (dest / "out").is_symlink()
    assert os.readlink(dest / "hard") == str(outside)


def test_hardlink_to_a_missing_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadArchive, match="nothere"):
        extract(make_tar(reg("a", b"a"), hardlink("b", "nothere")), tmp_path)


def test_hardlink_through_a_symlink_resolves_in_root(tmp_path: Path) -> None:
    (tmp_path / "victim").write_bytes(b"victim")
    dest = tmp_path / "root"
    with pytest.raises(BadArchive, match="does not exist"):
        extract(make_tar(symlink("up", ".."), hardlink("stolen", "up/victim")), dest)
    assert lstat(tmp_path / "victim").st_nlink == 1


# --- bad input ----------------------------------------------------------------------------------


def test_truncated_tar_is_refused(tmp_path: Path) -> None:
    layer = make_tar(reg("a", b"a" * 10_000), reg("b", b"b"))
    with pytest.raises(BadArchive, match="malformed layer"):
        extract(layer[: 512 * 3 + 5000], tmp_path / "mid-file")
    with pytest.raises(BadArchive, match="malformed layer"):
        extract(layer[: 512 * 23 + 100], tmp_path / "mid-header")


def test_tar_cut_between_entries_is_caught_by_the_diff_id(tmp_path: Path) -> None:
    # Like Go's archive/tar, a stream that ends between entries is accepted on its own.
    layer = make_tar(reg("a", b"a" * 10_000), reg("b", b"b"))
    cut = layer[: 512 + 10_240]
    extract(cut, tmp_path / "alone")
    with pytest.raises(DigestMismatch, match="diff_id mismatch"):
        extract(cut, tmp_path / "checked", diff_id=sha256(layer))


@pytest.mark.parametrize("compression", ["gzip", "zstd", "zstd-frames", "zstd-chunked"])
@pytest.mark.parametrize("keep", [0.5, -3])
def test_truncated_compressed_stream_is_refused(tmp_path: Path, compression: str, keep: float) -> None:
    media_type, compress = COMPRESSIONS[compression]
    blob = compress(sample_layer())
    cut = blob[: int(len(blob) * keep)] if keep > 0 else blob[: int(keep)]
    with pytest.raises(CorruptLayer, match="truncated"):
        extract(cut, tmp_path, media_type)
    with pytest.raises(CorruptLayer, match="truncated"):
        open_layer_stream(io.BytesIO(cut), media_type).read()


def test_corrupt_gzip_checksum_is_refused(tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(sample_layer()))
    blob[-8] ^= 0xFF  # the CRC32 in the trailer
    with pytest.raises(CorruptLayer, match="gzip"):
        extract(bytes(blob), tmp_path, MEDIA_LAYER_GZIP)


def test_garbage_after_zstd_frames_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptLayer, match="zstd"):
        extract(zstd_frames(sample_layer()) + b"garbage!" * 10, tmp_path, MEDIA_LAYER_ZSTD)


@pytest.mark.parametrize("blob", [b"", b"not a tar at all" * 100])
def test_not_a_tar_is_refused(tmp_path: Path, blob: bytes) -> None:
    with pytest.raises(BadArchive, match="malformed layer"):
        extract(blob, tmp_path)


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_files_are_unsupported(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holes", "wb") as f:
        f.seek(1 << 20)
        f.write(b"end")
    layer = subprocess.run(
        ["tar", f"--format={fmt}", "--sparse", "-C", src, "-cf", "-", "holes"],
        check=True,
        capture_output=True,
    ).stdout
    with pytest.raises(BadArchive, match="holes"):
        extract(layer, tmp_path / "dest")


def test_unknown_entry_type_is_unsupported(tmp_path: Path) -> None:
    info, _ = reg("weird")
    info.type = b"Z"
    with pytest.raises(BadArchive, match="weird: unsupported tar entry type"):
        extract(make_tar((info, None)), tmp_path)


def test_diff_id_mismatch_is_refused(tmp_path: Path) -> None:
    layer = sample_layer()
    with pytest.raises(DigestMismatch, match=f"expected {sha256(b'other')}, found {sha256(layer)}"):
        extract(gzip.compress(layer), tmp_path, MEDIA_LAYER_GZIP, diff_id=sha256(b"other"))
