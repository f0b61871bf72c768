"""What every stage's command line shares: the ``--config`` and ``--instance`` options, and the
start-up failure (one line on stderr naming the stage, exit code 2)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

EXIT_START_UP = 2  # bad config, input or model: the supervisor does not restart a stage that exits so

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="bus.toml to read (default: $BUS_CONFIG, else ./bus.toml, else built-in defaults).",
)


def instance_option(section: str) -> Callable[[Any], Any]:
    return click.option(
        "--instance", type=int, default=0, show_default=True, help=f"Which [{section}] endpoints entry this copy binds."
    )


def fail(stage: str, message: str) -> NoReturn:
    """A start-up failure: ``<stage>: <message>`` on stderr, exit code 2."""
    click.echo(f"{stage}: {message}", err=True)
    sys.exit(EXIT_START_UP)
