"""``pinnacle-release``: the root command group and the one place commands are registered.

The commands live in ``repo_tools.commands``, one module per group (repository lifecycle, fleet,
trust, hosting); each lists its commands in ``COMMANDS`` and this module adds them with
``add_command``. Commands parse options, call one library function and print its result (human
text, or one JSON document with ``--json``). ``formats.cliutil.error_group`` (as
``commands.options.ReleaseGroup``) is the single place where a ``ReleaseError`` becomes one line
on stderr and its exit code.
"""

from __future__ import annotations

import click

from .commands import channels, feedback, fleet, hosting, repository, trust
from .commands.options import PROGRAM, ReleaseGroup


@click.group(cls=ReleaseGroup)
@click.version_option(package_name="pinnacle-updates")
def cli() -> None:
    """Publish signed releases into a static TUF repository."""


for _group in (repository, channels, fleet, trust, hosting, feedback):
    for _command in _group.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name=PROGRAM)


if __name__ == "__main__":  # `python -m pinnacle_updates.repo_tools.cli`
    main()
