"""The zstd:chunked codec: tar -> blob -> tar byte for byte, the TOC, footers and random access."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import ClassVar

import pytest
import zstandard

from storage.digest import Digest
from storage.errors import BadArchive, CorruptLayer, DigestMismatch, UnsafePath
from storage.layer_reader import FileRangeSource, LayerReader
from storage.layer_writer import WrittenLayer, write_chunked_layer
from storage.paths import clean_name
from storage.zstd_chunked import (
    CURRENT_MAGIC,
    LEGACY_CHECKSUM_KEY,
    LEGACY_MAGIC,
    LEGACY_POSITION_KEY,
    skippable_frame,
)
from tests.tarfiles import info, make_tar

CHUNK = 64 * 1024


def encode(tar_path: Path, tmp_path: Path, chunk_size: int = CHUNK) -> tuple[Path, WrittenLayer]:
    blob = tmp_path / "layer.zst"
    with open(blob, "wb") as out:
        written = write_chunked_layer(tar_path, out, chunk_size=chunk_size)
    return blob, written


def open_reader(blob: Path, written: WrittenLayer | None = None) -> LayerReader:
    annotations = written.descriptor().annotations if written else None
    return LayerReader.open(FileRangeSource(blob), annotations)


@pytest.fixture
def sample_tar(tmp_path: Path) -> Path:
    random_data = os.urandom(3 * CHUNK + 123)
    holey = b"A" * 4096 + bytes(3 * CHUNK) + b"B" * 10
    xattr = info("etc/xattr", mode=0o644)
    xattr.pax_headers = {"SCHILY.xattr.user.foo": "bar"}
    return make_tar(
        tmp_path / "sample.tar",
        [
            (info("./", tarfile.DIRTYPE, mode=0o755), None),
            (info("./etc", tarfile.DIRTYPE, mode=0o755), None),
            (info("./etc/hello", mode=0o4755, uid=1234, gid=99), b"hello world\n"),
            (info("./etc/empty", mode=0o600), b""),
            (info("./etc/link", tarfile.LNKTYPE, linkname="./etc/hello", mode=0o4755), None),
            (info("./etc/sym", tarfile.SYMTYPE, linkname="/etc/hello", mode=0o777), None),
            (info("./dev", tarfile.DIRTYPE, mode=0o755), None),
            (info("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
            (info("./dev/fifo", tarfile.FIFOTYPE, mode=0o644), None),
            (xattr, b"x"),
            (info("./data/random", mode=0o644), random_data),
            (info("./data/holey", mode=0o644), holey),
        ],
    )


def test_blob_decompresses_to_the_input_tar_byte_for_byte(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    original = sample_tar.read_bytes()
    plain = subprocess.run(["zstd", "-dc", str(blob)], capture_output=True, check=True).stdout
    assert plain == original
    assert written.diff_id == Digest.of(original)
    assert written.digest == Digest.of(blob.read_bytes())
    assert written.size == blob.stat().st_size


def test_gnu_tar_lists_and_extracts_our_blob(sample_tar: Path, tmp_path: Path) -> None:
    blob, _ = encode(sample_tar, tmp_path)
    listing = subprocess.run(["tar", "--zstd", "-tvf", str(blob)], capture_output=True, text=True, check=True)
    assert "./data/random" in listing.stdout and "./etc/link link to ./etc/hello" in listing.stdout
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(blob), "-C", str(out)], check=True)
    assert (out / "etc/hello").read_bytes() == b"hello world\n"


def test_toc_describes_every_entry_like_podman(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    by_path = {e.path: e for e in open_reader(blob, written).toc.entries}
    assert by_path[""].name == "./" and by_path[""].type == "dir"
    hello = by_path["etc/hello"]
    assert (hello.name, hello.type, hello.mode, hello.uid, hello.gid) == (
        "./etc/hello",
        "reg",
        0o4755,
        1234,
        99,
    )
    assert hello.digest == Digest.of(b"hello world\n") and hello.modtime == "2023-11-14T22:13:20Z"
    assert by_path["etc/empty"].size == 0 and not by_path["etc/empty"].chunks
    assert (by_path["etc/link"].type, by_path["etc/link"].link_name) == ("hardlink", "etc/hello")
    assert (by_path["etc/sym"].type, by_path["etc/sym"].link_name) == ("symlink", "/etc/hello")
    null = by_path["dev/null"]
    assert (null.type, null.dev_major, null.dev_minor) == ("char", 1, 3)
    assert by_path["dev/fifo"].type == "fifo"
    assert by_path["etc/xattr"].xattrs == {"user.foo": "YmFy"}


def test_large_files_are_split_into_chunks_each_in_its_own_frame(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    reader = open_reader(blob, written)
    random_entry = reader.entry("data/random")
    assert [c.size for c in random_entry.chunks] == [CHUNK, CHUNK, CHUNK, 123]
    data = blob.read_bytes()
    for chunk in random_entry.chunks:
        frame = data[chunk.frame_start : chunk.frame_end]
        plain = zstandard.ZstdDecompressor().decompress(frame)  # exactly one frame, exactly one chunk
        assert hashlib.sha256(plain).hexdigest() == chunk.digest.hex if chunk.digest else False


def test_holes_become_zeros_chunks(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    reader = open_reader(blob, written)
    holey = reader.entry("data/holey")
    assert [c.zeros for c in holey.chunks] == [False, True, True, False]
    assert reader.read_file(holey) == b"A" * 4096 + bytes(3 * CHUNK) + b"B" * 10
    raw = json.loads(zstandard.ZstdDecompressor().decompress(_toc_bytes(blob)))
    assert [e.get("chunkType") for e in raw["entries"] if e["name"] == "./data/holey"] == [
        None, "zeros", "zeros", None,
    ]  # fmt: skip


def _toc_bytes(blob: Path) -> bytes:
    data = blob.read_bytes()
    offset, length = struct.unpack("<2Q", data[-40:-24])
    return data[offset : offset + length]


def test_every_file_reads_back_by_range(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    reader = open_reader(blob, written)
    with tarfile.open(sample_tar) as tar:
        for member in tar:
            if member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                assert reader.read_file(reader.entry(clean_name(member.name))) == extracted.read()


def test_one_chunk_reads_without_the_rest_of_the_blob(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)

    class CountingSource(FileRangeSource):
        ranges: ClassVar[list[tuple[int, int]]] = []

        def read_range(self, offset: int, length: int) -> bytes:
            self.ranges.append((offset, length))
            return super().read_range(offset, length)

    source = CountingSource(blob)
    reader = LayerReader.open(source, written.descriptor().annotations)
    entry = reader.entry("data/random")
    source.ranges.clear()
    assert (
        reader.read_chunk(entry, entry.chunks[2])
        == _tar_member(sample_tar, "./data/random")[2 * CHUNK : 3 * CHUNK]
    )
    assert sum(length for _, length in source.ranges) < CHUNK + 1024  # one compressed frame


def _tar_member(tar_path: Path, name: str) -> bytes:
    with tarfile.open(tar_path) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_writes_the_legacy_footer_and_annotations(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    tail = blob.read_bytes()[-48:]
    assert tail[:8] == b"\x50\x2a\x4d\x18" + struct.pack("<I", 40) and tail.endswith(LEGACY_MAGIC)
    offset, length, ulength, kind = struct.unpack("<4Q", tail[8:40])
    assert kind == 1
    annotations = written.descriptor().annotations
    assert annotations[LEGACY_POSITION_KEY] == f"{offset}:{length}:{ulength}:1"
    assert annotations[LEGACY_CHECKSUM_KEY] == Digest.of(_toc_bytes(blob))
    assert written.descriptor().media_type == "application/vnd.oci.image.layer.v1.tar+zstd"


def test_reads_the_current_footer_version(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    data = blob.read_bytes()[:-48]
    position = written.toc_position
    tar_split = zstandard.ZstdCompressor().compress(b'{"type":2}\n')
    split_offset = len(data) + 8
    data += skippable_frame(tar_split)
    footer = struct.pack(
        "<7Q", position.offset, position.length, position.uncompressed_length, 1,
        split_offset, len(tar_split), 11,
    ) + CURRENT_MAGIC  # fmt: skip
    current = tmp_path / "current.zst"
    current.write_bytes(data + skippable_frame(footer))
    reader = LayerReader.open(FileRangeSource(current))
    assert reader.read_file(reader.entry("etc/hello")) == b"hello world\n"


def test_toc_digest_mismatch_is_refused(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    annotations = dict(written.descriptor().annotations)
    annotations[LEGACY_CHECKSUM_KEY] = str(Digest.of(b"something else"))
    with pytest.raises(DigestMismatch, match="layer TOC"):
        LayerReader.open(FileRangeSource(blob), annotations)


def test_corrupted_chunk_is_never_returned(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    reader = open_reader(blob, written)
    entry = reader.entry("data/random")
    chunk = entry.chunks[1]
    data = bytearray(blob.read_bytes())
    # Re-encode a different payload of the same size into the chunk's frame slot.
    fake = zstandard.ZstdCompressor().compress(b"\x00" * chunk.size)
    frame_length = chunk.frame_end - chunk.frame_start
    assert len(fake) < frame_length
    data[chunk.frame_start : chunk.frame_start + len(fake)] = fake
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        open_reader(blob, written).read_chunk(entry, chunk)


def test_truncated_blob_is_refused(sample_tar: Path, tmp_path: Path) -> None:
    blob, _ = encode(sample_tar, tmp_path)
    blob.write_bytes(blob.read_bytes()[:-100])
    with pytest.raises(CorruptLayer, match="footer"):
        open_reader(blob)


def test_toc_pointing_outside_the_blob_is_refused(sample_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(sample_tar, tmp_path)
    annotations = dict(written.descriptor().annotations)
    annotations[LEGACY_POSITION_KEY] = f"{written.size}:100:100:1"
    with pytest.raises(CorruptLayer, match="outside the blob"):
        LayerReader.open(FileRangeSource(blob), annotations)


def test_toc_with_escaping_or_duplicate_entries_is_refused(tmp_path: Path) -> None:
    def blob_with(entries: list[dict[str, object]]) -> Path:
        toc = json.dumps({"version": 1, "entries": entries}).encode()
        compressed = zstandard.ZstdCompressor().compress(toc)
        head = zstandard.ZstdCompressor().compress(b"\0" * 1024)
        offset = len(head) + 8
        footer = struct.pack("<4Q", offset, len(compressed), len(toc), 1) + LEGACY_MAGIC
        path = tmp_path / "bad.zst"
        path.write_bytes(head + skippable_frame(compressed) + skippable_frame(footer))
        return path

    with pytest.raises(UnsafePath):
        open_reader(blob_with([{"type": "reg", "name": "../../etc/passwd"}]))
    with pytest.raises(CorruptLayer, match="duplicate"):
        open_reader(blob_with([{"type": "dir", "name": "a"}, {"type": "dir", "name": "./a/"}]))
    with pytest.raises(CorruptLayer, match="outside"):
        open_reader(blob_with([{"type": "reg", "name": "f", "size": 5, "offset": 1, "endOffset": 10**9}]))
    with pytest.raises(CorruptLayer, match="invalid size"):
        open_reader(blob_with([{"type": "reg", "name": "f", "size": -1}]))


@pytest.mark.parametrize(
    ("members", "error", "message"),
    [
        ([(info("../evil"), b"x")], UnsafePath, "escapes the root"),
        ([(info("/etc/passwd"), b"x")], UnsafePath, "absolute path"),
        ([(info("a"), b"x"), (info("./a"), b"y")], BadArchive, "duplicate entry"),
    ],
)
def test_bad_tar_entries_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], error: type[Exception], message: str
) -> None:
    tar = make_tar(tmp_path / "bad.tar", members)
    with pytest.raises(error, match=message):
        encode(tar, tmp_path)


def test_malformed_and_truncated_tars_are_refused(sample_tar: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(BadArchive):
        encode(garbage, tmp_path)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(sample_tar.read_bytes()[:5000])
    with pytest.raises(BadArchive, match="truncated"):
        encode(truncated, tmp_path)


def test_busybox_rootfs_round_trips(busybox_tar: Path, tmp_path: Path) -> None:
    blob, written = encode(busybox_tar, tmp_path, chunk_size=256 * 1024)
    assert zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(blob.read_bytes()), read_across_frames=True
    ).read() == (busybox_tar.read_bytes())
    reader = open_reader(blob, written)
    assert reader.read_file(reader.entry("bin/busybox")) == Path("/bin/busybox").read_bytes()
    assert len(reader.toc.entries) > 250  # the applet symlinks


def test_nanosecond_mtimes_survive_in_the_toc(tmp_path: Path) -> None:
    member = info("precise")
    member.pax_headers = {"mtime": "1704164645.123456789"}
    blob, written = encode(make_tar(tmp_path / "t.tar", [(member, b"x")]), tmp_path)
    entry = open_reader(blob, written).entry("precise")
    assert entry.modtime == "2024-01-02T03:04:05.123456789Z"
    assert entry.mtime_ns == 1704164645123456789


def _hostile_blob(
    tmp_path: Path, entries: list[dict[str, object]], body: bytes, ulen: int | None = None
) -> Path:
    toc = json.dumps({"version": 1, "entries": entries}).encode()
    compressed = zstandard.ZstdCompressor().compress(toc)
    footer_toc = struct.pack("<4Q", len(body) + 8, len(compressed), ulen or len(toc), 1) + LEGACY_MAGIC
    path = tmp_path / "hostile.zst"
    path.write_bytes(body + skippable_frame(compressed) + skippable_frame(footer_toc))
    return path


def test_a_decompression_bomb_is_read_no_further_than_the_toc_promises(tmp_path: Path) -> None:
    import resource

    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 << 20))  # 256 MiB of zeros, ~8 KiB
    entry = {"type": "reg", "name": "f", "size": 1, "digest": str(Digest.of(b"\0")), "offset": 0,
             "endOffset": len(bomb)}  # fmt: skip
    reader = open_reader(_hostile_blob(tmp_path, [entry], bomb))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert reader.read_file(reader.entry("f")) == b"\0"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB: no 256 MiB
    with pytest.raises(CorruptLayer, match="absurdly large"):
        chunky = dict(entry, size=1 << 30, chunkSize=1 << 30)
        open_reader(_hostile_blob(tmp_path, [chunky], bomb))


def test_a_toc_larger_than_its_footer_says_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptLayer, match="expected 10"):
        open_reader(_hostile_blob(tmp_path, [{"type": "dir", "name": "d" * 1000}], b"", ulen=10))


def test_a_promised_toc_digest_is_checked_even_without_a_position(sample_tar: Path, tmp_path: Path) -> None:
    blob, _ = encode(sample_tar, tmp_path)
    with pytest.raises(DigestMismatch, match="layer TOC"):
        LayerReader.open(FileRangeSource(blob), {LEGACY_CHECKSUM_KEY: str(Digest.of(b"other"))})


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(info("h", tarfile.LNKTYPE, linkname="missing"), None)], "does not point to an earlier file"),
        (
            [(info("d", tarfile.DIRTYPE), None), (info("h", tarfile.LNKTYPE, linkname="d"), None)],
            "earlier file",
        ),
        ([(info("h", tarfile.LNKTYPE, linkname="h"), None)], "earlier file"),
    ],
)
def test_hard_links_must_point_to_an_earlier_file(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    with pytest.raises(BadArchive, match=message):
        encode(make_tar(tmp_path / "links.tar", members), tmp_path)


@pytest.mark.parametrize("mtime", ["99999999999999", "-99999999999999"])
def test_times_out_of_range_are_refused(tmp_path: Path, mtime: str) -> None:
    member = info("t")
    member.pax_headers = {"mtime": mtime}
    with pytest.raises(BadArchive, match="out of range"):
        encode(make_tar(tmp_path / "t.tar", [(member, b"x")]), tmp_path)


def test_long_zero_padding_is_kept_and_garbage_after_it_refused(sample_tar: Path, tmp_path: Path) -> None:
    padded = tmp_path / "padded.tar"
    padded.write_bytes(sample_tar.read_bytes() + bytes(3 << 20))  # read in pieces, kept byte for byte
    _, written = encode(padded, tmp_path)
    assert written.diff_id == Digest.of(padded.read_bytes())
    garbage = tmp_path / "garbage-after.tar"
    garbage.write_bytes(padded.read_bytes() + b"\x01")
    with pytest.raises(BadArchive, match="garbage after its last entry"):
        encode(garbage, tmp_path)
