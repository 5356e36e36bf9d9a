"""twistd plugin wiring: ``Options`` and ``makeService``. Wiring only."""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import TYPE_CHECKING, Any

from twisted.application import service, strports
from twisted.internet.defer import Deferred, ensureDeferred
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
    """Start the thread pool, open the store, then start listening."""

    def __init__(self, store: Store, pool: ThreadPool, listener: service.Service) -> None:
        super().__init__()
        self.store, self.pool, self.listener = store, pool, listener

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

        if d is None:
            return _after(None)
        return d.addBoth(_after)


def _exit_failed() -> None:
    """End the process with status 1 (after the reactor stopped and every
    service was stopped; log files are flushed line by line)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _couch_store(settings: Settings, reactor: IReactor, pool: ThreadPool) -> CouchStore:
    from .store.couch import CouchStore

    try:
        user, password = settings.couchdb_login()
        return CouchStore(settings.couchdb or "", settings.couchdb_db, reactor, pool, user=user, password=password,
                          spool_dir=os.path.join(settings.data_dir, "spool"), ca_file=settings.couchdb_ca,
                          start_wait=settings.couchdb_wait)
    except (OSError, ValueError) as exc:
        raise usage.UsageError(f"CouchDB settings: {exc}") from None


def _tune_transports() -> None:
    """Move bytes in bigger steps than Twisted's defaults (128 KB per send,
    64 KB per receive): DICOM bodies are megabytes, and every step is a trip
    round the reactor loop in Python."""
    from twisted.internet import abstract, tcp

    abstract.FileDescriptor.SEND_LIMIT = 1 << 20
    tcp.Connection.bufferSize = 256 * 1024


def makeService(options: Options | dict[str, Any], reactor: IReactor | None = None) -> service.MultiService:
    if reactor is None:
        reactor = global_reactor()
    from .store.embedded import EmbeddedStore
    from .web.site import build_site

    settings: Settings = options.settings if isinstance(options, Options) else options["settings"]
    _tune_transports()
    from .web import sendfile

    sendfile.enabled = not settings.no_sendfile
    pool = ThreadPool(minthreads=1, maxthreads=settings.threads, name="dicomweb")
    store: Store
    if settings.couchdb:
        store = _couch_store(settings, reactor, pool)
    else:
        store = EmbeddedStore(settings.data_dir, reactor, pool)
    site = build_site(settings, store, reactor, pool)
    listener = strports.service(endpoint_description(settings.port), site)
    return _StoreThenListen(store, pool, dimse.with_dimse(listener, settings, store, reactor, pool))
