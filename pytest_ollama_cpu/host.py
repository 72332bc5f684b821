"""Where the Ollama server is: normalising ``OLLAMA_HOST``-style addresses.

Ollama accepts ``host``, ``host:port``, ``:port``, ``[ipv6]:port`` and full URLs,
with a path when a reverse proxy serves it under one, and a server bound to
``0.0.0.0`` is reached on the loopback address. The plugin reads them as Ollama
does (no scheme: port 11434; ``http://``: 80; ``https://``: 443) and turns them
into one ``scheme://host:port[/path]`` form, so reports and the process lookup
agree. A user and password in the URL are kept apart from it: they go to the
server as HTTP basic auth and are never part of what is shown or saved.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

DEFAULT_PORT = 11434
DEFAULT_HOST = f"http://127.0.0.1:{DEFAULT_PORT}"

_BIND_ALL = {"", "0.0.0.0", "::", "[::]"}
_SCHEME_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[\w.-]+")
_FORM = "give host:port, [IPv6]:port or a URL such as http://host:11434"


@dataclass(frozen=True)
class Credentials:
    """The user and password a host's URL carried (HTTP basic auth)."""

    username: str
    password: str | None = field(default=None, repr=False)

    @property
    def auth(self) -> tuple[str, str]:
        return self.username, self.password or ""


@dataclass(frozen=True)
class Host:
    #: ``scheme://host:port[/path]``, without credentials: what is shown, saved and compared
    url: str
    credentials: Credentials | None = None

    @property
    def shown(self) -> str:
        """The URL as a person should see it: the user named, the password masked."""
        return shown_host(self.url, self.credentials)


def shown_host(url: str, credentials: Credentials | None) -> str:
    if credentials is None:
        return url
    scheme, _, rest = url.partition("://")
    secret = ":***" if credentials.password is not None else ""
    return f"{scheme}://{quote(credentials.username, safe='')}{secret}@{rest}"


def mask_password(text: str) -> str:
    """``text`` with the password of any ``user:password@`` in it replaced by ``***``,
    however malformed the rest: for messages about a value that could not be read."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    userinfo, at, after = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{after}"


def parse_host(value: str) -> Host:
    """``"0.0.0.0:11434"`` -> ``http://127.0.0.1:11434``; raise ``ValueError`` saying what
    is wrong and how to write it instead."""
    text = value.strip()
    if not text:
        raise ValueError(f"it is empty; {_FORM}")
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in _SCHEME_PORTS:
            raise ValueError(
                f"only http:// and https:// reach an Ollama server, not {scheme}://; "
                "give host:port or a URL such as http://host:11434"
            )
        default_port = _SCHEME_PORTS[scheme]
    else:
        scheme, rest, default_port = "http", text, DEFAULT_PORT
        if _is_ipv6(rest):  # a bare IPv6 address, as Ollama takes it
            rest = f"[{rest}]"
    try:
        parts = urlsplit(f"{scheme}://{rest}")
    except ValueError as exc:
        raise ValueError(f"it is not an address ({exc}); {_FORM}") from None
    try:
        port = parts.port
    except ValueError:
        raise ValueError(
            f"its port is not a number from 1 to 65535 (Ollama listens on {DEFAULT_PORT} "
            "unless told otherwise)"
        ) from None
    if port == 0:
        raise ValueError("port 0 cannot be connected to; give the port the server listens on")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(
            "a server address has no ?query or #fragment; give scheme://host:port, with a "
            "/path if a proxy serves Ollama under one"
        )
    hostname = parts.hostname or ""
    if hostname in _BIND_ALL:
        hostname = "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    elif not _HOST_NAME.fullmatch(hostname):
        raise ValueError(f"{hostname!r} is not a host name or IP address; {_FORM}")
    credentials = None
    if parts.username is not None:
        password = None if parts.password is None else unquote(parts.password)
        credentials = Credentials(unquote(parts.username), password)
    path = parts.path.rstrip("/")
    url = f"{scheme}://{hostname}:{port or default_port}{path}"
    return Host(url, credentials)


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def normalize_host(value: str) -> str:
    """The URL of ``parse_host``, without credentials."""
    return parse_host(value).url


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
