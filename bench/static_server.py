"""A plain static file server (twisted.web.static.File) on a free loopback port.

Usage: ``python bench/static_server.py DIR``; prints ``PORT <n>`` once listening.
The benchmark's ceiling for retrieve throughput: same files, no DICOM work.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.static import File


def main(root: str) -> None:
    port = reactor.listenTCP(0, Site(File(root)), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1])
