"""Signatures between lazyctr and Debian's skopeo, through `lazyctr serve`, and a signed lazy run.

Debian builds skopeo 1.9 and podman 4.3 with sigstore signing *and* verifying disabled ("Debian-local
change: sigstore disabled": `--sign-by-sigstore-private-key` and a `sigstoreSigned` policy that
applies both fail), but they parse such policies and carry sigstore attachments
(`use-sigstore-attachments`). So: skopeo copies an image lazyctr signed to another repository,
reading our `.sig` manifest and writing its own, and lazyctr accepts that copy under a policy for
the signer's identity and refuses it once its signature is tampered with; a signed image runs
lazily under a policy that requires it, an unsigned one never starts.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.store import Store
from tests.conftest import CliRunner, assert_clean_error, cli_command, require_tools
from tests.e2e.conftest import ContainerTools
from tests.registry.conftest import lazyctr_serve
from tests.registry.test_signing import assert_store_empty

pytestmark = pytest.mark.privileged


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """`lazyctr serve` on 127.0.0.1: its address."""
    with lazyctr_serve(tmp_path / "server") as address:
        yield address


@pytest.fixture
def signed(served: str, busybox_tar: Path, tmp_path: Path) -> str:
    """busybox pushed to test/busybox:latest with `push --sign-by` (keys under tmp_path/keys), and
    unsigned to test/plain:latest, from another root."""
    origin, keys = tmp_path / "origin", tmp_path / "keys"
    keys.mkdir()
    (keys / "pass").write_text("s3cret\n")
    for args in (
        ("generate-key-pair", "--output-prefix", str(keys / "cosign"),
         "--passphrase-file", str(keys / "pass")),
        ("import", str(busybox_tar), "busybox"),
        ("push", "busybox", f"{served}/test/plain:latest"),
        ("push", "--sign-by", str(keys / "cosign.key"), "--sign-passphrase-file", str(keys / "pass"),
         "busybox", f"{served}/test/busybox:latest"),
    ):  # fmt: skip
        proc = subprocess.run(cli_command(origin, *args), capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    return served


def skopeo_options(tmp_path: Path, served: str) -> list[str]:
    """skopeo's global options: registries.d turning sigstore attachments on, and a policy written
    as ours are (sigstoreSigned for a scope it does not evaluate here; Debian's skopeo refuses to
    evaluate one), accepting the server's images. Temp files: the machine's own stay untouched."""
    registries_d = tmp_path / "registries.d"
    registries_d.mkdir(exist_ok=True)
    (registries_d / "default.yaml").write_text("default-docker:\n  use-sigstore-attachments: true\n")
    policy = tmp_path / "skopeo-policy.json"
    signed_elsewhere = [{"type": "sigstoreSigned", "keyPath": str(tmp_path / "keys" / "cosign.pub")}]
    docker = {served: [{"type": "insecureAcceptAnything"}], "registry.example.com": signed_elsewhere}
    policy.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": docker}}))
    return ["--policy", str(policy), "--registries.d", str(registries_d)]


def lazyctr_policy(tmp_path: Path, served: str, identity: dict[str, str] | None = None) -> Path:
    requirement: dict[str, object] = {
        "type": "sigstoreSigned",
        "keyPath": str(tmp_path / "keys" / "cosign.pub"),
    }
    if identity is not None:
        requirement["signedIdentity"] = identity
    policy = tmp_path / f"policy-{len(list(tmp_path.glob('policy-*')))}.json"
    policy.write_text(
        json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {served: [requirement]}}})
    )
    return policy


def pull_in(root: Path, policy: Path, ref: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        cli_command(root, "--policy", str(policy), "pull", ref), capture_output=True, timeout=120
    )


def test_skopeo_carries_lazyctr_signatures_and_lazyctr_reads_what_skopeo_wrote(
    signed: str, tmp_path: Path, container_tools: ContainerTools
) -> None:
    require_tools("skopeo", "curl")
    # skopeo reads our `.sig` manifest and writes its own for the copy (1.9 copies no referrers).
    container_tools.skopeo(
        *skopeo_options(tmp_path, signed), "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{signed}/test/busybox:latest", f"docker://{signed}/test/copied:latest",
    )  # fmt: skip
    copied = f"{signed}/test/copied:latest"
    digest = container_tools.skopeo(
        "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{copied}"
    )
    url = f"http://{signed}/v2/test/copied/manifests/sha256-{digest.decode().strip().split(':')[1]}.sig"
    written = json.loads(subprocess.run(["curl", "-sf", url], capture_output=True, check=True).stdout)
    referrers = f"http://{signed}/v2/test/copied/referrers/{digest.decode().strip()}"
    listed = json.loads(subprocess.run(["curl", "-sf", referrers], capture_output=True, check=True).stdout)
    assert listed["manifests"] == []  # what follows reads skopeo's `.sig` manifest alone

    # The signature names test/busybox: accepted for that identity, refused under the default rule.
    exact = {"type": "exactRepository", "dockerRepository": f"{signed}/test/busybox"}
    accepted = pull_in(tmp_path / "accepted", lazyctr_policy(tmp_path, signed, exact), copied)
    assert accepted.returncode == 0, accepted.stderr
    default = pull_in(tmp_path / "default", lazyctr_policy(tmp_path, signed), copied)
    assert default.returncode == 1 and b"the signature is for" in default.stderr
    assert_store_empty(tmp_path / "default")

    # Tampered on the registry: refused, nothing stored.
    annotations = written["layers"][0]["annotations"]
    good = annotations["dev.cosignproject.cosign/signature"]
    annotations["dev.cosignproject.cosign/signature"] = good[:8] + ("B" if good[8] != "B" else "C") + good[9:]
    put = ["curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json"]
    subprocess.run([*put, "--data-binary", json.dumps(written), url], check=True, capture_output=True)
    tampered = pull_in(tmp_path / "tampered", lazyctr_policy(tmp_path, signed, exact), copied)
    assert tampered.returncode == 1 and b"does not verify" in tampered.stderr, tampered.stderr
    assert len(tampered.stderr.decode().strip().splitlines()) == 1
    assert_store_empty(tmp_path / "tampered")


def test_a_signed_image_runs_lazily_and_an_unsigned_one_never_starts(
    signed: str, tmp_path: Path, lazyctr: CliRunner, root: Path
) -> None:
    policy = lazyctr_policy(tmp_path, signed)
    result = lazyctr("--policy", str(policy), "run", "--rm", f"{signed}/test/plain:latest", "true", ok=False)
    assert_clean_error(result, "has no sigstore signature")
    assert_store_empty(root)
    out = lazyctr(
        "--policy", str(policy), "run", "--rm", f"{signed}/test/busybox:latest", "cat", "/etc/passwd"
    )
    assert b"root:" in out.stdout
    store = Store(root)
    assert not store.is_complete(store.image(f"{signed}/test/busybox:latest"))  # lazily: no layer blob


def test_a_lazy_mount_serves_only_what_the_policy_accepts(
    signed: str, tmp_path: Path, lazyctr: CliRunner, root: Path
) -> None:
    """Pulled under a lax policy, mounted under a strict one: the signatures kept at the pull decide."""
    strict = lazyctr_policy(tmp_path, signed)
    lax = tmp_path / "lax.json"
    lax.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    for name in ("plain", "busybox"):
        lazyctr("--policy", str(lax), "pull", f"{signed}/test/{name}:latest")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = lazyctr(
        "--policy", str(strict), "mount", f"{signed}/test/plain:latest", str(mountpoint), ok=False
    )
    assert_clean_error(result, f"{signed}/test/plain@sha256:")
    # The same manifest as test/busybox, whose signature the store keeps: it names test/busybox.
    assert f"the signature is for '{signed}/test/busybox:latest'" in result.stderr
    assert list(mountpoint.iterdir()) == []
    lazyctr("--policy", str(strict), "mount", f"{signed}/test/busybox:latest", str(mountpoint))
    try:
        assert (mountpoint / "bin" / "busybox").stat().st_size > 0
        assert "root:" in (mountpoint / "etc" / "passwd").read_text()
    finally:
        lazyctr("umount", str(mountpoint))
