"""An image whose manifest, config and layer descriptors name sha512 digests, the whole way: pushed
to `lazyctr serve`, pulled eagerly into one root and lazily into another, its tree read through a
lazyfs mount (every piece fetched and verified, no layer blob in the store), and run. A layer the
registry serves with a changed byte is caught: the read fails, the bad bytes are never returned.

The image is `lazyctr import`ed and re-described with sha512 (tests.registry.test_sha512): our own
writers keep producing sha256. The zstd:chunked TOC and chunk digests stay sha256, as the format
defines them; what the descriptors name is sha512.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from storage.store import Store
from tests.conftest import CliRunner
from tests.e2e.test_lazy_interop import (
    assert_same_tree,
    extract_image,
    layer_blobs,
    mounted,
    stats,
    visible_pieces,
)
from tests.lazyfs.conftest import run_cli
from tests.lazyfs.test_mount import describe
from tests.registry.conftest import lazyctr_serve
from tests.registry.test_sha512 import redescribed_with_sha512

pytestmark = pytest.mark.privileged


def test_a_sha512_image_is_pushed_pulled_lazily_verified_and_run(
    lazyctr: CliRunner, root: Path, busybox_tar: Path, tmp_path: Path
) -> None:
    publisher = tmp_path / "publisher"
    run_cli(publisher, "import", str(busybox_tar), "busybox")
    image = redescribed_with_sha512(Store(publisher), "busybox:latest", "busybox:sha512")
    assert {
        d.digest.algorithm for d in [image.descriptor, image.manifest.config, *image.manifest.layers]
    } == {"sha512"}
    server = tmp_path / "server"
    with lazyctr_serve(server) as address:
        ref = f"{address}/e2e/busybox:sha512"
        pushed = run_cli(publisher, "push", "busybox:sha512", ref).stdout.splitlines()
        assert pushed[-1].split()[:2] == ["manifest", image.descriptor.digest]

        eager_root = tmp_path / "eager"
        run_cli(eager_root, "pull", "--eager", ref)
        eager = Store(eager_root)
        expected = describe(extract_image(eager, ref, tmp_path / "extracted"))

        run_cli(root, "pull", ref)
        lazy = Store(root)
        pulled = lazy.image(ref)
        assert pulled.descriptor.digest == image.descriptor.digest and pulled.id == image.id
        assert layer_blobs(lazy, ref) == []
        with mounted(root, ref, tmp_path / "mnt") as point:
            assert_same_tree(expected, describe(point))  # reads every regular file through lazyfs
            after = stats(root, point)
            run_cli(root, "umount", str(point))
        wanted = visible_pieces(eager, ref, expected)
        assert after["verification_failures"] == 0 and after["fetch_errors"] == 0
        assert after["pieces_fetched"] == len(wanted) > 1
        cached = {p.name for p in (root / "chunks").rglob("*") if p.is_file()}
        assert cached == {digest.partition(":")[2] for digest in wanted}  # each one verified as it came
        assert layer_blobs(lazy, ref) == []

        passwd = (tmp_path / "extracted" / "etc" / "passwd").read_bytes()
        assert lazyctr("run", "--rm", ref, "cat", "/etc/passwd").stdout == passwd

        # The registry now serves a changed byte inside busybox's first piece: a fresh lazy root
        # must refuse it.
        layer = image.manifest.layers[0]
        (entry,) = (e for e in eager.layer_toc(layer).entries if e.path == "bin/busybox" and e.type == "reg")
        blob = server / "registry" / "blobs" / "sha512" / layer.digest.hex
        data = bytearray(blob.read_bytes())
        data[(entry.offset + entry.end_offset) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        other = tmp_path / "other"
        run_cli(other, "pull", ref)
        with mounted(other, ref, tmp_path / "mnt-other") as point:
            with pytest.raises(OSError) as caught:
                (point / "bin" / "busybox").read_bytes()
            assert caught.value.errno == errno.EIO
            assert stats(other, point)["verification_failures"] >= 1
            run_cli(other, "umount", str(point))
