"""The registry commands: serve, push, pull, login and logout."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import click

from lazyctr.context import Context, command, pass_context
from storage.errors import InvalidReference


def parse_address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidReference(f"invalid address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5000")
    return host.strip("[]"), int(port)


@command()
@click.option("--addr", default="127.0.0.1:5000", show_default=True, help="HOST:PORT to listen on.")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), help="Default: <root>/registry.")
@click.option("--read-only", is_flag=True, help="Refuse pushes and deletes.")
@click.option("--htpasswd", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Require basic auth with these users (bcrypt, htpasswd -B).")  # fmt: skip
@click.option("--anonymous-pull", multiple=True, metavar="PATTERN",
              help="With --htpasswd: repositories (glob) anyone may pull.")  # fmt: skip
@pass_context
def serve(
    ctx: Context, addr: str, storage: Path | None, read_only: bool, htpasswd: Path | None,
    anonymous_pull: tuple[str, ...],
) -> None:  # fmt: skip
    """Serve an OCI distribution registry (pull, push, ranges) until interrupted."""
    from registry.auth import Access, load_htpasswd  # the server's imports only for this command
    from registry.server import serve as serve_registry

    access = Access(load_htpasswd(htpasswd), anonymous_pull) if htpasswd else None
    host, port = parse_address(addr)
    root = storage or ctx.root / "registry"
    root.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        click.echo(f"serving {root} on http://{host}:{port}", err=True)
        with contextlib.suppress(asyncio.CancelledError):  # SIGINT/SIGTERM: a clean stop
            await serve_registry(root, host, port, read_only, access)

    asyncio.run(main())


@command()
@click.argument("image")
@click.argument("ref", required=False)
@click.option("--insecure", is_flag=True, help="Plain HTTP (always so for localhost and 127.0.0.1).")
@pass_context
def push(ctx: Context, image: str, ref: str | None, insecure: bool) -> None:
    """Push IMAGE to REF (default: IMAGE's own name, which must then name a registry host)."""
    from registry.client import BlobResult, push_image, registry_ref

    found = ctx.store.image(image)
    target = registry_ref(ref or found.name)

    def report(result: BlobResult) -> None:
        click.echo(result.line())

    digest = asyncio.run(push_image(ctx.store, found, target, insecure, report))
    click.echo(f"manifest {digest}")


@command()
@click.argument("ref")
@click.option("--insecure", is_flag=True, help="Plain HTTP (always so for localhost and 127.0.0.1).")
@pass_context
def pull(ctx: Context, ref: str, insecure: bool) -> None:
    """Pull the image REF (HOST[:PORT]/NAME[:TAG|@DIGEST]) whole and name it REF; prints its ID."""
    from registry.client import pull_image

    image = asyncio.run(pull_image(ctx.store, ref, insecure))
    click.echo(image.id)


@command()
@click.argument("registry")
@click.option("-u", "--username", required=True, help="User name.")
@click.option("-p", "--password", help="Password (visible to other users in `ps`: prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--insecure", is_flag=True, help="Plain HTTP (always so for localhost and 127.0.0.1).")
def login(registry: str, username: str, password: str | None, password_stdin: bool, insecure: bool) -> None:
    """Check USERNAME's password with REGISTRY (HOST[:PORT]) and save it for push and pull."""
    from registry.client import RegistryClient
    from registry.credentials import Credentials, normalize_key, store

    registry = normalize_key(registry)
    if password is not None and password_stdin:
        raise click.UsageError("--password and --password-stdin exclude each other")
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif password is None:
        password = str(click.prompt("Password", hide_input=True, err=True))
    if not password:
        raise click.UsageError("an empty password")
    credentials = Credentials(username, password)

    async def check() -> None:
        async with RegistryClient(registry, insecure, credentials) as client:
            await client.login()

    asyncio.run(check())
    store(registry, credentials)
    click.echo("Login Succeeded")


@command()
@click.argument("registry")
def logout(registry: str) -> None:
    """Forget the credentials saved for REGISTRY."""
    from registry.credentials import CredentialsError, login_file, normalize_key, remove

    registry = normalize_key(registry)
    if not remove(registry):
        raise CredentialsError(f"not logged in to {registry} (in {login_file()})")
    click.echo(f"Removed login credentials for {registry}")
