"""COPY and ADD into an upper directory: sources from a real context, a real image (busybox) and a
real HTTP server; the upper directory is turned into a real layer and read back through the store."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from aiohttp import web

from builder.context import BuildContext
from builder.copier import parse_chmod
from builder.copy import MULTIPLE_SOURCES, CopyRequest, copy_digest, copy_step
from builder.dockerignore import DockerIgnore
from builder.errors import BuildError
from builder.image_files import ImageFiles
from builder.syntax import Heredoc
from storage.diff import upper_to_tar
from storage.importer import add_layer, import_tarball
from storage.store import Image, Store
from tests.builder.trees import write_tree
from tests.tarfiles import info, make_tar

NS = 1_000_000_000
T0 = 1_600_000_000 * NS


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("store") / "root")


@pytest.fixture(scope="module")
def busybox(store: Store, busybox_tar: Path) -> Image:
    with open(busybox_tar, "rb") as f:
        return import_tarball(store, f, "busybox")


@pytest.fixture(scope="module")
def base(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """A small image with users, a directory symlink and an unusual directory mode."""
    tar = make_tar(
        tmp_path_factory.mktemp("base") / "base.tar",
        [
            (info("etc", tarfile.DIRTYPE), None),
            (info("etc/passwd"), b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"),
            (info("etc/group"), b"root:x:0:\nstaff:x:50:\napp:x:1001:\n"),
            (info("srv", tarfile.DIRTYPE, mode=0o750, uid=7, gid=8), None),
            (info("srv/old"), b"old"),
            (info("data", tarfile.SYMTYPE, linkname="/srv"), None),
            (info("file"), b"a file"),
        ],
    )
    with open(tar, "rb") as f:
        return import_tarball(store, f, "base")


@pytest.fixture
def target(store: Store, busybox: Image) -> Iterator[ImageFiles]:
    with ImageFiles.open(store, busybox) as files:
        yield files


@pytest.fixture
def base_files(store: Store, base: Image) -> Iterator[ImageFiles]:
    with ImageFiles.open(store, base) as files:
        yield files


def write(root: Path, files: dict[str, bytes | str], mtime_ns: int = T0) -> Path:
    """A directory with `files` (a str value is a symlink target); every mtime is `mtime_ns`."""
    return write_tree(root, files, mtime_ns)


def ctx(root: Path, ignore: str | None = None) -> BuildContext:
    return BuildContext(root, DockerIgnore.parse(ignore)) if ignore is not None else BuildContext.plain(root)


def step(
    tmp_path: Path,
    request: CopyRequest,
    source: BuildContext | ImageFiles,
    target: ImageFiles,
    clamp_mtime_ns: int | None = None,
) -> Path:
    upper = tmp_path / "upper"
    upper.mkdir()
    copy_step(request, source, target, upper, clamp_mtime_ns)
    return upper


def listing(upper: Path) -> dict[str, str]:
    """path -> `kind mode uid:gid` (+ `-> target` for links) for everything in the upper dir."""
    out = {}
    for path in sorted(upper.rglob("*")):
        st = path.lstat()
        kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
        text = f"{kind} {stat.S_IMODE(st.st_mode):o} {st.st_uid}:{st.st_gid}"
        if kind == "l":
            text += f" -> {os.readlink(path)}"
        out[path.relative_to(upper).as_posix()] = text
    return out


# -- COPY from the context ----------------------------------------------------------------------


def test_a_file_goes_into_a_directory_dest_or_becomes_the_dest(tmp_path: Path, target: ImageFiles) -> None:
    context = ctx(write(tmp_path / "ctx", {"app.sh": b"#!/bin/sh\n"}))
    os.chmod(context.root / "app.sh", 0o750)
    os.utime(context.root / "app.sh", ns=(T0, T0))
    upper = step(tmp_path, CopyRequest(["app.sh"], "/opt/"), context, target)
    assert listing(upper) == {"opt": "d 755 0:0", "opt/app.sh": "f 750 0:0"}
    assert (upper / "opt/app.sh").stat().st_mtime_ns == T0  # kept from the context
    upper2 = tmp_path / "u2"
    upper2.mkdir()
    copy_step(CopyRequest(["app.sh"], "/opt/run"), context, target, upper2)
    assert listing(upper2) == {"opt": "d 755 0:0", "opt/run": "f 750 0:0"}


def test_a_directory_source_copies_its_contents_and_keeps_links(tmp_path: Path, target: ImageFiles) -> None:
    context = ctx(
        write(tmp_path / "ctx", {"src/a": b"a", "src/sub/b": b"b", "src/link": "sub/b", "src/abs": "/etc/x"})
    )
    upper = step(tmp_path, CopyRequest(["src"], "dst", workdir="/app"), context, target)
    assert listing(upper) == {
        "app": "d 755 0:0",
        "app/dst": "d 755 0:0",
        "app/dst/a": "f 644 0:0",
        "app/dst/abs": "l 777 0:0 -> /etc/x",  # links inside a directory are copied, not followed
        "app/dst/link": "l 777 0:0 -> sub/b",
        "app/dst/sub": "d 755 0:0",
        "app/dst/sub/b": "f 644 0:0",
    }
    assert (upper / "app/dst/sub").stat().st_mtime_ns == T0  # set after its children were written


def test_a_symlink_given_as_the_source_is_followed(tmp_path: Path, target: ImageFiles) -> None:
    context = ctx(write(tmp_path / "ctx", {"real/f": b"data", "alias": "real/f", "dirlink": "real"}))
    upper = step(tmp_path, CopyRequest(["alias", "dirlink"], "/x/"), context, target)
    assert listing(upper) == {"x": "d 755 0:0", "x/alias": "f 644 0:0", "x/f": "f 644 0:0"}
    assert (upper / "x/alias").read_bytes() == b"data"


def test_wildcards_match_with_go_rules(tmp_path: Path, target: ImageFiles) -> None:
    names = ["a1.txt", "a2.txt", "b.txt", "a3.md", ".a.txt"]
    context = ctx(write(tmp_path / "ctx", dict.fromkeys(names, b"")))
    upper = step(tmp_path, CopyRequest(["a[0-9].txt", "*.md"], "/w/"), context, target)
    assert sorted(listing(upper)) == ["w", "w/a1.txt", "w/a2.txt", "w/a3.md"]


def test_an_empty_wildcard_is_fine_next_to_a_source_that_exists(tmp_path: Path, target: ImageFiles) -> None:
    context = ctx(write(tmp_path / "ctx", {"package.json": b"{}"}))
    upper = step(tmp_path, CopyRequest(["package.json", "yarn.loc[k]"], "/app/"), context, target)
    assert sorted(listing(upper)) == ["app", "app/package.json"]


def test_existing_parents_keep_their_metadata_new_ones_are_root_0755(
    tmp_path: Path, base_files: ImageFiles
) -> None:
    context = ctx(write(tmp_path / "ctx", {"f": b"x"}))
    upper = step(tmp_path, CopyRequest(["f"], "/srv/new/deep/"), context, base_files, clamp_mtime_ns=T0)
    assert listing(upper) == {
        "srv": "d 750 7:8",  # as the image has it: the layer must not change it
        "srv/new": "d 755 0:0",
        "srv/new/deep": "d 755 0:0",
        "srv/new/deep/f": "f 644 0:0",
    }
    assert (upper / "srv/new").stat().st_mtime_ns == T0


def test_dest_symlinks_in_the_image_are_followed(tmp_path: Path, base_files: ImageFiles) -> None:
    context = ctx(write(tmp_path / "ctx", {"f": b"x"}))
    upper = step(tmp_path, CopyRequest(["f"], "/data"), context, base_files)  # /data -> /srv, a directory
    assert sorted(listing(upper)) == ["srv", "srv/f"]


def test_link_does_not_look_at_the_image(tmp_path: Path, base_files: ImageFiles) -> None:
    context = ctx(write(tmp_path / "ctx", {"f": b"x"}))
    upper = step(tmp_path, CopyRequest(["f"], "/srv/in/", link=True), context, base_files)
    assert listing(upper) == {"srv": "d 755 0:0", "srv/in": "d 755 0:0", "srv/in/f": "f 644 0:0"}
    upper2 = tmp_path / "u2"
    upper2.mkdir()
    copy_step(CopyRequest(["f"], "/data", link=True), context, base_files, upper2)
    assert listing(upper2) == {"data": "f 644 0:0"}  # not followed into /srv: the base is unknown


def test_chown_by_name_and_number_and_chmod(tmp_path: Path, base_files: ImageFiles) -> None:
    context = ctx(write(tmp_path / "ctx", {"d/f": b"x", "d/g": b"y"}))
    upper = step(tmp_path, CopyRequest(["d"], "/new/d", chown="app", chmod="640"), context, base_files)
    assert listing(upper) == {
        "new": "d 755 1000:1001",  # created parents belong to the --chown owner, as in BuildKit
        "new/d": "d 640 1000:1001",
        "new/d/f": "f 640 1000:1001",
        "new/d/g": "f 640 1000:1001",
    }
    assert base_files.user_ids("app", "staff") == (1000, 50)
    assert base_files.user_ids("42", None) == (42, 42)
    assert base_files.user_ids("app", "7") == (1000, 7)


def test_symbolic_chmod() -> None:
    assert parse_chmod("u+x,g-r")(0o644, False) == 0o704
    assert parse_chmod("a+X")(0o644, False) == 0o644
    assert parse_chmod("a+X")(0o644, True) == 0o755
    assert parse_chmod("go=r")(0o777, False) == 0o744
    assert parse_chmod("0755")(0o600, False) == 0o755


def test_excludes_and_dockerignore_hide_files(tmp_path: Path, target: ImageFiles) -> None:
    names = ["src/keep.py", "src/skip.log", "src/cache/x", "secret"]
    root = write(tmp_path / "ctx", dict.fromkeys(names, b""))
    context = ctx(root, "secret\n**/cache\n")
    upper = step(tmp_path, CopyRequest(["src"], "/app", excludes=("*.log",)), context, target)
    assert sorted(listing(upper)) == ["app", "app/keep.py"]
    with pytest.raises(BuildError, match="file not found in build context: secret"):
        copy_step(CopyRequest(["secret"], "/"), context, target, tmp_path / "upper")


def test_hard_links_stay_hard_links(tmp_path: Path, target: ImageFiles) -> None:
    root = write(tmp_path / "ctx", {"d/a": b"same"})
    os.link(root / "d/a", root / "d/b")
    upper = step(tmp_path, CopyRequest(["d"], "/d"), ctx(root), target)
    assert (upper / "d/a").stat().st_ino == (upper / "d/b").stat().st_ino


def test_heredoc_becomes_a_0644_file(tmp_path: Path, target: ImageFiles) -> None:
    heredoc = Heredoc("EOF", "\thello\n\tworld\n", expand=False, chomp=True)
    upper = step(
        tmp_path,
        CopyRequest(["<<EOF"], "/etc/motd", heredocs=(heredoc,)),
        ctx(write(tmp_path / "ctx", {})),
        target,
    )
    assert (upper / "etc/motd").read_bytes() == b"hello\nworld\n"
    assert listing(upper) == {"etc": "d 755 0:0", "etc/motd": "f 644 0:0"}


def test_clamped_mtimes(tmp_path: Path, target: ImageFiles) -> None:
    context = ctx(write(tmp_path / "ctx", {"f": b"x"}, mtime_ns=T0 + 100 * NS))
    upper = step(tmp_path, CopyRequest(["f"], "/f"), context, target, clamp_mtime_ns=T0)
    assert (upper / "f").stat().st_mtime_ns == T0


def test_the_layer_reads_back_through_the_store(
    tmp_path: Path, store: Store, busybox: Image, target: ImageFiles
) -> None:
    context = ctx(write(tmp_path / "ctx", {"conf/app.ini": b"[app]\n", "conf/run": "app.ini"}))
    upper = step(tmp_path, CopyRequest(["conf"], "/etc/app/", chown="nobody"), context, target)
    tar = tmp_path / "layer.tar"
    upper_to_tar(upper, tar)
    image = add_layer(store, busybox, tar, "copied", "COPY conf /etc/app/")
    with ImageFiles.open(store, image) as files:
        assert files.read("/etc/app/app.ini") == b"[app]\n"
        assert files.read("/etc/app/run") == b"[app]\n"
        assert files.read("/etc/passwd") == target.read("/etc/passwd")  # the copied-up /etc is only metadata
        node = files.tree.lookup("/etc/app/app.ini")
        assert (node.entry.uid, node.entry.gid) == (65534, 65534)
        assert files.tree.lookup("/etc").entry.mode & 0o7777 == 0o755


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (CopyRequest(["missing"], "/"), "COPY failed: file not found in build context: missing"),
        (CopyRequest(["nomatch*"], "/"), "COPY failed: file not found in build context: nomatch*"),
        (CopyRequest(["../x"], "/"), "COPY failed: ../x: outside the build context"),
        (CopyRequest(["out"], "/"), "COPY failed: out: outside the build context"),
        (CopyRequest(["up/f"], "/"), "COPY failed: up/f: outside the build context"),
        (CopyRequest(["a", "b"], "/dir"), MULTIPLE_SOURCES),
        (CopyRequest(["*.txt"], "/dir"), MULTIPLE_SOURCES),
        (CopyRequest(["a"], "/", chown="nobody"), "unable to find user nobody"),
        (CopyRequest(["a"], "/", chown="app:wheel"), "unable to find group wheel"),
        (CopyRequest(["a"], "/", chown="app:"), "invalid --chown"),
        (CopyRequest(["a"], "/", chmod="u+q"), "invalid --chmod"),
        (CopyRequest(["a"], "/", chmod="77777"), "invalid --chmod"),
        (CopyRequest(["[a"], "/"), "bad pattern"),
        (CopyRequest(["a"], "/file/x"), "cannot copy to /file: not a directory"),
        (CopyRequest(["dir"], "/file"), "cannot copy to /file: not a directory"),
        (CopyRequest(["http://127.0.0.1/x"], "/"), "source can't be a URL for COPY"),
        (CopyRequest([], "/"), "no source files were specified"),
    ],
)
def test_bad_copies_fail_with_one_clear_line(
    tmp_path: Path, base_files: ImageFiles, request_: CopyRequest, message: str
) -> None:
    root = write(tmp_path / "ctx", {"a": b"", "b": b"", "1.txt": b"", "2.txt": b"", "dir/x": b""})
    (root / "out").symlink_to("/etc/passwd")
    (tmp_path / "outside").mkdir()
    (root / "up").symlink_to("../outside")
    upper = tmp_path / "upper"
    upper.mkdir()
    with pytest.raises(BuildError) as raised:
        copy_step(request_, ctx(root), base_files, upper)
    assert message in str(raised.value) and "\n" not in str(raised.value)


# -- COPY --from an image ------------------------------------------------------------------------


def test_copy_from_an_image_keeps_owners_and_matches_wildcards(
    tmp_path: Path, base_files: ImageFiles, target: ImageFiles
) -> None:
    upper = step(tmp_path, CopyRequest(["/data/ol?", "/etc/pass*"], "/from/"), base_files, target)
    assert listing(upper) == {"from": "d 755 0:0", "from/old": "f 644 0:0", "from/passwd": "f 644 0:0"}
    assert (upper / "from/passwd").read_bytes().startswith(b"root:x:0:0")
    upper2 = tmp_path / "u2"
    upper2.mkdir()
    copy_step(CopyRequest(["/srv"], "/srv2"), base_files, target, upper2)
    assert listing(upper2) == {"srv2": "d 750 7:8", "srv2/old": "f 644 0:0"}
    with pytest.raises(BuildError, match="file not found in build context: /nope"):
        copy_step(CopyRequest(["/nope"], "/"), base_files, target, tmp_path / "upper")


def test_scratch_is_empty(tmp_path: Path, store: Store) -> None:
    context = ctx(write(tmp_path / "ctx", {"f": b"x"}))
    with ImageFiles.open(store, None) as scratch:
        upper = step(tmp_path, CopyRequest(["f"], "/"), context, scratch)
        with pytest.raises(BuildError, match="unable to find user app"):
            scratch.user_ids("app", None)
        with pytest.raises(BuildError, match="no such file"):
            scratch.read("/etc/passwd")
    assert listing(upper) == {"f": "f 644 0:0"}


# -- copy_digest ----------------------------------------------------------------------------------


def test_the_digest_follows_contents_and_modes_not_mtimes(tmp_path: Path, base_files: ImageFiles) -> None:
    root = write(tmp_path / "ctx", {"src/a": b"a", "src/b": b"b", "src/l": "a", "other": b"o"})
    request = CopyRequest(["src"], "/app")
    first = copy_digest(request, ctx(root))
    assert len(first) == 64 and copy_digest(request, ctx(root)) == first
    os.utime(root / "src/a", ns=(T0 + NS, T0 + NS))
    assert copy_digest(request, ctx(root)) == first  # mtimes are not part of it
    (root / "other").write_bytes(b"changed")
    assert copy_digest(request, ctx(root)) == first  # not read by this step
    (root / "src/a").write_bytes(b"A")
    second = copy_digest(request, ctx(root))
    assert second != first
    os.chmod(root / "src/b", 0o600)
    assert copy_digest(request, ctx(root)) != second
    assert copy_digest(request, ctx(root, "src/b\n")) != copy_digest(request, ctx(root))
    assert copy_digest(CopyRequest(["/etc/passwd"], "/"), base_files) != copy_digest(
        CopyRequest(["/etc/group"], "/"), base_files
    )


def test_the_digest_of_the_same_tree_elsewhere_is_the_same(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {"x/1": b"1", "x/d/2": b"2", "x/link": "d/2"}
    one = copy_digest(CopyRequest(["x"], "/"), ctx(write(tmp_path / "one", files)))
    two = copy_digest(CopyRequest(["x"], "/"), ctx(write(tmp_path / "two", files, mtime_ns=T0 + 7 * NS)))
    assert one == two


# -- ADD ------------------------------------------------------------------------------------------


def tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            member = info(name, uid=33, gid=34)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return out.getvalue()


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda data: data,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_add_extracts_local_archives_by_content(tmp_path: Path, target: ImageFiles, compression: str) -> None:
    archive = COMPRESSORS[compression](tar_bytes({"pkg/bin/tool": b"tool", "pkg/README": b"hi"}))
    context = ctx(write(tmp_path / "ctx", {"download.bin": archive}))  # the name says nothing
    upper = step(tmp_path, CopyRequest(["download.bin"], "/opt", add=True), context, target)
    assert listing(upper) == {
        "opt": "d 755 0:0",
        "opt/pkg": "d 755 0:0",
        "opt/pkg/README": "f 644 33:34",  # the archive's owners, like tar -x as root
        "opt/pkg/bin": "d 755 0:0",
        "opt/pkg/bin/tool": "f 644 33:34",
    }


def test_add_copies_what_is_not_a_tar_and_copy_never_extracts(tmp_path: Path, target: ImageFiles) -> None:
    files: dict[str, bytes | str] = {"notes.gz": gzip.compress(b"just text"), "t.tar": tar_bytes({"a": b""})}
    context = ctx(write(tmp_path / "ctx", files))
    upper = step(tmp_path, CopyRequest(["notes.gz"], "/x/", add=True), context, target)
    assert sorted(listing(upper)) == ["x", "x/notes.gz"]
    upper2 = tmp_path / "u2"
    upper2.mkdir()
    copy_step(CopyRequest(["t.tar"], "/x/"), context, target, upper2)
    assert sorted(listing(upper2)) == ["x", "x/t.tar"]


def test_add_refuses_an_archive_that_escapes(tmp_path: Path, target: ImageFiles) -> None:
    evil = tar_bytes({"../../etc/evil": b"x"})
    context = ctx(write(tmp_path / "ctx", {"evil.tar": evil}))
    upper = tmp_path / "upper"
    upper.mkdir()
    with pytest.raises(BuildError, match=r"ADD failed: evil\.tar: cannot extract archive"):
        copy_step(CopyRequest(["evil.tar"], "/", add=True), context, target, upper)
    assert not (tmp_path / "etc").exists()


def test_add_refuses_git_sources(tmp_path: Path, target: ImageFiles) -> None:
    with pytest.raises(BuildError, match="git sources are not supported"):
        copy_step(
            CopyRequest(["https://github.com/moby/buildkit.git"], "/src", add=True, keep_git_dir=True),
            ctx(write(tmp_path / "ctx", {})),
            target,
            tmp_path,
        )


class Server:
    """A real aiohttp server on 127.0.0.1, in a thread, serving fixed files."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        data = self.files.get(request.path)
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, headers={"Last-Modified": "Sun, 13 Sep 2020 12:26:40 GMT"})

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server() -> Iterator[Server]:
    archive = gzip.compress(tar_bytes({"inside": b"x"}))
    served = Server({"/files/tool.tar.gz": archive, "/files/hello.txt": b"hello"})
    yield served
    served.stop()


def test_add_url_downloads_a_0600_file_that_is_never_extracted(
    tmp_path: Path, target: ImageFiles, server: Server
) -> None:
    url = server.url("/files/tool.tar.gz")
    upper = step(tmp_path, CopyRequest([url], "/dl/", add=True), ctx(write(tmp_path / "ctx", {})), target)
    assert listing(upper) == {"dl": "d 755 0:0", "dl/tool.tar.gz": "f 600 0:0"}
    assert (upper / "dl/tool.tar.gz").read_bytes() == server.files["/files/tool.tar.gz"]
    assert (upper / "dl/tool.tar.gz").stat().st_mtime_ns == 1_600_000_000 * NS  # from Last-Modified


def test_add_url_checksum_and_digest(tmp_path: Path, target: ImageFiles, server: Server) -> None:
    url = server.url("/files/hello.txt")
    good = "sha256:" + hashlib.sha256(b"hello").hexdigest()
    context = ctx(write(tmp_path / "ctx", {}))
    with_checksum = CopyRequest([url], "/h", add=True, checksum=good, chmod="644")
    digest = copy_digest(with_checksum, context)
    assert server.requests == []  # the checksum stands for the content: nothing to download
    assert copy_digest(CopyRequest([url], "/h", add=True), context) == digest  # downloaded and hashed
    assert server.requests == ["/files/hello.txt"]
    upper = step(tmp_path, with_checksum, context, target)
    assert listing(upper) == {"h": "f 644 0:0"}
    bad = "sha256:" + "0" * 64
    with pytest.raises(BuildError, match=f"checksum mismatch for {url}: expected {bad}, got {good}"):
        copy_step(CopyRequest([url], "/h", add=True, checksum=bad), context, target, tmp_path)
    with pytest.raises(BuildError, match="invalid --checksum"):
        copy_step(CopyRequest([url], "/h", add=True, checksum="md5:abc"), context, target, tmp_path)


def test_add_url_errors(tmp_path: Path, target: ImageFiles, server: Server) -> None:
    context = ctx(write(tmp_path / "ctx", {}))
    missing = server.url("/files/missing")
    with pytest.raises(BuildError, match=f"ADD failed: {missing}: HTTP 404"):
        copy_step(CopyRequest([missing], "/x", add=True), context, target, tmp_path)
    with pytest.raises(BuildError, match=re.escape("ADD failed: http://127.0.0.1:9/x: ")):
        copy_step(CopyRequest(["http://127.0.0.1:9/x"], "/x", add=True), context, target, tmp_path)


def test_a_file_system_error_is_one_line(tmp_path: Path, target: ImageFiles) -> None:
    context = ctx(write(tmp_path / "ctx", {"d/f": b"x"}))
    with pytest.raises(BuildError, match=r"^COPY failed: .*/gone/d: No such file or directory$"):
        copy_step(CopyRequest(["d"], "/d"), context, target, tmp_path / "gone")
