"""TCP options on the DIMSE sockets, against 40 ms stalls on small exchanges.

DIMSE is a request/response protocol of small messages (a C-ECHO, the
command of every C-STORE, each C-FIND answer).  Two TCP mechanisms together
stall such exchanges for the delayed-ACK timeout (40 ms on Linux):

- a sender with Nagle's algorithm on holds a short segment until everything
  it sent before is acknowledged.  Debian's dcmtk tools leave Nagle on unless
  ``TCP_NODELAY=1`` is in their environment, and write a P-DATA-TF PDU's
  header and its body with two calls, so the body waits for the header's ACK;
- a receiver that has just answered (Linux's "ping-pong" mode) delays that
  ACK, hoping to send it with its next answer.

Measured on loopback with ``echoscu`` against a bare pynetdicom SCP: 70 ms
per association, 30 ms with both fixes below, 20 ms with Nagle off in the
client as well.

Our side of it: ``TCP_NODELAY`` on every socket we write (accepted ones and
the C-MOVE sub-associations we open), so that our answers never wait for an
ACK; and ``TCP_QUICKACK`` re-armed after each read of an accepted socket
(Linux clears it whenever the socket answers), so that a client with Nagle
on gets its ACK at once.  Both are Linux/BSD socket options; where one is
missing the socket is left as the system made it.
"""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import datetime
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def no_delay(sock: Any) -> None:
    """Nagle's algorithm off on ``sock`` (a plain or TLS socket)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        return


def _quick_ack(sock: socket.socket) -> None:
    if _QUICKACK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        return


#: pynetdicom reads a PDU's body in recv calls of this size, then the rest.
_CHUNK = 4096


def _after_read(sock: socket.socket, asked: int, got: int) -> None:
    """Re-arm the quick ACK when a read may have emptied what the peer sent:
    a PDU header, the tail of a PDU, or a short read.  A full chunk in the
    middle of a large PDU is followed by more data, which Linux acknowledges
    every second segment anyway; skipping it saves two thirds of the
    ``setsockopt`` calls (4 % of the GIL-holding samples receiving C-STOREs
    at 16 KiB PDUs)."""
    if asked < _CHUNK or got < asked:
        _quick_ack(sock)


class QuickAckSocket(socket.socket):
    """An accepted socket that acknowledges what it reads at once."""

    __slots__ = ()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        _after_read(self, bufsize, len(data))
        return data


class QuickAckSSLSocket(ssl.SSLSocket):
    """The same for DICOM TLS (the socket class of our server context and of
    the context for ``tls://`` peers)."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        data = super().recv(buflen, flags)
        _after_read(self, buflen, len(data))
        return data


def tune(client: socket.socket) -> socket.socket:
    """A freshly accepted plain socket as a :class:`QuickAckSocket` with
    Nagle off (same descriptor, timeout kept)."""
    timeout = client.gettimeout()
    tuned = QuickAckSocket(client.family, client.type, client.proto, fileno=client.detach())
    tuned.settimeout(timeout)
    no_delay(tuned)
    _quick_ack(tuned)
    return tuned


class TunedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the socket options above on every
    accepted connection (before the TLS handshake, when there is one)."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        raw, address = self.socket.accept()
        client = tune(raw)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True)
        return client, address


class _AdoptingAssociationServer(TunedAssociationServer):
    """The tuned server on a listening socket opened by another process (the
    supervisor of ``--workers``): ``adopted`` replaces the socket pynetdicom
    made, with pynetdicom's own timeout on it, instead of binding that one."""

    adopted: socket.socket

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.close()
        self.socket = self.adopted
        if self.ae.network_timeout is not None:
            self.socket.settimeout(self.ae.network_timeout)
        self.server_address = self.socket.getsockname()


def start_server(ae: Any, address: tuple[str, int], evt_handlers: list[Any],
                 ssl_context: ssl.SSLContext | None, listening: socket.socket | None = None
                 ) -> TunedAssociationServer:
    """``ae.start_server(address, block=False, ...)`` with the tuned server
    class: pynetdicom's ``make_server`` takes the class, then the server runs
    in a daemon thread of its own, as ``start_server`` does. ``listening``:
    a socket already bound and listening to serve instead of binding ``address``."""
    if ssl_context is not None:
        ssl_context.sslsocket_class = QuickAckSSLSocket
    server_class: type[TunedAssociationServer] = TunedAssociationServer
    if listening is not None:
        server_class = type("AdoptingAssociationServer", (_AdoptingAssociationServer,), {"adopted": listening})
    server: TunedAssociationServer = ae.make_server(address, ssl_context=ssl_context, evt_handlers=evt_handlers,
                                                    server_class=server_class)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


def on_connection_open(event: Any) -> None:
    """``EVT_CONN_OPEN`` of an association we request (C-MOVE): the same
    options.  The peer answers each of our C-STOREs; dcmtk's ``storescp``
    writes its answer in two parts with Nagle on, so without the quick ACK
    every sub-operation waited 40 ms (19 instances/s on loopback).  pynetdicom
    triggers this event in its DUL thread right after ``connect``, before it
    reads or writes, so the socket object can still be replaced."""
    holder = getattr(event.assoc.dul, "socket", None)
    sock = getattr(holder, "socket", None)
    if holder is None or sock is None:
        return
    if type(sock) is socket.socket:
        holder.socket = tune(sock)
    else:  # TLS: the handshake is done on this object; Nagle off only
        no_delay(sock)


__all__ = ["QuickAckSocket", "TunedAssociationServer", "no_delay", "on_connection_open", "start_server", "tune"]
