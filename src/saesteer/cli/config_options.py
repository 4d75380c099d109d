"""Command-line options generated from a job's config class (``saesteer.config``): one declaration per option.

``@config_options(SweepConfig)`` adds an option per field (name, type, bounds, choices, default and help
from the field), and ``config_from(SweepConfig, kwargs)`` takes those values back out of the command's
keywords as one config.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING
from typing import Iterable

import click

from saesteer.config import UNSET, Setting, base_type, default_of, settings_of, strip_optional


def option_name(name: str, s: Setting) -> str:
    return s.cli_name or "--" + name.replace("_", "-")


def _click_type(tp, s: Setting):
    choices = s.cli_choices or s.choices
    if choices is not None:
        return click.Choice([str(c) for c in choices])
    if s.path == "file":
        return click.Path(exists=True, dir_okay=False)
    if s.path == "dir":
        return click.Path(file_okay=False)
    if tp is int and (s.min is not None or s.max is not None):
        return click.IntRange(s.min, s.max)
    if tp is float and (s.min is not None or s.max is not None):
        return click.FloatRange(s.min, s.max, min_open=s.min_open)
    return tp if tp in (int, float, str) else None


def _shown(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def _option(f, s: Setting, tp) -> tuple[list[str], dict]:
    kind = base_type(tp)
    default = default_of(f) if s.cli_default is UNSET else s.cli_default
    kw: dict = dict(help=s.help, show_default=not (default is None or default is False or default == ()))
    if kind is bool and s.flag_value is None and default is True:  # on by default: --no-NAME turns it off
        if not (s.cli_name or "").startswith("--no-"):
            raise TypeError(f"{f.name} is on by default: name its option --no-... (cli_name) to turn it off")
        kw.update(is_flag=True, flag_value=False, default=True, show_default=False)
    elif kind is bool and s.flag_value is None:
        kw.update(is_flag=True, default=bool(default), show_default=False)
    else:
        if s.multiple:
            default = tuple(_shown(v) for v in default or ())
            args = typing.get_args(strip_optional(tp))
            kw.update(multiple=True, type=str if s.parse is not None or not args else _click_type(args[0], s))
        else:
            kw.update(type=_click_type(kind, s))
        kw.update(default=default)
        if s.flag_value is not None:
            kw.update(is_flag=False, flag_value=s.flag_value)
    if s.metavar:
        kw["metavar"] = s.metavar
    return [option_name(f.name, s), f.name], kw


def config_options(cls, *, exclude: Iterable[str] = ()):
    """A decorator adding one click option per command-line field of ``cls`` (in field order)."""
    skip = set(exclude)
    opts = [_option(f, s, tp) for f, s, tp in settings_of(cls) if s.cli and f.name not in skip]

    def decorate(func):
        for decls, kw in reversed(opts):
            func = click.option(*decls, **kw)(func)
        return func

    return decorate


def config_from(cls, kwargs: dict, **extra):
    """Pop the fields of ``cls`` out of a command's ``kwargs`` and build the config (``extra`` on top).

    An option left at None whose field has another default keeps the field's default."""
    values = {}
    for f, s, _ in settings_of(cls):
        if f.name not in kwargs:
            continue
        value = kwargs.pop(f.name)
        if value is None and default_of(f) not in (None, MISSING):
            continue
        values[f.name] = value
    values.update(extra)
    return cls(**values)
