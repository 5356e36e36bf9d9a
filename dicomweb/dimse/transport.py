"""Per-connection costs of DIMSE associations: TCP settings, and the copy
of our presentation contexts pynetdicom makes for each association.

DIMSE is a request/response protocol of small PDUs (A-ASSOCIATE, C-ECHO,
C-FIND identifiers and responses, C-STORE responses).  With Nagle's
algorithm on, a small write waits for the ACK of the previous one, which the
peer delays by up to 40 ms on Linux: an association opened, one C-FIND and
released costs several such stalls.  ``TCP_NODELAY`` sends each PDU at once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from pynetdicom.presentation import PresentationContext


def no_delay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: turn Nagle's algorithm off on the
    association's socket (pynetdicom fires it for accepted connections and
    for the ones it opens, before the first PDU), and acknowledge what we
    read at once (see :func:`_quick_ack`)."""
    wrapper: Any = getattr(event.assoc.dul, "socket", None)
    sock = getattr(wrapper, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # already closed by the peer: nothing to tune
        return
    if hasattr(socket, "TCP_QUICKACK"):
        wrapper.recv = _quick_ack(wrapper.recv, sock)


def _quick_ack(recv: Callable[[int], bytearray], sock: socket.socket) -> Callable[[int], bytearray]:
    """``recv`` that acknowledges the bytes read without delay (Linux).

    Peers that keep Nagle's algorithm on (dcmtk's tools, Orthanc) write a
    PDU as its 6-byte header then its body: the body waits for the ACK of
    the header, which Linux delays by 40 ms.  pynetdicom reads the header,
    then blocks on the body; setting ``TCP_QUICKACK`` after each read sends
    the pending ACK now (the option does not stick, hence after every read).
    Measured: a dcmtk ``echoscu`` association 83 -> ~40 ms."""

    def recv_and_ack(nr_bytes: int) -> bytearray:
        data = recv(nr_bytes)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
        return data

    return recv_and_ack


class Contexts(list[PresentationContext]):
    """The presentation contexts we accept, cheap to deep-copy.

    pynetdicom deep-copies the listener's contexts for each association it
    accepts, so that negotiation never alters the shared ones.  Ours are 170
    storage SOP classes in 45 transfer syntaxes each; ``copy.deepcopy`` of
    them took 64 ms per association (most of an association's 75 ms, C-ECHO
    included).  A context holds immutable values (UIDs, ints, bools) and one
    list of transfer syntaxes: copying the attributes and that list gives
    each association objects of its own in well under a millisecond."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return [_copy_context(cx) for cx in self]


def _copy_context(cx: PresentationContext) -> PresentationContext:
    copied = PresentationContext.__new__(PresentationContext)
    copied.__dict__.update(cx.__dict__)
    copied._transfer_syntax = list(cx._transfer_syntax)
    return copied


__all__ = ["Contexts", "no_delay"]
