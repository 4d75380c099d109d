"""The ``saesteer`` command: a click group whose subcommands live in one module per area.

Every user-facing error (``SaesteerError``, bad options) is printed as one line and exits with code 2,
without a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from saesteer.errors import SaesteerError

# Each module defines click commands and a ``COMMANDS`` list; adding an area is one line here.
COMMAND_MODULES = [
    "saesteer.cli.core_commands",
    "saesteer.cli.sweep_commands",
    "saesteer.cli.compare_commands",
    "saesteer.cli.serve_commands",
    "saesteer.cli.train_commands",
]


class _Group(click.Group):
    """A group that turns every error into one line and exit code 2 (``SaesteerError`` as its message, others
    with their type; ``SAESTEER_DEBUG=1`` re-raises them for the traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except SaesteerError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - the CLI never ends in a traceback (SAESTEER_DEBUG=1 shows it)
            if os.environ.get("SAESTEER_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            known = isinstance(exc, (OSError, RuntimeError, ValueError))
            hint = "set SAESTEER_DEBUG=1 for the traceback" + ("" if known else ", and please report this bug")
            click.echo(f"error: {type(exc).__name__}: {first} ({hint})", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="saesteer")
def cli():
    """Steer language models through the features of sparse autoencoders."""


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def run(argv=None) -> int:
    """Run the CLI and return its exit code; usage errors are one line and code 2."""
    try:
        result = cli.main(args=argv, prog_name="saesteer", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        hint = f" (see: saesteer {exc.ctx.command.name} --help)" if exc.ctx and exc.ctx.command.name != "cli" else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    return int(result) if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
