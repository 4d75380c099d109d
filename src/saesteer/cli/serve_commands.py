"""``saesteer serve``: the web app (playground, sweep browser, feature pages) on this machine."""

from __future__ import annotations

import ipaddress
import socket

import click

from saesteer.cli.options import build_steerer, model_options
from saesteer.errors import SaesteerError
from saesteer.steerer import Steerer
from saesteer.web.results_index import ResultsIndex


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_unspecified(host: str) -> bool:
    """0.0.0.0 or :: (every address of this machine)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket at ``host:port`` (port 0: a free one), or one clear line why not."""
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SaesteerError(f"cannot serve on {host}: {exc.strerror}; pass an address of this machine with"
                            " --host") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = "the port is in use" if exc.errno in (98, 48, 10048) else exc.strerror
        raise SaesteerError(f"cannot listen on {host} port {port}: {why}; pick another --port (0 picks a free"
                            " one)") from None
    sock.set_inheritable(True)
    return sock


def allowed_hosts(host: str, extra: tuple[str, ...]) -> list[str]:
    """The ``Host`` header names the app accepts: this machine's loopback names, the address served (unless
    it is 0.0.0.0 or ::), and the names given with ``--allow-host``."""
    from saesteer.web.app import LOCAL_HOSTS

    names = list(LOCAL_HOSTS)
    if not is_loopback(host) and not is_unspecified(host):
        names.append(host if ":" not in host or host.startswith("[") else f"[{host}]")
    names += [n for n in extra if n not in names]
    return names


def serve_app(app, sock: socket.socket) -> None:
    """Run ``app`` on the bound socket until Ctrl+C."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@click.command()
@model_options
@click.option("--add-sae", "add_sae", multiple=True, metavar="SPEC",
              help="Serve another SAE of the same model too (repeatable; e.g. other layers), each with its own"
                   " feature pages; the playground clamps features of several SAEs together. It must name its"
                   " hook site (OpenAI, SAELens and saesteer SAEs do).")
@click.option("--results", "results", multiple=True, type=click.Path(exists=True, file_okay=False),
              metavar="DIR", help="A sweep results folder to browse (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but a loopback address lets other machines use the model.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--allow-host", "allow_host", multiple=True, metavar="NAME",
              help="Also accept requests whose Host header is NAME (repeatable; e.g. this machine's name when"
                   " serving on 0.0.0.0). Loopback names are always accepted; '*' accepts any (unsafe).")
@click.option("--queue-size", default=8, show_default=True, type=click.IntRange(1, 10_000),
              help="Requests that may wait for the model; more are answered 503 with Retry-After.")
@click.option("--timeout", "request_timeout", default=120.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Time limit of one request in seconds, waiting included (then 504).")
@click.option("--openapi", "print_openapi", is_flag=True, help="Print the API's OpenAPI schema and exit (loads nothing).")
def serve(model, sae, hook, device, add_sae, results, host, port, allow_host, queue_size, request_timeout,
          print_openapi):
    """Serve the playground, sweep browser and feature pages at http://HOST:PORT/."""
    try:
        import uvicorn  # noqa: F401

        from saesteer.web.app import create_app, openapi_text
    except ImportError as exc:
        raise SaesteerError(f"the web app needs its extra ({exc.name} is missing): pip install 'saesteer[web]'") from None
    if print_openapi:
        click.echo(openapi_text(), nl=False)
        return

    sock = bind(host, port)  # a busy port is one line now, not after loading the model
    try:
        index = ResultsIndex(results)  # read (and check) the folders before loading the model
        st = build_steerer(model, sae, hook, device)
        steerers = [st] + [Steerer(st.lm, spec, device=device) for spec in add_sae]
        hosts = allowed_hosts(host, allow_host)
        app = create_app(steerers if add_sae else st, index, queue_size=queue_size, request_timeout=request_timeout, allowed_hosts=hosts)
        if not is_loopback(host):
            click.echo(f"warning: serving on {host}: anyone who can reach this address can use the model", err=True)
        if "*" in hosts:
            click.echo("warning: --allow-host '*': requests with any Host header are accepted, so web pages this"
                       " machine's browser opens can reach the API (DNS rebinding)", err=True)
        elif not is_loopback(host):
            click.echo(f"note: accepted Host headers: {', '.join(hosts)} (add names with --allow-host NAME)", err=True)
        bound = sock.getsockname()[1]
        bare = host.strip("[]")
        shown = f"[{bare}]" if ":" in bare else bare
        saes = ", ".join(f"{s.sae.cfg.source or spec} at {s.hook_name}" for s, spec in zip(steerers, (sae, *add_sae)))
        click.echo(f"saesteer: http://{shown}:{bound}/  (model {st.lm.name}, SAE{'s' if add_sae else ''} {saes},"
                   f" {len(results)} results folder{'s' if len(results) != 1 else ''}; Ctrl+C stops)", err=True)
        serve_app(app, sock)
    finally:
        sock.close()


COMMANDS = [serve]
