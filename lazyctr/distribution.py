"""The registry commands: serve, serve-token, push, pull, login and logout."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

from lazyctr.context import Context, command, pass_context
from storage.errors import BadArchive, InvalidReference, LazyctrError

if TYPE_CHECKING:
    import ssl

    from registry.progress import TransferProgress
    from registry.storage import BlobStore
    from registry.tokens import PrivateKey
    from storage.digest import Digest

# asyncio, ssl and the registry room are imported inside the commands that use them: every
# `lazyctr run` imports this module, and they would add ~25 ms to each container's start.
T = TypeVar("T")

DEFAULT_SERVICE = "lazyctr-registry"
DEFAULT_ISSUER = "lazyctr-token"


def parse_address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidReference(f"invalid address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5000")
    return host.strip("[]"), int(port)


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, option: str) -> int:
    """`512M` -> 536870912 (binary units, an optional trailing B or iB)."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in _SIZE_UNITS else ""
    digits = number[: len(number) - len(unit)]
    if not digits.isdigit():
        raise InvalidReference(f"invalid {option} {text!r}: expected a size in bytes, or e.g. 512M, 2G")
    return int(digits) * _SIZE_UNITS[unit]


@command()
@click.option("--addr", default="127.0.0.1:5000", show_default=True, help="HOST:PORT to listen on.")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), help="Default: <root>/registry.")
@click.option("--read-only", is_flag=True, help="Refuse pushes and deletes.")
@click.option("--htpasswd", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Require basic auth with these users (bcrypt, htpasswd -B).")  # fmt: skip
@click.option("--anonymous-pull", multiple=True, metavar="PATTERN",
              help="With --htpasswd or --token-key: repositories (glob) anyone may pull.")  # fmt: skip
@click.option("--token-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Require bearer tokens signed by this PEM private key (EC P-256 or RSA); its "
                   "public half verifies them.")  # fmt: skip
@click.option("--token-realm", metavar="URL", help="With --token-key: the token service's URL.")
@click.option("--token-service", default=DEFAULT_SERVICE, show_default=True,
              help="With --token-key: the service name tokens must be issued for.")  # fmt: skip
@click.option(
    "--s3", "s3_url", metavar="URL", help="Store in S3 at this endpoint (e.g. http://127.0.0.1:8333)."
)
@click.option("--s3-bucket", help="With --s3: the bucket (credentials from the AWS_* environment).")
@click.option("--s3-cache-size", default="2G", show_default=True, metavar="SIZE",
              help="With --s3: local cache of whole blobs (e.g. 512M, 2G); 0 streams them all.")  # fmt: skip
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Serve HTTPS with this PEM certificate (chain).")  # fmt: skip
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Access log (standard output), a line per request; json: an object a line.")  # fmt: skip
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="With --tls-cert: its PEM private key.")  # fmt: skip
@click.option("--proxy", "upstream", metavar="UPSTREAM",
              help="Be a read-only pull-through cache of the registry UPSTREAM (HOST[:PORT]; "
                   "http://HOST[:PORT] for plain HTTP), with the credentials `lazyctr login` "
                   "stored for it.")  # fmt: skip
@pass_context
def serve(
    ctx: Context, addr: str, storage: Path | None, read_only: bool, htpasswd: Path | None,
    anonymous_pull: tuple[str, ...], token_key: Path | None, token_realm: str | None, token_service: str,
    s3_url: str | None, s3_bucket: str | None, s3_cache_size: str, tls_cert: Path | None,
    log_format: str, tls_key: Path | None, upstream: str | None,
) -> None:  # fmt: skip
    """Serve an OCI distribution registry (pull, push, ranges) until interrupted."""
    from registry.auth import Access  # the server's imports only for this command
    from registry.htpasswd import load_htpasswd
    from registry.server.app import serve as serve_registry

    access = None
    if token_key:
        if htpasswd:
            raise click.UsageError("--htpasswd and --token-key exclude each other")
        if not token_realm:
            raise click.UsageError("--token-key needs --token-realm (the token service's URL)")
        public_key = _private_key(token_key).public_key()
        access = Access.with_tokens(token_realm, token_service, public_key, anonymous_pull)
    elif token_realm:
        raise click.UsageError("--token-realm needs --token-key")
    elif htpasswd:
        access = Access(load_htpasswd(htpasswd), anonymous_pull)
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    tls = _tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
    if bool(s3_url) != bool(s3_bucket):
        raise click.UsageError("--s3 and --s3-bucket go together")
    host, port = parse_address(addr)
    root = storage or ctx.root / "registry"
    root.mkdir(parents=True, exist_ok=True)
    backend: Path | BlobStore = root
    if s3_url and s3_bucket:
        from registry.blobcache import BlobCache
        from registry.s3 import S3Driver
        from registry.storage import BlobStore

        # Whole blobs are served from a verified local copy: the cache lives under the storage dir.
        cache = BlobCache(root / "s3-cache", parse_size(s3_cache_size, "--s3-cache-size"))
        backend = BlobStore(S3Driver(s3_bucket, endpoint_url=s3_url), cache)
    proxy = None
    if upstream:
        from registry.filesystem import FilesystemDriver
        from registry.proxy_cache import ProxyCache, Upstream
        from registry.storage import BlobStore

        backend = backend if isinstance(backend, BlobStore) else BlobStore(FilesystemDriver(root))
        # Blobs known in part (byte ranges) stay on local disk, whatever the store.
        proxy = ProxyCache(backend, Upstream.parse(upstream), root / "proxy-ranges")

    async def run() -> None:
        what = f"a pull-through cache of {upstream} in {root}" if upstream else str(root)
        click.echo(f"serving {what} on {'https' if tls else 'http'}://{host}:{port}", err=True)
        await serve_registry(backend, host, port, read_only, access, tls, log_format, proxy)

    _run_until_signalled(run)


def _private_key(path: Path) -> PrivateKey:
    from registry.tokens import load_private_key

    try:
        return load_private_key(path)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--token-key") from None


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    import asyncio

    return asyncio.run(coroutine)


def _run_until_signalled(run: Callable[[], Awaitable[None]]) -> None:
    import asyncio

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):  # SIGINT/SIGTERM: a clean stop
            await run()

    _run(main())


@command("serve-token")
@click.option("--addr", default="127.0.0.1:5001", show_default=True, help="HOST:PORT to listen on.")
@click.option("--htpasswd", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Users (bcrypt, htpasswd -B): they get pull and push.")  # fmt: skip
@click.option("--token-key", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="PEM private key (EC P-256 or RSA) that signs the tokens.")  # fmt: skip
@click.option("--anonymous-pull", multiple=True, metavar="PATTERN",
              help="Repositories (glob) anyone may get a pull token for.")  # fmt: skip
@click.option("--service", default=DEFAULT_SERVICE, show_default=True, help="The registry's service name.")
@click.option("--issuer", default=DEFAULT_ISSUER, show_default=True, help="The tokens' `iss`.")
def serve_token(
    addr: str, htpasswd: Path, token_key: Path, anonymous_pull: tuple[str, ...], service: str, issuer: str
) -> None:
    """Serve a Docker token endpoint (GET /token?service=&scope=) until interrupted."""
    import asyncio

    from aiohttp import web

    from registry.htpasswd import load_htpasswd
    from registry.tokens import TokenEndpoint

    app = TokenEndpoint(
        load_htpasswd(htpasswd), _private_key(token_key), service, issuer, anonymous_pull
    ).app()
    host, port = parse_address(addr)

    async def run() -> None:
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            click.echo(f"serving tokens on http://{host}:{port}/token", err=True)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    _run_until_signalled(run)


_PROGRESS = click.option(
    "--progress", "progress_mode", type=click.Choice(["auto", "plain", "tty"]), default="auto",
    show_default=True, help="tty: bars on stderr; plain: a line per layer done; auto: tty on a terminal.",
)  # fmt: skip


def _transfer_progress(mode: str, plain_out: TextIO) -> TransferProgress:
    from registry.progress import PlainProgress, TerminalProgress

    if mode == "tty" or (mode == "auto" and sys.stderr.isatty()):
        return TerminalProgress(sys.stderr)
    return PlainProgress(plain_out)


@command()
@click.argument("image")
@click.argument("ref", required=False)
@click.option("--insecure", is_flag=True, help="Plain HTTP (always so for localhost and 127.0.0.1).")
@click.option("--sign-by", type=click.Path(dir_okay=False, path_type=Path), metavar="KEY",
              help="Sign the image as REF with this private key (a sigstore signature).")  # fmt: skip
@click.option("--sign-passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="With --sign-by: the key's passphrase (first line; else COSIGN_PASSWORD).")  # fmt: skip
@_PROGRESS
@pass_context
def push(
    ctx: Context, image: str, ref: str | None, insecure: bool, sign_by: Path | None,
    sign_passphrase_file: Path | None, progress_mode: str,
) -> None:  # fmt: skip
    """Push IMAGE to REF (default: IMAGE's own name, which must then name a registry host).

    Prints a line per blob (pushed, exists or mounted; size; time), then the manifest's digest.
    Signatures and access profiles of the image go along (referrers; signatures also on the
    `sha256-<digest>.sig` tag), and do not change its digest.
    """
    import asyncio

    from lazyfs.lineage import Inherited, inherit_at_push
    from registry.client import RegistryClient
    from registry.progress import TerminalProgress
    from registry.transfer import BlobResult, push_image
    from storage.reference import registry_ref

    found = ctx.store.image(image)
    target = registry_ref(ref or found.name)
    domain = target.domain
    assert domain is not None
    if sign_by is not None:  # before a byte goes up: a wrong passphrase fails the push at once
        from lazyctr.signing import signing_key
        from registry.signatures import add_signature

        add_signature(
            ctx.store, found, signing_key(sign_by, sign_passphrase_file), f"{target.name}:{target.tag}"
        )
    progress = _transfer_progress(progress_mode, sys.stdout)
    lines = isinstance(progress, TerminalProgress) and not sys.stdout.isatty()

    def report(result: BlobResult) -> None:
        if lines:  # bars on the terminal, and the lines still for whoever reads stdout
            click.echo(progress.transfers[result.digest].line())

    async def inherit(client: RegistryClient) -> Inherited | None:
        try:
            return await inherit_at_push(ctx.store, found, target, client)
        except (LazyctrError, OSError) as e:  # a bonus: the image goes up without it
            click.echo(f"lazyctr: warning: no access profile inherited: {e}", err=True)
            return None

    async def push_all() -> tuple[Digest, Inherited | None]:
        # One session: the profile a new version inherits is derived while the image's blobs go up,
        # and goes up with them.
        async with RegistryClient(domain, insecure) as client:
            lineage = asyncio.ensure_future(inherit(client))
            try:
                pushed = await push_image(
                    ctx.store, found, target, insecure, report, progress, client, lineage
                )
            finally:
                lineage.cancel()  # done by now, unless the push failed first
            return pushed, lineage.result()

    try:
        digest, inherited = _run(push_all())
    finally:
        progress.close()
    click.echo(f"manifest {digest}")
    if inherited is not None:
        click.echo(inherited.line())
    referrers = len(ctx.store.referrers(found.descriptor.digest))
    if referrers:
        click.echo(f"referrers {referrers} (access profiles, signatures and other artifacts of the image)")


@command()
@click.argument("ref")
@click.option("--insecure", is_flag=True, help="Plain HTTP (always so for localhost and 127.0.0.1).")
@click.option(
    "--eager", is_flag=True, help="Fetch every layer now (extracted as it arrives), not only the TOCs."
)
@_PROGRESS
@pass_context
def pull(ctx: Context, ref: str, insecure: bool, eager: bool, progress_mode: str) -> None:
    """Pull the image REF (HOST[:PORT]/NAME[:TAG|@DIGEST]) and name it REF; prints its ID.

    By default the pull is lazy: the manifest, the config, each layer's table of contents and the
    image's access profile, if the registry has one; file contents are fetched when a container
    (or `lazyctr mount`) reads them. Layers without a TOC make the pull eager.

    Progress goes to stderr (stdout is the image ID alone): bars on a terminal, a line per blob
    with --progress plain. Off a terminal `auto` shows none, so that a failed pull still ends in
    its one error line.
    """
    if not eager:  # by the root's service (`lazyctr service`), if one runs
        from lazyfs.service import pull_lazily

        pulled = pull_lazily(ctx.store, ref, insecure)
        if pulled["inherited"] is not None:
            click.echo(pulled["inherited"], err=True)
        click.echo(pulled["id"])
        return
    from registry.progress import TransferProgress
    from registry.transfer import pull_image

    quiet = progress_mode == "auto" and not sys.stderr.isatty()
    progress = TransferProgress() if quiet else _transfer_progress(progress_mode, sys.stderr)
    try:
        image = _run(pull_image(ctx.store, ref, insecure, progress))
    finally:
        progress.close()
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

    _run(check())
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


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as e:
        raise BadArchive(f"--tls-cert/--tls-key: cannot use {cert} and {key}: {e}") from None
    return context
