"""The `lazyctr` command line: the group and its options; each command module registers its commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lazyctr import bench, build, containers, distribution, images, mounts  # noqa: F401 (importing registers their commands)
from lazyctr.context import COMMANDS, Context, default_root
from lazyctr.errors import run_with_error_mapping


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="LAZYCTR_ROOT",
    default=default_root,
    show_default="/var/lib/lazyctr for root",
    help="Where images, chunks and containers live.",
)
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, root: Path, debug: bool) -> None:
    """Build, ship and lazily start OCI containers."""
    ctx.obj = Context(root)


for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    def invoke() -> None:
        status = cli.main(standalone_mode=False, prog_name="lazyctr")
        if isinstance(status, int) and status:
            sys.exit(status)

    run_with_error_mapping(invoke)


if __name__ == "__main__":
    main()
