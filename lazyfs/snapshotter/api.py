"""containerd's Snapshots API for Python, generated from the .proto files Debian ships.

golang-github-containerd-containerd-dev installs containerd's API definitions under
/usr/share/gocode. `generate()` copies the two we need (the Snapshots service and the Mount
type) with their import paths re-rooted under one package, `lazyctr_containerd` (Python cannot
import a directory called `github.com`), drops gogoproto's Go-only options (they change nothing
on the wire), and runs grpc_tools' protoc on them. `make` does it at install time; `load()` does
it on first use where that was skipped. Nothing generated is committed.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from storage.errors import StorageError

CONTAINERD_API = Path(
    os.environ.get("LAZYCTR_CONTAINERD_API", "/usr/share/gocode/src/github.com/containerd/containerd/api")
)
PACKAGE = "lazyctr_containerd"
GENERATED = Path(__file__).resolve().parent / "generated"
SOURCES = {  # Debian's file under CONTAINERD_API -> ours, under PACKAGE
    "services/snapshots/v1/snapshots.proto": "snapshots.proto",
    "types/mount.proto": "mount.proto",
}


class ApiError(StorageError):
    """The containerd API stubs cannot be made here."""


class Api(NamedTuple):
    snapshots: ModuleType  # messages: PrepareSnapshotRequest, Info, ...
    services: ModuleType  # SnapshotsServicer, SnapshotsStub, add_SnapshotsServicer_to_server
    mount: ModuleType  # containerd.types.Mount


def rewrite(text: str) -> str:
    """A containerd .proto file as protoc compiles it for Python (see the module docstring)."""
    text = text.replace('import weak "gogoproto/gogo.proto";\n', "")
    text = text.replace(
        '"github.com/containerd/containerd/api/types/mount.proto"', f'"{PACKAGE}/mount.proto"'
    )
    text = re.sub(r"\s*\[\(gogoproto\.[^\]]*\]", "", text)
    return re.sub(r"\n\s*option \(gogoproto\.[^\n]*", "", text)


def generate(target: Path = GENERATED) -> None:
    """Write the stubs under `target`/PACKAGE, replacing what was there in one rename."""
    missing = [name for name in SOURCES if not (CONTAINERD_API / name).is_file()]
    if missing:
        raise ApiError(
            f"containerd's API definitions are missing ({CONTAINERD_API / missing[0]}):"
            " install the Debian package golang-github-containerd-containerd-dev"
        )
    try:
        import grpc_tools
    except ImportError:
        raise ApiError("grpcio-tools is not installed: pip install grpcio-tools") from None
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as work:
        sources, out = Path(work, "src"), Path(work, "out")
        (sources / PACKAGE).mkdir(parents=True)
        (out / PACKAGE).mkdir(parents=True)
        for name, ours in SOURCES.items():
            (sources / PACKAGE / ours).write_text(rewrite((CONTAINERD_API / name).read_text()))
        well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
        protoc = subprocess.run(
            [
                sys.executable, "-m", "grpc_tools.protoc", f"-I{sources}", f"-I{well_known}",
                f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}",
                *(str(sources / PACKAGE / ours) for ours in SOURCES.values()),
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if protoc.returncode != 0:
            raise ApiError(f"protoc failed on containerd's API: {protoc.stderr.strip()}")
        (out / PACKAGE / "__init__.py").write_text("")
        shutil.rmtree(target / PACKAGE, ignore_errors=True)
        (out / PACKAGE).rename(target / PACKAGE)


def load() -> Api:
    """The stub modules, generated first if they are not there yet."""
    if not (GENERATED / PACKAGE / "snapshots_pb2_grpc.py").is_file():
        try:
            generate()
        except OSError as e:
            raise ApiError(f"cannot write containerd's API stubs to {GENERATED}: {e.strerror}") from None
    if str(GENERATED) not in sys.path:
        sys.path.append(str(GENERATED))  # the generated modules import each other as PACKAGE.*
    return Api(
        importlib.import_module(f"{PACKAGE}.snapshots_pb2"),
        importlib.import_module(f"{PACKAGE}.snapshots_pb2_grpc"),
        importlib.import_module(f"{PACKAGE}.mount_pb2"),
    )


if __name__ == "__main__":  # `python -m lazyfs.snapshotter.api`: what `make` runs at install time
    generate()
