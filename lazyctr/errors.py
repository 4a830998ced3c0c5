"""How errors reach the user: one line on stderr and an exit status; a traceback only with --debug."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from builder.errors import BuildError
from runtime.process import ContainerError
from storage.errors import InvalidReference, StorageError

EXIT_ERROR = 1
EXIT_USAGE = 2

# Most specific class first.
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (BuildError, EXIT_ERROR),  # a Dockerfile, context or step that fails: its one-line message
    (ContainerError, 125),  # docker's status for a container that could not be created
    (InvalidReference, EXIT_USAGE),
    (StorageError, EXIT_ERROR),
]


def debug_enabled() -> bool:
    return "--debug" in sys.argv[1:] or os.environ.get("LAZYCTR_DEBUG") == "1"


def fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"lazyctr: error: {message}", err=True)
    sys.exit(code)


def run_with_error_mapping(command: Callable[[], object]) -> None:
    """Run the click command, turning every error a user can cause into one line and a status."""
    try:
        command()
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("lazyctr: interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if debug_enabled():
            raise
        for error_class, code in EXIT_CODES:
            if isinstance(e, error_class):
                fail(str(e), code)
        if isinstance(e, OSError):
            where = f": {e.filename}" if e.filename else ""
            fail(f"{e.strerror or e}{where}")
        fail(f"internal error: {type(e).__name__}: {e} (run with --debug for a traceback)", 70)
