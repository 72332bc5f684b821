"""Where the Ollama server is: normalising ``OLLAMA_HOST``-style addresses.

Ollama accepts ``host``, ``host:port``, ``:port`` and full URLs, and a server
bound to ``0.0.0.0`` is reached on the loopback address. The plugin turns all of
them into one ``http://host:port`` form so reports and the process lookup agree.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

DEFAULT_PORT = 11434
DEFAULT_HOST = f"http://127.0.0.1:{DEFAULT_PORT}"

_BIND_ALL = {"", "0.0.0.0", "::", "[::]"}


def normalize_host(value: str) -> str:
    """``"0.0.0.0:11434"`` -> ``"http://127.0.0.1:11434"``; raise ``ValueError`` if unusable."""
    text = value.strip()
    if not text:
        raise ValueError("the host is empty; give host:port or a URL")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"scheme {parts.scheme!r} is not http or https")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number between 0 and 65535") from None
    hostname = parts.hostname or ""
    if hostname in _BIND_ALL:
        hostname = "127.0.0.1"
    if port is None:
        port = 443 if parts.scheme == "https" and "://" in value else DEFAULT_PORT
    if ":" in hostname:
        hostname = f"[{hostname}]"
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{hostname}:{port}{path}"


def split_host(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT


def is_local(url: str, local_addresses: set[str] | None = None) -> bool:
    """Whether the server runs on this machine, so its processes can be watched."""
    hostname, _ = split_host(url)
    if hostname == "localhost":
        return True
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        try:
            address = ipaddress.ip_address(socket.gethostbyname(hostname))
        except (OSError, ValueError):
            return False
    if address.is_loopback:
        return True
    if local_addresses is None:
        local_addresses = _local_addresses()
    return str(address) in local_addresses


def _local_addresses() -> set[str]:
    import psutil

    found: set[str] = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            found.add(address.address.split("%")[0])
    return found
