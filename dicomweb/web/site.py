"""The HTTP site: the app, its auth/CORS wrapper, metrics and request class.

Built in one place so that the twistd service (:mod:`dicomweb.tap`) and the
in-process tests serve exactly the same resource tree and request handling.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.python.threadpool import ThreadPool
from twisted.web.http import Request
from twisted.web.server import Site

from ..config import Settings
from ..ingest import PartPreparer
from ..store import Spool, Store
from ..twistedtypes import IReactor
from .accesslog import access_log_formatter
from .app import DICOMwebApp, WebSettings
from .limits import limited_channel
from .metrics import InstrumentedStore, Metrics
from .request import request_factory
from .security import secure_root


class MeteredSite(Site):
    """A Site that reports every finished request to the metrics.

    Over TLS it offers HTTP/2 by ALPN (``h2``, then ``http/1.1``; RFC 9113
    3.2) unless ``http2`` is off: ``--port ssl:...`` wraps the site in a TLS
    factory that asks it which protocols to offer, and a connection that
    negotiated ``h2`` is served by twisted.web's HTTP/2 channel with the same
    request class and resource tree. Plain TCP stays HTTP/1.x (no h2c).
    """

    def __init__(self, metrics: Metrics, *args: Any, http2: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics
        self.http2 = http2

    def acceptableProtocols(self) -> list[bytes]:
        offered: list[bytes] = super().acceptableProtocols()
        return offered if self.http2 else [p for p in offered if p != b"h2"]

    def log(self, request: Request) -> None:
        self._metrics.observe_request(request)
        super().log(request)


def build_site(settings: Settings, store: Store, reactor: IReactor, pool: ThreadPool, *,
               spool: Spool | None = None, metrics: Metrics | None = None) -> MeteredSite:
    """The site serving ``store``; request bodies go to ``spool`` (default:
    the store's own, which decides whether multipart bodies arrive split
    into part files)."""
    metrics = metrics or Metrics()
    app = DICOMwebApp(InstrumentedStore(store, metrics), reactor, pool,
                      WebSettings.from_settings(settings), metrics)
    root = secure_root(app.resource(), settings, reactor, pool)
    site = MeteredSite(metrics, root, reactor=reactor, logFormatter=access_log_formatter(settings.log_query_strings),
                       http2=not settings.no_http2)
    site.requestFactory = metrics.requests_in_flight.counting(
        request_factory(settings.max_request_size, spool or store.spool, partial(PartPreparer, reactor, pool)))
    site.displayTracebacks = False
    site.protocol = limited_channel  # type: ignore[method-assign]  # 414/431 for over-long request heads
    return site


__all__ = ["MeteredSite", "build_site"]
