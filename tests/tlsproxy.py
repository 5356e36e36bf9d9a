"""A TLS-terminating HTTP reverse proxy, as sites put in front of CouchDB.

    python -m tests.tlsproxy LISTEN_ENDPOINT HOST PORT

e.g. ``ssl:8443:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem``.
(twistd's portforward pauses the connection before the TLS handshake ends,
which breaks TLS, hence an HTTP-level proxy.)
"""

from __future__ import annotations

import sys

from twisted.internet import endpoints, reactor
from twisted.web import proxy, server


def main(listen: str, host: str, port: str) -> None:
    site = server.Site(proxy.ReverseProxyResource(host, int(port), b""))
    endpoints.serverFromString(reactor, listen).listen(site)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:4])
