"""TCP settings for DIMSE connections, ours and the ones we open.

DIMSE is a request/response protocol of small PDUs (A-ASSOCIATE, C-ECHO,
C-FIND identifiers and responses, C-STORE responses).  With Nagle's
algorithm on, a small write waits for the ACK of the previous one, which the
peer delays by up to 40 ms on Linux: an association opened, one C-FIND and
released costs several such stalls.  ``TCP_NODELAY`` sends each PDU at once.
"""

from __future__ import annotations

import socket
from typing import Any


def no_delay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: turn Nagle's algorithm off on the
    association's socket (pynetdicom fires it for accepted connections and
    for the ones it opens, before the first PDU)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # already closed by the peer: nothing to tune
        pass


__all__ = ["no_delay"]
