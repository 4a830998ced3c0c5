"""The signing commands: generate-key-pair, sign and verify (sigstore signatures, as cosign and podman).

The passphrase of an encrypted private key comes as skopeo (`--passphrase-file`, its first line)
or cosign (`COSIGN_PASSWORD`) take it, else from a prompt on a terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lazyctr.context import Context, command, pass_context
from storage.errors import NotFound

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from registry.signatures import Signature
    from storage.digest import Digest
    from storage.store import Image

_PASSPHRASE_FILE = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Read the key's passphrase from the first line of this file (else COSIGN_PASSWORD, else a prompt).",
)  # fmt: skip
_TARGET = click.argument("target", metavar="IMAGE|REF")
_INSECURE = click.option(
    "--insecure", is_flag=True, help="Plain HTTP (always so for localhost and 127.0.0.1)."
)


def signing_key(path: Path, passphrase_file: Path | None) -> ec.EllipticCurvePrivateKey:
    """The private key in `path`, its passphrase (when it is encrypted) as the module docstring says."""
    from registry.sigkeys import SigningKeyError, is_encrypted, load_private_key, passphrase_from

    passphrase = passphrase_from(passphrase_file)
    if passphrase is None and is_encrypted(path):
        if not sys.stdin.isatty():
            raise SigningKeyError(
                f"{path} is encrypted: give its passphrase with --passphrase-file or COSIGN_PASSWORD"
            )
        passphrase = str(click.prompt(f"Passphrase for {path}", hide_input=True, err=True)).encode()
    return load_private_key(path, passphrase)


def _stored(ctx: Context, text: str) -> Image | None:
    try:
        return ctx.store.image(text)
    except NotFound:
        return None


@command("generate-key-pair")
@click.option("--output-prefix", default="cosign", show_default=True, help="Write PREFIX.key and PREFIX.pub.")
@_PASSPHRASE_FILE
def generate_key_pair(output_prefix: str, passphrase_file: Path | None) -> None:
    """Make an ECDSA P-256 key pair to sign images with: PREFIX.key (private) and PREFIX.pub.

    The private key is encrypted with the passphrase (PKCS#8; an empty passphrase leaves it
    unencrypted); cosign reads it with `cosign import-key-pair`.
    """
    from registry.sigkeys import SigningKeyError, generate_key_pair, passphrase_from
    from storage.files import atomic_write

    private_path, public_path = Path(f"{output_prefix}.key"), Path(f"{output_prefix}.pub")
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(f"{path} exists already: not overwriting it")
    passphrase = passphrase_from(passphrase_file)
    if passphrase is None:
        if not sys.stdin.isatty():
            raise SigningKeyError("no passphrase: give --passphrase-file or COSIGN_PASSWORD (empty for none)")
        passphrase = str(
            click.prompt(
                "Passphrase for the private key", hide_input=True, confirmation_prompt=True, err=True
            )
        ).encode()
    private, public = generate_key_pair(passphrase)
    atomic_write(private_path, private, 0o600)
    atomic_write(public_path, public)
    click.echo(f"Private key written to {private_path}\nPublic key written to {public_path}")


@command()
@_TARGET
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Private key.")
@_PASSPHRASE_FILE
@_INSECURE
@pass_context
def sign(ctx: Context, target: str, key: Path, passphrase_file: Path | None, insecure: bool) -> None:
    """Sign IMAGE (kept in the store, pushed with it) or REF (in its registry) with a sigstore signature.

    A stored image is signed as its name; a REF as itself: its signature goes up as a referrer
    and on the `sha256-<digest>.sig` tag, where podman, skopeo and cosign look. Prints the digest.
    """
    import asyncio

    from registry.client import RegistryClient
    from registry.signatures import add_signature, sign_remote
    from storage.reference import registry_ref

    private = signing_key(key, passphrase_file)
    image = _stored(ctx, target)
    if image is not None:
        add_signature(ctx.store, image, private, image.name)
        click.echo(f"signed {image.name} {image.descriptor.digest}")
        return
    ref = registry_ref(target)
    assert ref.domain is not None

    async def remote() -> tuple[str, str]:
        async with RegistryClient(ref.domain or "", insecure) as client:
            return await sign_remote(ctx.store, client, ref, private)

    digest, identity = asyncio.run(remote())
    click.echo(f"signed {identity} {digest}")


@command()
@_TARGET
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Public key.")
@_INSECURE
@pass_context
def verify(ctx: Context, target: str, key: Path, insecure: bool) -> None:
    """Check that IMAGE (in the store) or REF (in its registry) has a signature made with KEY's pair.

    The signature must name the image's manifest digest and its repository (any tag: cosign signs
    the repository alone). Prints the digest; a refusal is one line and exit status 1.
    """
    import asyncio

    from registry.client import RegistryClient
    from registry.policy import Requirement, accepted_by
    from registry.sigkeys import SigningKeyError, load_public_key
    from registry.signatures import SignatureInvalid, fetch_signatures, stored_signatures
    from storage.reference import ImageRef, registry_ref

    try:
        public = load_public_key(key.read_bytes(), str(key))
    except OSError as e:
        raise SigningKeyError(f"{key}: {e.strerror}") from None
    image = _stored(ctx, target)
    if image is not None:
        ref, digest, found = (
            ImageRef.parse(image.name),
            image.descriptor.digest,
            stored_signatures(ctx.store, image),
        )
    else:
        ref = registry_ref(target)

        async def remote() -> tuple[Digest, list[Signature]]:
            async with RegistryClient(ref.domain or "", insecure) as client:
                _, _, digest = await client.get_manifest(ref.repository, ref.digest or ref.tag or "latest")
                return digest, await fetch_signatures(client, ref.repository, digest)

        digest, found = asyncio.run(remote())
    requirement = Requirement("sigstoreSigned", (public,), (("type", "matchRepository"),))
    reason = accepted_by(requirement, ref, digest, found)
    if reason is not None:
        raise SignatureInvalid(f"{target}: {reason}")
    click.echo(f"verified {target} {digest}")
