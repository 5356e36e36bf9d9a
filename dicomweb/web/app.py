"""The Klein application: thin async routes over one store.

Everything the routes need (store, reactor, thread pool, settings) is
injected through ``__init__``; routes raise :class:`HTTPError`, which is
turned into an HTTP answer in one place (``_http_error``).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request

from ..dicom import stowresponse
from ..dicom.dicomjson import dumps
from ..dicom.dicomxml import to_xml
from ..dicom.pixels import PixelError
from ..dicom.query import DEFAULT_MAX_LIMIT, Level
from ..dicom.rejection import parse_rejection
from ..dicom.uids import is_valid_uid
from ..io.multipart import close_delimiter, delimiter, part_header
from ..store import NotFound, Store, StoreUnavailable
from ..twistedtypes import IReactor
from . import capabilities, negotiation, qido, wadouri
from .changefeed import ChangeFeed
from .compression import BodyCache, Coder
from .derived import DerivedCache
from .errors import HTTPError, bad_request
from .metrics import Metrics
from .precompute import Precompute
from .stow import body_shape, store_body
from .validators import CACHE_CONTROL, add_vary
from .wado import Wado

if TYPE_CHECKING:
    from ..config import Settings

log = Logger()


@dataclass(frozen=True)
class WebSettings:
    base_url: str | None = None  # public URL used in RetrieveURL / BulkDataURI
    trust_forwarded: bool = False  # honour X-Forwarded-Proto/Host/Prefix
    qido_max_limit: int = DEFAULT_MAX_LIMIT  # answers per QIDO page at most (limit=0: this)
    derived_dir: str | None = None  # derived frame cache (transcoded frames kept); None = off
    derived_cache_bytes: int = 0
    precompute: str = "none"  # "htj2k": encode new instances' frames after STOW
    changefeed_waiters: int = 100  # change-feed long-poll waiters at most (then 503)
    compression: bool = True  # gzip/br for JSON and XML answers (README "Compression and caching")
    metadata_cache_size: int = 64 << 20  # bytes of compressed study/series metadata kept

    @classmethod
    def from_settings(cls, settings: Settings) -> WebSettings:
        """The web layer's part of the service's settings."""
        return cls(base_url=settings.base_url, trust_forwarded=settings.trust_forwarded,
                   compression=not settings.no_compression, metadata_cache_size=settings.metadata_cache_size,
                   changefeed_waiters=settings.changefeed_waiters,
                   derived_dir=os.path.join(settings.data_dir, "derived"),
                   derived_cache_bytes=settings.derived_cache_mb << 20, precompute=settings.precompute)


class DICOMwebApp:
    app = Klein()

    def __init__(self, store: Store, reactor: IReactor, pool: ThreadPool, settings: WebSettings | None = None,
                 metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self.reactor = reactor
        self.pool = pool
        self.settings = settings or WebSettings()
        self.coder = Coder(reactor, pool, self.settings.compression)
        derived = None
        if self.settings.derived_dir and self.settings.derived_cache_bytes > 0:
            derived = DerivedCache(self.settings.derived_dir, self.settings.derived_cache_bytes)
        self.wado = Wado(store, reactor, pool, self.coder, BodyCache(self.settings.metadata_cache_size, self.metrics),
                         derived, lambda result: self.metrics.derived.labels(result).inc())
        self.precompute = Precompute(self.wado, self.settings.precompute) \
            if self.settings.precompute != "none" else None
        self.changefeed = ChangeFeed(store, reactor, self.settings.changefeed_waiters, self.metrics.changefeed_waiters)

    def resource(self) -> IResource:
        return self.app.resource()

    # -- helpers ------------------------------------------------------------

    def base_url(self, request: Request) -> str:
        """The public root URL for links, without a trailing slash."""
        if self.settings.base_url:
            return self.settings.base_url.rstrip("/")
        scheme = b"https" if request.isSecure() else b"http"
        host = request.getHeader(b"host") or b"localhost"
        prefix = b""
        if self.settings.trust_forwarded and request.getHeader(b"x-forwarded-host"):
            scheme = (request.getHeader(b"x-forwarded-proto") or scheme).split(b",")[0].strip()
            host = (request.getHeader(b"x-forwarded-host") or host).split(b",")[0].strip()
            prefix = (request.getHeader(b"x-forwarded-prefix") or b"").rstrip(b"/")
        else:
            host = _with_port(host, scheme, request.getHost().port)
        return (scheme + b"://" + host + prefix).decode("latin-1")

    @staticmethod
    def _uids(**uids: str | None) -> None:
        for name, value in uids.items():
            if value is not None and not is_valid_uid(value):
                raise bad_request(f"{name} is not a valid UID")

    async def _dataset_body(self, request: Request, datasets: list[dict[str, Any]], single: bool = False) -> bytes:
        """Encode datasets as DICOM JSON or (multipart) XML, as negotiated,
        compressed when the client accepts it (compression.py)."""
        kind = negotiation.choose_dataset_type(request.getHeader(b"accept"))
        add_vary(request, b"Accept")
        if kind == negotiation.DICOM_JSON:
            request.setHeader(b"content-type", b"application/dicom+json")
            return await self.coder.encode(request, dumps(datasets[0] if single else datasets))
        if single:
            request.setHeader(b"content-type", b"application/dicom+xml")
            return await self.coder.encode(request, to_xml(datasets[0]))
        boundary = uuid.uuid4().hex
        request.setHeader(b"content-type",
                          f'multipart/related; type="application/dicom+xml"; boundary={boundary}'.encode())
        parts = [delimiter(boundary, first=(i == 0)) + part_header("application/dicom+xml") + to_xml(ds)
                 for i, ds in enumerate(datasets)]
        return await self.coder.encode(request, b"".join(parts) + close_delimiter(boundary))

    # -- errors -------------------------------------------------------------

    @app.handle_errors(HTTPError)
    def _http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPError)
        request.setResponseCode(error.status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        for name, value in error.headers.items():
            request.setHeader(name.encode(), value.encode())
        return (error.reason + "\n").encode("utf-8")

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (str(failure.value) + "\n").encode("utf-8")

    @app.handle_errors(StoreUnavailable)
    def _unavailable(self, request: IRequest, failure: Failure) -> bytes:
        request.setResponseCode(503)
        request.setHeader(b"retry-after", b"5")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"the store is unavailable; retry later\n"

    @app.handle_errors(PixelError)
    def _pixel_error(self, request: IRequest, failure: Failure) -> bytes:
        # NotAcceptable: the representation asked for cannot be made. CannotDecode:
        # the stored pixel data cannot be decoded, so no image representation of
        # it can be made either; 406 with the reason, never a 500.
        error = failure.value
        assert isinstance(error, PixelError)
        request.setResponseCode(406)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (f"cannot produce the requested representation: {error.reason}"[:500] + "\n").encode("utf-8")

    @app.handle_errors(CancelledError)
    def _cancelled(self, request: IRequest, failure: Failure) -> bytes:
        return b""  # the client went away; nothing to answer

    # -- health -------------------------------------------------------------

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: Request) -> bytes:
        """Liveness: the process answers."""
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n"

    @app.route("/ready", methods=["GET", "HEAD"])
    async def ready(self, request: Request) -> bytes:
        """Readiness: the store answers too."""
        request.setHeader(b"content-type", b"text/plain")
        if await self.store.ready():
            return b"ready\n"
        request.setResponseCode(503)
        request.setHeader(b"retry-after", b"5")
        return b"store unavailable\n"

    @app.route("/metrics", methods=["GET"])
    async def metrics_text(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return await self.coder.encode(request, self.metrics.exposition())

    # -- STOW-RS ------------------------------------------------------------

    @app.route("/studies", methods=["POST"])
    async def stow_all(self, request: Request) -> bytes:
        return await self._stow(request, None)

    @app.route("/studies/<study>", methods=["POST"])
    async def stow_study(self, request: Request, study: str) -> bytes:
        self._uids(study=study)
        return await self._stow(request, study)

    async def _stow(self, request: Request, study: str | None) -> bytes:
        body: Any = request.content
        try:
            if getattr(request, "too_large", False):
                limit = getattr(request, "max_body", 0)
                raise HTTPError(413, f"request body larger than the {limit} byte limit")
            if (error := getattr(request, "receive_error", None)) is not None:
                # RFC 4918 11.5: the server cannot store what the request needs.
                raise HTTPError(507, f"{error} while receiving the body: nothing of it was stored",
                                {"Retry-After": "60"})
            shape = body_shape(request.getHeader(b"content-type"))
            negotiation.choose_dataset_type(request.getHeader(b"accept"))  # 406 before storing anything
            self.coder.choose(request)
            results = await store_body(self.store, self.reactor, self.pool, body, shape, study,
                                       getattr(request, "preparer", None))
        finally:
            body.close()
        failures = sum(1 for r in results if r.failure)
        if self.precompute is not None:
            self.precompute.submit((r.study_uid, r.series_uid, r.sop_uid) for r in results if not r.failure)
        self.metrics.instances.labels("stored").inc(len(results) - failures)
        self.metrics.instances.labels("failed").inc(failures)
        status, dataset = stowresponse.response(results, self.base_url(request), study)
        request.setResponseCode(status)
        log.info("STOW: {stored} stored, {failed} failed", stored=sum(1 for r in results if not r.failure),
                 failed=sum(1 for r in results if r.failure))
        return await self._dataset_body(request, [dataset], single=True)

    # -- QIDO-RS ------------------------------------------------------------

    @app.route("/studies", methods=["GET", "HEAD"])
    async def search_studies(self, request: Request) -> bytes:
        return await self._search(request, "study")

    @app.route("/series", methods=["GET", "HEAD"])
    async def search_series(self, request: Request) -> bytes:
        return await self._search(request, "series")

    @app.route("/instances", methods=["GET", "HEAD"])
    async def search_instances(self, request: Request) -> bytes:
        return await self._search(request, "instance")

    @app.route("/studies/<study>/series", methods=["GET", "HEAD"])
    async def search_study_series(self, request: Request, study: str) -> bytes:
        return await self._search(request, "series", study)

    @app.route("/studies/<study>/instances", methods=["GET", "HEAD"])
    async def search_study_instances(self, request: Request, study: str) -> bytes:
        return await self._search(request, "instance", study)

    @app.route("/studies/<study>/series/<series>/instances", methods=["GET", "HEAD"])
    async def search_series_instances(self, request: Request, study: str, series: str) -> bytes:
        return await self._search(request, "instance", study, series)

    @app.route("/patients", methods=["GET", "HEAD"])
    async def search_patients(self, request: Request) -> bytes:
        """The patient level (not a PS3.18 resource; README "Patients")."""
        return await self._search(request, "patient")

    async def _search(self, request: Request, level: Level, study: str | None = None,
                      series: str | None = None) -> bytes:
        """Search within the path's study/series; an unknown one gives 200 [] (README)."""
        self._uids(study=study, series=series)
        negotiation.choose_dataset_type(request.getHeader(b"accept"))  # 406 before any work
        self.coder.choose(request)
        query = qido.parse(request.uri, level, study, series, self.settings.qido_max_limit)
        base = self.base_url(request)
        results = qido.finish(await self.store.search(query), query, base)
        for warning in qido.warning_headers(query, base):
            request.responseHeaders.addRawHeader(b"warning", warning)
        request.setHeader(b"cache-control", CACHE_CONTROL)  # patient data: this user's cache only
        return await self._dataset_body(request, results)

    # -- WADO-RS (the logic is in wado.py) ----------------------------------

    @app.route("/studies/<study>", methods=["GET", "HEAD"])
    async def retrieve_study(self, request: Request, study: str) -> None:
        self._uids(study=study)
        await self.wado.retrieve(request, self.base_url(request), study)

    @app.route("/studies/<study>/series/<series>", methods=["GET", "HEAD"])
    async def retrieve_series(self, request: Request, study: str, series: str) -> None:
        self._uids(study=study, series=series)
        await self.wado.retrieve(request, self.base_url(request), study, series)

    @app.route("/studies/<study>/series/<series>/instances/<sop>", methods=["GET", "HEAD"])
    async def retrieve_instance(self, request: Request, study: str, series: str, sop: str) -> None:
        self._uids(study=study, series=series, sop=sop)
        await self.wado.retrieve(request, self.base_url(request), study, series, sop)

    @app.route("/studies/<study>/metadata", methods=["GET", "HEAD"])
    async def study_metadata(self, request: Request, study: str) -> bytes:
        self._uids(study=study)
        return await self.wado.metadata(request, self.base_url(request), study)

    @app.route("/studies/<study>/series/<series>/metadata", methods=["GET", "HEAD"])
    async def series_metadata(self, request: Request, study: str, series: str) -> bytes:
        self._uids(study=study, series=series)
        return await self.wado.metadata(request, self.base_url(request), study, series)

    @app.route("/studies/<study>/series/<series>/instances/<sop>/metadata", methods=["GET", "HEAD"])
    async def instance_metadata(self, request: Request, study: str, series: str, sop: str) -> bytes:
        self._uids(study=study, series=series, sop=sop)
        return await self.wado.metadata(request, self.base_url(request), study, series, sop)

    @app.route("/studies/<study>/series/<series>/instances/<sop>/frames/<frames>", methods=["GET"])
    async def frames(self, request: Request, study: str, series: str, sop: str, frames: str) -> None:
        self._uids(study=study, series=series, sop=sop)
        await self.wado.frames(request, self.base_url(request), study, series, sop, frames)

    @app.route("/studies/<study>/series/<series>/instances/<sop>/bulk/<path:path>", methods=["GET"])
    async def bulk(self, request: Request, study: str, series: str, sop: str, path: str) -> None:
        self._uids(study=study, series=series, sop=sop)
        await self.wado.bulk(request, self.base_url(request), study, series, sop, path)

    # -- rendered and thumbnails ---------------------------------------------

    @app.route("/studies/<study>/series/<series>/instances/<sop>/rendered", methods=["GET"])
    async def rendered_instance(self, request: Request, study: str, series: str, sop: str) -> bytes:
        self._uids(study=study, series=series, sop=sop)
        return await self.wado.rendered(request, study, series, sop, None, thumb=False)

    @app.route("/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/rendered", methods=["GET"])
    async def rendered_frame(self, request: Request, study: str, series: str, sop: str, frames: str) -> bytes:
        self._uids(study=study, series=series, sop=sop)
        return await self.wado.rendered(request, study, series, sop, frames, thumb=False)

    @app.route("/studies/<study>/series/<series>/instances/<sop>/thumbnail", methods=["GET"])
    async def instance_thumbnail(self, request: Request, study: str, series: str, sop: str) -> bytes:
        self._uids(study=study, series=series, sop=sop)
        return await self.wado.rendered(request, study, series, sop, None, thumb=True)

    @app.route("/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/thumbnail", methods=["GET"])
    async def frame_thumbnail(self, request: Request, study: str, series: str, sop: str, frames: str) -> bytes:
        self._uids(study=study, series=series, sop=sop)
        return await self.wado.rendered(request, study, series, sop, frames, thumb=True)

    @app.route("/studies/<study>/series/<series>/thumbnail", methods=["GET"])
    async def series_thumbnail(self, request: Request, study: str, series: str) -> bytes:
        self._uids(study=study, series=series)
        return await self.wado.group_thumbnail(request, study, series)

    @app.route("/studies/<study>/thumbnail", methods=["GET"])
    async def study_thumbnail(self, request: Request, study: str) -> bytes:
        self._uids(study=study)
        return await self.wado.group_thumbnail(request, study, None)

    # -- delete and reject (README "Delete and reject") -----------------------

    @app.route("/studies/<study>", methods=["DELETE"])
    async def delete_study(self, request: Request, study: str) -> bytes:
        return await self._delete(request, study)

    @app.route("/studies/<study>/series/<series>", methods=["DELETE"])
    async def delete_series(self, request: Request, study: str, series: str) -> bytes:
        return await self._delete(request, study, series)

    @app.route("/studies/<study>/series/<series>/instances/<sop>", methods=["DELETE"])
    async def delete_instance(self, request: Request, study: str, series: str, sop: str) -> bytes:
        return await self._delete(request, study, series, sop)

    async def _delete(self, request: Request, study: str, series: str | None = None, sop: str | None = None) -> bytes:
        self._uids(study=study, series=series, sop=sop)
        count = await self.store.delete(study, series, sop)
        log.info("DELETE: {count} instances removed", count=count)
        request.setResponseCode(204)
        return b""

    @app.route("/studies/<study>/reject/<code>", methods=["POST"])
    async def reject_study(self, request: Request, study: str, code: str) -> bytes:
        return await self._reject(request, code, study)

    @app.route("/studies/<study>/series/<series>/reject/<code>", methods=["POST"])
    async def reject_series(self, request: Request, study: str, series: str, code: str) -> bytes:
        return await self._reject(request, code, study, series)

    @app.route("/studies/<study>/series/<series>/instances/<sop>/reject/<code>", methods=["POST"])
    async def reject_instance(self, request: Request, study: str, series: str, sop: str, code: str) -> bytes:
        return await self._reject(request, code, study, series, sop)

    async def _reject(self, request: Request, code: str, study: str, series: str | None = None,
                      sop: str | None = None) -> bytes:
        self._uids(study=study, series=series, sop=sop)
        try:
            rejection = parse_rejection(code)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        count = await self.store.reject(study, series, sop, rejection.value, rejection.scheme)
        log.info("reject ({code}): {count} instances", code=str(rejection), count=count)
        request.setResponseCode(204)
        return b""

    # -- change feed (README "Change feed"; the logic is in changefeed.py) -----

    @app.route("/changefeed", methods=["GET", "HEAD"])
    async def change_feed(self, request: Request) -> bytes:
        body = await self.changefeed.feed(request, self.base_url(request))
        return b"" if body is None else await self.coder.encode(request, body)  # None: an event stream, written

    @app.route("/changefeed/latest", methods=["GET", "HEAD"])
    async def change_feed_latest(self, request: Request) -> bytes:
        return await self.coder.encode(request, await self.changefeed.latest(request, self.base_url(request)))

    # -- capabilities (PS3.18 8.9; the document is built in capabilities.py) ---

    # OPTIONS routes are added below the class, one per routed path (not a
    # catch-all: a path nothing is routed on must stay 404 for every method).
    async def options_route(self, request: Request, **_uids: str) -> bytes:
        path = unquote(request.path.decode("latin-1"))
        allowed = capabilities.allowed_methods(self.app.url_map, path)
        request.setHeader(b"allow", ", ".join(allowed).encode())
        media = capabilities.choose_type(request.getHeader(b"accept"))
        coding = self.coder.choose(request)
        scope = None if path == "/" else path
        request.setHeader(b"content-type", media.encode())
        add_vary(request, b"Accept")
        document = capabilities.document(self.app.url_map, self.base_url(request), media, scope)
        return await self.coder.encode(request, document, coding)

    # -- WADO-URI ---------------------------------------------------------------

    @app.route("/wado", methods=["GET", "HEAD"])
    async def wado_uri(self, request: Request) -> bytes | None:
        return await wadouri.answer(self.wado, request)

    @app.route("/", methods=["GET", "HEAD"])
    async def root(self, request: Request) -> bytes | None:
        """WADO-URI on the root too (OHIF's ``wadoUriRoot`` often points here); else a banner."""
        if not request.args:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"dicomweb: a DICOMweb server (STOW-RS, QIDO-RS, WADO-RS, WADO-URI)\n"
        return await wadouri.answer(self.wado, request)


def _route_options(app: Klein) -> None:
    """An OPTIONS route for every routed path (Klein does not answer OPTIONS itself)."""
    for rule in sorted({r.rule for r in app.url_map.iter_rules()}):
        app.route(rule, methods=["OPTIONS"], endpoint=capabilities.OPTIONS_PREFIX + rule, branch=False)(
            DICOMwebApp.options_route)


_route_options(DICOMwebApp.app)


def _with_port(host: bytes, scheme: bytes, port: int) -> bytes:
    """Add our port to a Host header that has none (dicomweb_client sends
    ``Host: localhost`` for ``http://localhost:5985``), unless it is the
    scheme's default port."""
    if host.rsplit(b"]", 1)[-1].count(b":") or port == (443 if scheme == b"https" else 80):
        return host
    return host + b":" + str(port).encode()

