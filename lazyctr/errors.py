"""How errors reach the user: one line on stderr and the status the error carries (traceback: --debug)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from storage.errors import EXIT_ERROR, EXIT_INTERNAL, LazyctrError, os_error_line


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
        if isinstance(e, LazyctrError):
            fail(str(e), e.exit_code)
        if isinstance(e, OSError):
            fail(os_error_line(e))
        fail(f"internal error: {type(e).__name__}: {e} (run with --debug for a traceback)", EXIT_INTERNAL)
