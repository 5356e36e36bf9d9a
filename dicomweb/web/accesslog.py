"""A patient-safe access log format.

twisted.web's default combined log line carries the full URI, and QIDO query
strings carry patient names and IDs. This formatter logs the path only
(UIDs are not patient-identifying by themselves); the query string is kept
only when the operator turns it on explicitly.  The last field is the
authenticated principal's name (``-`` when the request was refused or not
authenticated); credentials themselves never appear.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.http import Request, _escape


def access_log_formatter(include_query: bool = False) -> Callable[[str, Request], str]:
    def formatter(timestamp: str, request: Request) -> str:
        uri = request.uri if include_query else request.uri.split(b"?", 1)[0]
        principal = getattr(request, "dicomweb_principal", None)
        host = getattr(request.getClientAddress(), "host", None)  # a UNIX socket has none
        return '"%s" "%s %s %s" %d %s "%s"' % (
            _escape(host) if host is not None else "-",
            _escape(request.method),
            _escape(uri),
            _escape(request.clientproto),
            request.code,
            request.sentLength or "-",
            _escape(principal.name) if principal is not None else "-",
        )

    return formatter


__all__ = ["access_log_formatter"]
