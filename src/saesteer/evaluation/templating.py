"""HTML of the reports (comparisons, feature cards, validation) from Jinja2 templates, with the one
stylesheet the web app serves too (``templates/style.css``).

Pages are self-contained: the stylesheet is inlined, plots are ``data:`` URLs, there are no scripts, fonts or
external links. Autoescaping is on, so every piece of model or user text is escaped; templates mark nothing
safe but the HTML they build themselves.
"""

from __future__ import annotations

import base64
import html
import math
from functools import cache
from importlib import resources

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

KL_SATURATION = 2.0
"""Token backgrounds reach full colour at this KL (nats)."""


def fmt(x, digits: int = 2) -> str:
    """A number for a table cell ("–" for none or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{digits}f}"


def fmt_p(p) -> str:
    if p is None:
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def kl_alpha(kl: float) -> str:
    """Background opacity of a token whose KL is ``kl``."""
    return f"{min(max(kl, 0.0) / KL_SATURATION, 1.0) * 0.85:.3f}"


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def shown(text: str) -> str:
    """Text on one line: newlines and tabs made visible."""
    return repr(text)[1:-1]


def _escaped(value):
    """Every value printed by a template, escaped as ``html.escape`` does (``&quot;``, as the HTML reports
    always wrote it); HTML the templates built themselves passes as it is."""
    return value if hasattr(value, "__html__") else Markup(html.escape(str(value), quote=True))


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("saesteer.evaluation", "templates"), autoescape=True, finalize=_escaped,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(fmt=fmt, fmt_p=fmt_p, kl_alpha=kl_alpha, shown=shown, data_url=png_data_url)
    env.globals["zip"] = zip
    return env


@cache
def stylesheet() -> str:
    """The stylesheet shared by the reports and the web app."""
    return (resources.files("saesteer.evaluation") / "templates" / "style.css").read_text(encoding="utf-8")


def render(name: str, **context) -> Markup:
    """The HTML of template ``name`` (a body part, safe to put in a page)."""
    return Markup(environment().get_template(name).render(**context))


def fragment(body: str) -> str:
    """``body`` with the stylesheet, for a notebook cell or another page (no ``<html>`` around it)."""
    return str(render("fragment.html.j2", body=Markup(body), css=Markup(stylesheet())))


def page(title: str, body: str) -> str:
    """A whole self-contained HTML page around ``body``."""
    return str(render("page.html.j2", title=title, body=Markup(body), css=Markup(stylesheet())))
