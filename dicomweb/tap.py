"""twistd plugin wiring: ``Options`` and ``makeService``. Wiring only."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from twisted.application import service, strports
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from . import config as _config
from .config import Settings, env_overrides, load_config_file, parse_size
from .web.limits import limited_channel

log = Logger()

_FLAGS = {"allow-remote", "trust-forwarded", "log-query-strings", "no-sendfile"}


class Options(_config.SecurityOptions, usage.Options):
    synopsis = "[options]"
    longdesc = "A DICOMweb server (STOW-RS, QIDO-RS, WADO-RS, WADO-URI). See README.md."
    optParameters = [
        ["port", "p", None, "Port number (binds 127.0.0.1) or a Twisted endpoint string [default: 5985]"],
        ["data-dir", "d", None, "Embedded store directory [default: ./dicomweb-data]"],
        ["base-url", None, None, "Public base URL used in RetrieveURL and BulkDataURI (behind a proxy)"],
        ["max-request-size", None, None, "Largest request body accepted, e.g. 500M, 4G [default: 4G]"],
        ["threads", None, None, "Worker threads for DICOM, image and SQLite work [default: 4]"],
        ["config", "c", None, "TOML config file with the same option names"],
        ["couchdb", None, None, "Use the CouchDB store at this URL (http://[user:password@]host:5984)"],
        ["couchdb-db", None, None, "CouchDB database name [default: dicomweb]"],
        ["couchdb-credentials", None, None, "File holding the CouchDB user:password (one line)"],
        ["couchdb-ca", None, None, "PEM CA bundle trusted for an https:// CouchDB URL [default: system CAs]"],
    ]
    optFlags = [
        ["allow-remote", None, "Allow listening on non-loopback addresses without authentication"],
        ["trust-forwarded", None, "Build public URLs from X-Forwarded-Proto/Host/Prefix"],
        ["log-query-strings", None, "Put query strings (may hold patient names/IDs) in the access log"],
        ["no-sendfile", None, "Send stored files through user space instead of os.sendfile (e.g. on a "
         "network filesystem that mishandles it)"],
    ]

    def postOptions(self) -> None:
        self.settings = self.to_settings()
        check_exposure(self.settings, authenticated=self.settings.auth != "none")

    def to_settings(self) -> Settings:
        merged: dict[str, Any] = {}
        config_path = self["config"] or os.environ.get("DICOMWEB_CONFIG")
        if config_path:
            try:
                merged.update(load_config_file(config_path))
            except (OSError, ValueError) as exc:
                raise usage.UsageError(f"cannot read config file: {exc}") from None
        merged.update(env_overrides())
        merged.pop("config", None)
        for key in list(self.keys()):
            if key in _FLAGS:
                if self[key]:
                    merged[key] = True
            elif self[key] is not None and key != "config":
                merged[key] = self[key]
        return _settings_from(merged)


def _settings_from(values: dict[str, Any]) -> Settings:
    values = dict(values)
    known = {"port", "data-dir", "base-url", "max-request-size", "threads", *_FLAGS, *_config.SECURITY_KEYS,
             "couchdb", "couchdb-db", "couchdb-credentials", "couchdb-user", "couchdb-password", "couchdb-ca"}
    unknown = set(values) - known
    if unknown:
        raise usage.UsageError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    try:
        kwargs: dict[str, Any] = _config.security_settings(values)  # pops its keys
        for key, value in values.items():
            attr = key.replace("-", "_")
            if key == "max-request-size":
                kwargs[attr] = parse_size(value)
            elif key == "threads":
                kwargs[attr] = int(value)
                if kwargs[attr] < 1:
                    raise ValueError("threads must be at least 1")
            elif key in _FLAGS:
                kwargs[attr] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
            else:
                kwargs[attr] = str(value)
        settings = Settings(**kwargs)
        _config.validate_security(settings)
        return settings
    except ValueError as exc:
        raise usage.UsageError(str(exc)) from None


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


class MeteredSite(Site):
    """A Site that reports every finished request to the metrics."""

    def __init__(self, metrics: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    def log(self, request: Any) -> None:
        self._metrics.observe_request(request)
        super().log(request)


class _StoreThenListen(service.MultiService):
    """Start the thread pool, open the store, then start listening."""

    def __init__(self, store: Any, pool: ThreadPool, listener: service.Service) -> None:
        super().__init__()
        self.store, self.pool, self.listener = store, pool, listener

    def startService(self) -> None:
        super().startService()
        self.pool.start()
        from twisted.internet import reactor

        d = ensureDeferred(self.store.open())
        d.addCallback(lambda _: self.listener.setServiceParent(self))
        d.addErrback(self._failed, reactor)

    def _failed(self, failure: Any, reactor: Any) -> None:
        log.failure("cannot open the store", failure)
        reactor.stop()

    def stopService(self) -> Any:
        d = super().stopService()

        def _after(_: Any) -> None:
            ensureDeferred(self.store.close())
            self.pool.stop()

        if d is None:
            _after(None)
            return None
        return d.addBoth(_after)


def _couch_store(settings: Settings, reactor: Any, pool: ThreadPool) -> Any:
    from .store.couch import CouchStore

    try:
        user, password = settings.couchdb_login()
        return CouchStore(settings.couchdb or "", settings.couchdb_db, reactor, pool, user=user, password=password,
                          spool_dir=os.path.join(settings.data_dir, "spool"), ca_file=settings.couchdb_ca)
    except (OSError, ValueError) as exc:
        raise usage.UsageError(f"CouchDB settings: {exc}") from None


def _tune_transports() -> None:
    """Move bytes in bigger steps than Twisted's defaults (128 KB per send,
    64 KB per receive): DICOM bodies are megabytes, and every step is a trip
    round the reactor loop in Python."""
    from twisted.internet import abstract, tcp

    abstract.FileDescriptor.SEND_LIMIT = 1 << 20
    tcp.Connection.bufferSize = 256 * 1024


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from .store.embedded import EmbeddedStore
    from .web.accesslog import access_log_formatter
    from .web.app import DICOMwebApp, WebSettings
    from .web.metrics import InstrumentedStore, Metrics
    from .web.request import request_factory
    from .web.security import secure_root

    settings: Settings = options.settings if isinstance(options, Options) else options["settings"]
    _tune_transports()
    from .web import sendfile

    sendfile.enabled = not settings.no_sendfile
    pool = ThreadPool(minthreads=1, maxthreads=settings.threads, name="dicomweb")
    store: Any
    if settings.couchdb:
        store = _couch_store(settings, reactor, pool)
    else:
        store = EmbeddedStore(settings.data_dir, reactor, pool)
    metrics = Metrics()
    app = DICOMwebApp(InstrumentedStore(store, metrics), reactor, pool,  # type: ignore[arg-type]
                      WebSettings(settings.base_url, settings.trust_forwarded), metrics)
    root = secure_root(app.resource(), settings, reactor, pool)
    site = MeteredSite(metrics, root, logFormatter=access_log_formatter(settings.log_query_strings))
    site.requestFactory = request_factory(settings.max_request_size, store.spool_file)
    site.displayTracebacks = False
    site.protocol = limited_channel  # type: ignore[method-assign]  # 414/431 for over-long request heads
    listener = strports.service(endpoint_description(settings.port), site)  # type: ignore[arg-type]
    return _StoreThenListen(store, pool, listener)
