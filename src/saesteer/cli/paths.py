"""Click types for output paths: checked while the command line is read, before any work starts."""

from __future__ import annotations

import click

from saesteer.errors import SaesteerError
from saesteer.outputs import check_output_file, check_output_folder


class OutputFile(click.ParamType):
    """A file the command will write: its folder must exist and take new files (``outputs.check_output_file``)."""

    name = "file"

    def convert(self, value, param, ctx):
        try:
            return str(check_output_file(value))
        except SaesteerError as exc:
            self.fail(str(exc), param, ctx)


class OutputFolder(click.ParamType):
    """A folder the command will write into or create (``outputs.check_output_folder``)."""

    name = "folder"

    def convert(self, value, param, ctx):
        try:
            return str(check_output_folder(value))
        except SaesteerError as exc:
            self.fail(str(exc), param, ctx)
