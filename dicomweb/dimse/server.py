"""The DIMSE Application Entity as a Twisted service.

:class:`DimseService` builds a pynetdicom ``AE`` (our AE title, timeouts,
association limit, the presentation contexts we accept), starts its
listener in pynetdicom's own threads when the service starts, and on stop
closes the listener, lets the C-STOREs already in the store finish (they are
answered), then aborts the associations still open.

Accepted: Verification (C-ECHO); every storage SOP class, private and
unknown ones too, in the first transfer syntax the requestor proposes for it
(STOW-RS accepts any; the analysis decides), with SCP/SCU role selection so
that C-GET can send back on the same association;
C-FIND, C-GET and C-MOVE in the Patient Root and Study Root models.
"""

from __future__ import annotations

import logging
import socket
import ssl
import tempfile
from functools import partial
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from ..auth import Authenticator
from ..config import Settings
from ..store import Store
from ..twistedtypes import IReactor
from .bridge import Bridge
from .identity import Gate
from .peers import bind, is_loopback
from .sockets import QuickAckSSLSocket, start_server

log = Logger()

#: Largest PDU we receive: bigger PDUs mean fewer trips through pynetdicom's
#: Python decoding loop per megabyte (its default is 16 KiB).  1 MiB holds a
#: 512x512 16-bit image in one PDU: 4 storescu associations went from 95 to
#: 112 inst/s (256 KiB before).  Not unlimited (0): pynetdicom reads a whole
#: PDU into memory, so a peer could then send a 1 GB instance as one PDU; at
#: 1 MiB the buffers stay under 10 MiB at the default 10 associations.
MAX_PDU = 1024 * 1024
VERIFICATION = "1.2.840.10008.1.1"
#: PS3.4 C.6: Patient Root and Study Root FIND, MOVE and GET.
QUERY_RETRIEVE_MODELS = (
    "1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3",
    "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3",
)
#: Seconds ``stopService`` waits for C-STOREs in flight before aborting.
STOP_GRACE = 30.0


def check_exposure(settings: Settings) -> None:
    """``--dimse-port`` beyond loopback needs DIMSE TLS, refused unknown
    calling AEs, authentication, or ``--allow-remote`` (like ``--port``)."""
    if not settings.dimse_port:
        return
    host, _ = bind(settings.dimse_port)
    if is_loopback(host) or settings.allow_remote or settings.auth != "none":
        return
    if settings.dimse_tls_cert or settings.dimse_refuse_unknown:
        return
    raise usage.UsageError(
        "refusing to listen for DIMSE on a non-loopback address without protection; configure "
        "--dimse-tls-cert, --dimse-refuse-unknown with --dimse-peer, --auth, or pass --allow-remote")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1): our certificate; with a CA, peers must present
    a certificate it signed."""
    if not settings.dimse_tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.dimse_tls_cert, settings.dimse_tls_key)
    if settings.dimse_tls_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(settings.dimse_tls_ca)
    return ctx


def peer_tls_context(settings: Settings) -> ssl.SSLContext:
    """DICOM TLS to a ``tls://`` peer (C-MOVE): the peer's certificate must
    be signed by ``--dimse-tls-ca`` (the system's CAs when unset) and name
    its host; ours (``--dimse-tls-cert``), when configured, is offered as the
    client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.dimse_tls_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.dimse_tls_cert:
        ctx.load_cert_chain(settings.dimse_tls_cert, settings.dimse_tls_key)
    ctx.sslsocket_class = QuickAckSSLSocket
    return ctx


def configure_pynetdicom(spool_dir: str | None) -> None:
    """Process-wide pynetdicom settings: received data sets go to a file in
    the store's spool directory (one file system with the store, so it can be
    renamed into place), sent files are not decoded, and pynetdicom never
    logs identifiers (they hold patient names and IDs)."""
    from pynetdicom import _config, dimse_messages

    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # pynetdicom accepts any storage SOP class proposed (private ones too):
    # STOW-RS stores any SOP class, and so does C-STORE.
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    # pynetdicom's INFO lines dump data sets; warnings and errors do not.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if spool_dir:
        dimse_messages.NamedTemporaryFile = partial(tempfile.NamedTemporaryFile,  # type: ignore[assignment]
                                                    dir=spool_dir)


def build_ae(settings: Settings) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.dimse_max_associations
    ae.acse_timeout = settings.dimse_acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.dimse_network_timeout
    ae.maximum_pdu_size = MAX_PDU
    # Storage contexts are not listed: with UNRESTRICTED_STORAGE_SERVICE
    # (configure_pynetdicom) pynetdicom accepts every storage, private or
    # unknown SOP class proposed, in the first transfer syntax proposed, with
    # the SCU and SCP roles the requestor asks for (what C-GET needs).  Listing
    # them all (177 contexts, 7,678 transfer syntaxes) cost 60-85 ms per
    # association: pynetdicom deep-copies the supported list for each one.
    ae.add_supported_context(VERIFICATION)
    for model in QUERY_RETRIEVE_MODELS:
        ae.add_supported_context(model)
    return ae


class DimseService(service.Service):
    """The DIMSE listener: started after the store is open, stopped before
    it closes (it is a sibling of the HTTP listener)."""

    name = "dimse"

    def __init__(self, settings: Settings, store: Store, reactor: IReactor, pool: ThreadPool,
                 authenticator: Authenticator | None, listening: socket.socket | None = None) -> None:
        """``listening``: the DIMSE socket, already bound and listening (a
        worker process of ``--workers``), instead of binding ``dimse_port``."""
        self.settings, self.store, self.reactor, self.pool = settings, store, reactor, pool
        self.listening = listening
        self.bridge = Bridge(reactor)
        self.gate = Gate(settings.dimse_peers, settings.dimse_refuse_unknown, authenticator, self.bridge)
        self.server: Any = None
        self.port = 0

    def handlers(self) -> list[tuple[Any, Any]]:
        from pynetdicom import evt

        from .find import FindSCP
        from .retrieve import Retriever
        from .storage import StorageSCP, discard_partial

        tls = peer_tls_context(self.settings) if any(p.tls for p in self.settings.dimse_peers) else None
        retriever = Retriever(self.store, self.bridge, self.gate, self.settings.ae_title, self.settings.dimse_peers,
                              peer_tls=tls)
        return [
            (evt.EVT_REQUESTED, self.gate.on_requested),
            (evt.EVT_USER_ID, self.gate.on_user_id),
            (evt.EVT_C_ECHO, self._echo),
            (evt.EVT_C_STORE, StorageSCP(self.store, self.reactor, self.pool, self.bridge, self.gate)),
            (evt.EVT_C_FIND, FindSCP(self.store, self.bridge, self.gate, self.settings.ae_title)),
            (evt.EVT_C_GET, retriever.get),
            (evt.EVT_C_MOVE, retriever.move),
            (evt.EVT_ABORTED, discard_partial),
            (evt.EVT_CONN_CLOSE, discard_partial),
        ]

    def _echo(self, event: Any) -> int:
        return 0x0000 if self.gate.principal(event.assoc) is not None else 0x0124

    def startService(self) -> None:
        super().startService()
        configure_pynetdicom(getattr(self.store, "spool_dir", None))
        ae = build_ae(self.settings)
        host, port = bind(self.settings.dimse_port or "0")
        self.server = start_server(ae, (host, port), self.handlers(), tls_context(self.settings), self.listening)
        self.port = self.server.server_address[1]
        log.info("DIMSE listener (AE {ae}{tls}) starting on {port}", ae=self.settings.ae_title,
                 tls=", TLS" if self.settings.dimse_tls_cert else "", port=self.port)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        server, self.server = self.server, None
        if server is None:
            return None
        d = deferToThread(server.shutdown)  # stops accepting; blocks until its loop ends
        d.addCallback(lambda _: self._drain())
        d.addBoth(lambda _: deferToThread(_abort_all, server))
        d.addBoth(lambda _: log.info("DIMSE listener stopped"))
        return d

    def _drain(self) -> Deferred[Any]:
        """Fires when the stores in flight are answered, or after STOP_GRACE."""
        from twisted.internet.task import deferLater

        timeout = deferLater(self.reactor, STOP_GRACE, lambda: None)
        idle = self.bridge.close()
        first = DeferredList([idle, timeout], fireOnOneCallback=True, consumeErrors=True)
        first.addBoth(lambda _: timeout.cancel() if not timeout.called else None)
        return first


def _abort_all(server: Any) -> None:
    for assoc in list(server.active_associations):
        assoc.abort()


def dimse_service(settings: Settings, store: Store, reactor: IReactor, pool: ThreadPool,
                  listening: socket.socket | None = None) -> DimseService | None:
    """The DIMSE service for these settings, or None when ``--dimse-port`` is unset."""
    if not settings.dimse_port:
        return None
    authenticator = None
    if settings.auth != "none":
        from ..auth import build_authenticator
        from ..web.security import idp_agent

        agent = idp_agent(reactor, settings.oidc_ca_file) if settings.auth == "oidc" else None
        authenticator = build_authenticator(settings.auth, settings.auth_settings, reactor, agent, threadpool=pool)
    return DimseService(settings, store, reactor, pool, authenticator, listening)


def with_dimse(listener: service.Service, settings: Settings, store: Store, reactor: IReactor,
               pool: ThreadPool, listening: socket.socket | None = None) -> service.Service:
    """``listener`` alone, or beside the DIMSE service when it is configured
    (on ``listening``, when given: see :class:`DimseService`)."""
    dimse = dimse_service(settings, store, reactor, pool, listening)
    if dimse is None:
        return listener
    both = service.MultiService()
    listener.setServiceParent(both)
    dimse.setServiceParent(both)
    return both


__all__ = ["DimseService", "check_exposure", "configure_pynetdicom", "dimse_service", "with_dimse"]
