"""twistd plugin wiring: ``Options`` and ``makeService``. Wiring only."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application import service, strports
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .config import Settings, load_settings
from .dimse import server as dimse
from .options import usage_flags, usage_handlers, usage_parameters
from .twistedtypes import IReactor, global_reactor

if TYPE_CHECKING:
    from twisted.web.server import Site

    from .store.base import Store
    from .store.couch import CouchStore

log = Logger()

#: Seconds shutdown waits for the store to close.
CLOSE_TIMEOUT = 5.0


class Options(usage.Options):
    """twistd's options, derived from :data:`dicomweb.options.OPTIONS`."""

    synopsis = "[options]"
    longdesc = "A DICOMweb server (STOW-RS, QIDO-RS, WADO-RS, WADO-URI). See README.md."
    optParameters = usage_parameters()
    optFlags = usage_flags()

    def postOptions(self) -> None:
        self.settings = self.to_settings()
        check_exposure(self.settings, authenticated=self.settings.auth != "none")
        dimse.check_exposure(self.settings)

    def to_settings(self) -> Settings:
        """The settings from this command line, the environment and the
        config file (``dicomweb.config.load_settings``)."""
        try:
            return load_settings(self.opts)
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None


# usage.Options finds ``opt_`` methods on the class: one per repeatable option.
for _name, _handler in usage_handlers().items():
    setattr(Options, _name, _handler)


def endpoint_description(port: str) -> str:
    """A bare port number listens on loopback only; anything else is an endpoint."""
    if port.isdigit():
        return f"tcp:{port}:interface=127.0.0.1"
    return port


def _is_loopback_endpoint(description: str) -> bool:
    if description.startswith("unix:"):
        return True
    for part in description.split(":"):
        if part.startswith("interface="):
            host = part[len("interface="):].strip("[]").replace("\\", "")
            try:
                return ipaddress.ip_address(host).is_loopback
            except ValueError:
                return host == "localhost"
    return False


def check_exposure(settings: Settings, authenticated: bool = False) -> None:
    """Refuse to listen beyond loopback without auth unless explicitly allowed."""
    if authenticated or settings.allow_remote:
        return
    if not _is_loopback_endpoint(endpoint_description(settings.port)):
        raise usage.UsageError(
            "refusing to listen on a non-loopback address without authentication; "
            "configure --auth or pass --allow-remote")


class _StoreThenListen(service.MultiService):
    """Start the thread pool, open the store, then start listening.

    Stopping: the listeners stop, then (with ``drain``, in a worker process:
    :func:`dicomweb.workers.drain`) the requests in flight are answered, then
    the store closes."""

    def __init__(self, store: Store, pool: ThreadPool, listener: service.Service,
                 drain: Callable[[], Deferred[None]] | None = None) -> None:
        super().__init__()
        self.store, self.pool, self.listener, self.drain = store, pool, listener, drain

    def startService(self) -> None:
        super().startService()
        self.pool.start()
        from twisted.internet import reactor

        d = ensureDeferred(self.store.open())
        d.addCallback(lambda _: self.listener.setServiceParent(self))
        d.addErrback(self._failed, reactor)

    def _failed(self, failure: Failure, reactor: IReactorCore) -> None:
        """The store cannot be opened: stop, and exit with status 1 so that
        a supervisor (systemd ``Restart=on-failure``, an orchestrator) sees
        the failure and restarts the frontend. twistd itself always exits 0
        once its reactor stops, so the status is set after the shutdown."""
        if failure.check(RuntimeError):
            log.critical("cannot open the store: {reason}", reason=str(failure.value))
        else:
            log.failure("cannot open the store", failure)
        reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
        reactor.stop()

    def stopService(self) -> Any:
        """Stop listening, then close the store (shutdown waits for it, at
        most CLOSE_TIMEOUT seconds: a CouchDB store says goodbye to its
        database, so that other frontends know at once it is gone), then
        stop the thread pool."""
        from twisted.internet import reactor

        d = super().stopService()

        def _after(_: Any) -> Deferred[None]:
            closing = ensureDeferred(self.store.close())
            closing.addTimeout(CLOSE_TIMEOUT, reactor)
            closing.addErrback(lambda f: log.warn("the store did not close cleanly: {error}",
                                                  error=f.type.__name__ if f.type else "?"))
            closing.addBoth(lambda _: self.pool.stop())
            return closing

        if self.drain is not None:
            drain = self.drain
            d = (d or succeed(None)).addBoth(lambda _: drain())
        if d is None:
            return _after(None)
        return d.addBoth(_after)


def build_store(settings: Settings, reactor: IReactor, pool: ThreadPool, worker: int | None = None) -> Store:
    """The store of these settings; ``worker``: for that worker process of a
    server with several (:mod:`dicomweb.workers`), which leaves the startup
    and periodic maintenance to the supervising process."""
    if settings.couchdb:
        return _couch_store(settings, reactor, pool, maintenance=worker is None)
    from .store.embedded import EmbeddedStore

    return EmbeddedStore(settings.data_dir, reactor, pool, worker=worker)


def _exit_failed() -> None:
    """End the process with status 1 (after the reactor stopped and every
    service was stopped; log files are flushed line by line)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _couch_store(settings: Settings, reactor: IReactor, pool: ThreadPool, maintenance: bool = True) -> CouchStore:
    from .store.couch import CouchStore

    try:
        user, password = settings.couchdb_login()
        return CouchStore(settings.couchdb or "", settings.couchdb_db, reactor, pool, user=user, password=password,
                          spool_dir=os.path.join(settings.data_dir, "spool"), ca_file=settings.couchdb_ca,
                          maintenance=maintenance, start_wait=settings.couchdb_wait)
    except (OSError, ValueError) as exc:
        raise usage.UsageError(f"CouchDB settings: {exc}") from None


def _tune_transports() -> None:
    """Move bytes in bigger steps than Twisted's defaults (128 KB per send,
    64 KB per receive): DICOM bodies are megabytes, and every step is a trip
    round the reactor loop in Python plus a write to a part file. Receiving
    up to 1 MB per read instead of 256 KB stored 20-part STOW requests of
    0.5 MB instances 12-18% faster here (three alternating runs), with less
    CPU per instance; 4 MB gained nothing more."""
    from twisted.internet import abstract, tcp

    abstract.FileDescriptor.SEND_LIMIT = 1 << 20
    tcp.Connection.bufferSize = 1 << 20


def http_listener(settings: Settings, site: Site, reactor: Any) -> service.Service:
    """The HTTP listening service. ``reactor`` is the one its endpoint
    listens with: in a worker process (:mod:`dicomweb.workers`) it adopts
    the socket the supervising process opened instead of binding one, and
    wraps it in TLS exactly as ``listenSSL`` would, so any endpoint built
    here with that reactor works in workers too."""
    return strports.service(endpoint_description(settings.port), site, reactor=reactor)


def makeService(options: Options | dict[str, Any], reactor: IReactor | None = None) -> service.Service:
    if reactor is None:
        reactor = global_reactor()
    settings: Settings = options.settings if isinstance(options, Options) else options["settings"]
    if settings.workers > 1:
        from .workers import Supervisor

        return Supervisor(settings, reactor)
    return build_service(settings, reactor)


def build_service(settings: Settings, reactor: IReactor, worker: int | None = None,
                  listen_reactor: Any = None, dimse_socket: socket.socket | None = None) -> service.MultiService:
    """The server in this process; ``worker``/``listen_reactor``/``dimse_socket``:
    as worker process ``worker`` of a supervising process
    (:mod:`dicomweb.workers`), listening with ``listen_reactor`` (see
    :func:`http_listener`) and serving DIMSE on the inherited ``dimse_socket``."""
    from .web.metrics import Metrics
    from .web.site import build_site

    _tune_transports()
    from .web import sendfile

    sendfile.enabled = not settings.no_sendfile
    pool = ThreadPool(minthreads=1, maxthreads=settings.threads, name="dicomweb")
    store = build_store(settings, reactor, pool, worker)
    metrics = Metrics(worker or 0)
    site = build_site(settings, store, reactor, pool, metrics=metrics)
    listener = http_listener(settings, site, listen_reactor or reactor)
    drain = None
    if worker is not None:
        from .workers import drain_requests

        drain = partial(drain_requests, metrics.requests_in_flight, reactor)
    both = dimse.with_dimse(listener, settings, store, reactor, pool, dimse_socket)
    return _StoreThenListen(store, pool, both, drain)
