"""``saesteer serve``: the web app (playground, sweep browser, feature pages) on this machine."""

from __future__ import annotations

import ipaddress
import socket

import click

from saesteer.cli.options import build_steerer, model_options
from saesteer.errors import SaesteerError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def free_port(host: str) -> int:
    """A port nobody listens on at ``host`` now (for ``--port 0``, so the address can be printed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return s.getsockname()[1]


@click.command()
@model_options
@click.option("--results", "results", multiple=True, type=click.Path(exists=True, file_okay=False),
              metavar="DIR", help="A sweep results folder to browse (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but a loopback address lets other machines use the model.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--queue-size", default=8, show_default=True, type=click.IntRange(1, 10_000),
              help="Requests that may wait for the model; more are answered 503 with Retry-After.")
@click.option("--timeout", "request_timeout", default=120.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Time limit of one request in seconds, waiting included (then 504).")
@click.option("--openapi", "print_openapi", is_flag=True, help="Print the API's OpenAPI schema and exit (loads nothing).")
def serve(model, sae, hook, device, results, host, port, queue_size, request_timeout, print_openapi):
    """Serve the playground, sweep browser and feature pages at http://HOST:PORT/."""
    try:
        import uvicorn

        from saesteer.web.app import create_app, openapi_text
    except ImportError as exc:
        raise SaesteerError(f"the web app needs its extra ({exc.name} is missing): pip install 'saesteer[web]'") from None
    if print_openapi:
        click.echo(openapi_text(), nl=False)
        return
    from saesteer.web.results_index import ResultsIndex

    index = ResultsIndex(results)  # read (and check) the folders before loading the model
    st = build_steerer(model, sae, hook, device)
    local = is_loopback(host)
    app = create_app(st, index, queue_size=queue_size, request_timeout=request_timeout,
                     allowed_hosts=None if local else ["*"])
    if not local:
        click.echo(f"warning: serving on {host}: anyone who can reach this address can use the model", err=True)
    if port == 0:
        port = free_port(host)
    bare = host.strip("[]")
    shown = f"[{bare}]" if ":" in bare else bare
    click.echo(f"saesteer: http://{shown}:{port}/  (model {st.lm.name}, SAE {st.sae.cfg.source or sae},"
               f" {len(results)} results folder{'s' if len(results) != 1 else ''}; Ctrl+C stops)", err=True)
    uvicorn.run(app, host=bare, port=port, log_level="warning")


COMMANDS = [serve]
