"""Is the network there? One quick probe, so an offline machine is noticed at once, not after retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

HF_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT = 2.0
"""Seconds to wait for a TCP connection before calling a host unreachable."""

_TRUE = {"1", "true", "yes", "on"}


def offline_by_env() -> bool:
    """``HF_HUB_OFFLINE`` or ``SAESTEER_OFFLINE`` set to a true value: never touch the network."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "SAESTEER_OFFLINE"))


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def hub_url() -> str:
    """The Hugging Face endpoint in use (``HF_ENDPOINT`` or huggingface.co)."""
    return os.environ.get("HF_ENDPOINT") or HF_ENDPOINT


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """False at once under ``HF_HUB_OFFLINE=1``; else a quick TCP probe of the hub endpoint."""
    return not offline_by_env() and host_reachable(hub_url(), timeout)
