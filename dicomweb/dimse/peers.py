"""AE titles, known peers (``AE=host:port``) and the listen address.

Pure parsing (the option table in :mod:`dicomweb.options` uses these
parsers); ValueError with a short reason when a value is bad.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

#: PS3.5 Table 6.2-1, AE: 1-16 characters of the default repertoire, no
#: backslash and no control characters; leading/trailing spaces are padding.
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def ae_title(value: Any) -> str:
    """A valid AE title, padding spaces removed."""
    title = str(value).strip()
    if not title or not _AE_RE.match(title):
        raise ValueError("an AE title is 1 to 16 printable ASCII characters, no backslash")
    return title


@dataclass(frozen=True)
class Peer:
    """A remote Application Entity we know: where C-MOVE sends to, and who
    may connect when unknown calling AEs are refused."""

    ae_title: str
    host: str
    port: int
    #: DICOM TLS (PS3.15 B.1) to this peer: ``AE=tls://host:port``.
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.ae_title}={'tls://' if self.tls else ''}{self.host}:{self.port}"


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("the port must be a number from 1 to 65535")
    return int(text)


def _host_port(text: str) -> tuple[str, str]:
    """``host:port``, ``[v6]:port``."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port")
    return host, port


TLS_SCHEME = "tls://"


def peer(value: Any) -> Peer:
    """``AE=host:port`` (e.g. ``ORTHANC=10.0.0.5:4242``); ``AE=tls://host:port``
    for a peer reached over DICOM TLS."""
    title, sep, address = str(value).strip().partition("=")
    if not sep:
        raise ValueError("a peer is AE=host:port or AE=tls://host:port")
    address = address.strip()
    tls = address.lower().startswith(TLS_SCHEME)
    host, port = _host_port(address[len(TLS_SCHEME):] if tls else address)
    return Peer(ae_title(title), host, _port(port), tls)


def listen_address(value: Any) -> str:
    """``--dimse-port``: a bare port number, or ``HOST:PORT`` (``0.0.0.0:11112``)."""
    text = str(value).strip()
    bind(text)
    return text


def bind(text: str) -> tuple[str, int]:
    """(interface, port) to listen on: a bare number binds loopback only."""
    host, port = ("127.0.0.1", text) if text.isdigit() else _host_port(text)
    # Port 0 picks a free port (the log line names it): for tests.
    return host, 0 if port == "0" else _port(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["Peer", "ae_title", "bind", "is_loopback", "listen_address", "peer"]
