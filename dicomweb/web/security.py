"""CORS, authentication and authorization for every request, in one place.

:class:`SecureResource` wraps the Klein app's resource (the site's root), so
no route has to remember to check anything, and routes added later are
protected by default.  For each request, in this order:

1. CORS headers are set (also on refusals, so a browser can read a 401).
2. A CORS preflight (``OPTIONS`` + ``Origin`` + ``Access-Control-Request-Method``)
   is answered here with 204; it never carries credentials (browsers do not
   send them on preflights), so it is not authenticated.
3. ``/health`` and ``/ready`` go straight to the app: load balancers and
   orchestrators probe them anonymously.
4. The ``Authorization`` header is checked by the
   :class:`~dicomweb.auth.Authenticator` (asynchronously: ``render`` returns
   ``NOT_DONE_YET`` and renders the app once the principal is known).
5. Methods that change data (anything but GET/HEAD/OPTIONS: STOW and reject
   are POST, delete is DELETE) need the write role.

The principal is stored as ``request.dicomweb_principal`` for the access
log, which prints only its name.  The ``Authorization`` header itself is
never logged, and neither is anything about why a credential failed beyond
the fixed, client-safe reason the authenticator chose.

The request body has been received (and spooled, or discarded over the size
cap, by :mod:`dicomweb.web.request`) before ``render`` is called, so waiting
for authentication changes nothing for the routes.  A request without any
credentials keeps no body at all (:meth:`SecureResource.refuses_before_body`);
a refused request's spooled body is closed by twisted.web when it ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..auth import Authenticator, AuthError, NoAuth, Principal, build_authenticator, require_write
from ..config import Settings
from ..tlsclient import https_policy
from ..twistedtypes import IReactor

log = Logger()

#: Methods a read-only principal may use; everything else changes data.
READ_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: Paths answered without credentials (exact match): liveness and readiness
#: probes of load balancers and orchestrators, which carry no credentials.
#: /metrics is *not* here: Prometheus can send basic or bearer credentials.
EXEMPT_PATHS = frozenset({b"/health", b"/ready"})
#: Seconds browsers may cache a preflight answer (Chrome caps it at 7200).
PREFLIGHT_MAX_AGE = 7200
#: While the identity provider is unreachable (503), when to try again.
RETRY_AFTER = 5

ALLOW_METHODS = b"GET, HEAD, POST, PUT, DELETE, OPTIONS"
ALWAYS_ALLOWED_HEADERS = ("Authorization", "Accept", "Content-Type")
EXPOSE_HEADERS = (b"Content-Type, Content-Location, Location, Warning, "
                  b"WWW-Authenticate, Content-Length, Content-Range, Retry-After, ETag, Accept-Ranges")

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
#: Request headers a page's script may not have us accept: with
#: ``--trust-forwarded`` the X-Forwarded-* family decides the URLs we print,
#: and the others describe the connection, not the request.
_REFUSED_HEADER_PREFIXES = ("x-forwarded-", "forwarded", "proxy-", "sec-", "host",
                            "cookie", "connection", "x-real-ip")


@dataclass(frozen=True)
class CorsPolicy:
    """Which browser origins may call us (``--cors-origin``; ``*`` = any)."""

    origins: tuple[str, ...] = ("*",)

    @property
    def any_origin(self) -> bool:
        return "*" in self.origins

    def allowed_origin(self, origin: bytes | None) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for this request, if any."""
        if self.any_origin:
            return b"*"
        if origin is not None and origin.decode("latin-1").rstrip("/") in self.origins:
            return origin  # echoed: a list is not a valid header value
        return None

    def add_response_headers(self, request: Request) -> None:
        """Headers every response needs so a browser script may read it."""
        if not self.any_origin:
            # The answer depends on Origin: shared caches must key on it.
            request.setHeader(b"vary", b"Origin")
        allowed = self.allowed_origin(request.getHeader(b"origin"))
        if allowed is not None:
            request.setHeader(b"access-control-allow-origin", allowed)
            request.setHeader(b"access-control-expose-headers", EXPOSE_HEADERS)
            # Resource Timing (W3C): the allowed origin may see sizes and
            # phases of its requests, as a viewer measuring its loads needs.
            request.setHeader(b"timing-allow-origin", allowed)

    def answer_preflight(self, request: Request) -> bytes:
        """The 204 (or 403 for a foreign origin) answer to a preflight."""
        if self.allowed_origin(request.getHeader(b"origin")) is None:
            return plain(request, 403, "origin not allowed")
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", ALLOW_METHODS)
        request.setHeader(b"access-control-allow-headers",
                          allow_headers(request.getHeader(b"access-control-request-headers")))
        request.setHeader(b"access-control-max-age", str(PREFLIGHT_MAX_AGE).encode())
        return b""


def allow_headers(requested: bytes | None) -> bytes:
    """Our fixed list plus the requested headers that are harmless to accept."""
    names = list(ALWAYS_ALLOWED_HEADERS)
    seen = {n.lower() for n in names}
    for raw in (requested or b"").decode("latin-1").split(","):
        name = raw.strip()
        lower = name.lower()
        if (not _HEADER_NAME.fullmatch(name) or lower in seen
                or lower.startswith(_REFUSED_HEADER_PREFIXES)):
            continue
        seen.add(lower)
        names.append(name)
    return ", ".join(names).encode("latin-1")


def is_preflight(request: Request) -> bool:
    return (request.method == b"OPTIONS" and request.getHeader(b"origin") is not None
            and request.getHeader(b"access-control-request-method") is not None)


def plain(request: Request, status: int, text: str) -> bytes:
    """A short text answer (the reason a request was refused)."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return (text + "\n").encode("utf-8")


def principal_of(request: Any) -> Principal | None:
    """The principal the wrapper stored on ``request`` (None before auth)."""
    principal = getattr(request, "dicomweb_principal", None)
    return principal if isinstance(principal, Principal) else None


class SecureResource(Resource):
    """The site root: CORS + authentication + authorization around ``inner``."""

    # A leaf: the whole path goes to ``inner`` (Klein routes on it itself).
    isLeaf = True

    def __init__(self, inner: IResource, authenticator: Authenticator,
                 cors: CorsPolicy | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.authenticator = authenticator
        self.cors = cors or CorsPolicy()

    def refuses_before_body(self, request: Request) -> bool:
        """Whether this request will be refused whatever its body says.

        Asked by :class:`~dicomweb.web.request.DICOMwebRequest` when the
        headers have arrived (method and path are not known yet): without
        an ``Authorization`` header only preflights and the probes
        (``/health``, ``/ready``) pass, and none reads a body, so the body need not be kept.
        """
        return (not isinstance(self.authenticator, NoAuth)
                and request.getHeader(b"authorization") is None)

    def render(self, request: Request) -> bytes | int:
        self.cors.add_response_headers(request)
        if is_preflight(request):
            return self.cors.answer_preflight(request)
        if request.path in EXEMPT_PATHS:
            return self._render_inner(request)
        d = ensureDeferred(self._authorize(request))
        if d.called and not d.paused:
            # Decided at once (no auth, a cached password or token): render
            # the app now, as for the probes, instead of in a callback.
            outcome: list[Any] = []
            d.addBoth(outcome.append)
            if not isinstance(outcome[0], Failure):
                request.dicomweb_principal = outcome[0]  # type: ignore[attr-defined]  # read by routes and the access log
                return self._render_inner(request)
            self._refused(outcome[0], request)
            return NOT_DONE_YET
        d.addCallbacks(self._granted, self._refused, callbackArgs=(request,),
                       errbackArgs=(request,))
        return NOT_DONE_YET

    def _render_inner(self, request: Request) -> bytes | int:
        body: bytes | int = self.inner.render(request)  # IResource.render: bytes or NOT_DONE_YET
        return body

    async def _authorize(self, request: Request) -> Principal:
        principal = await self.authenticator.authenticate(request.getHeader(b"authorization"))
        if request.method not in READ_METHODS:
            require_write(principal)
        return principal

    def _granted(self, principal: Principal, request: Request) -> None:
        request.dicomweb_principal = principal  # type: ignore[attr-defined]  # read by routes and the access log
        if _gone(request):
            return
        # request.render gives the app the same treatment as a root resource
        # (HEAD bodies dropped, bytes results finished, 405 for bad methods).
        request.render(self.inner)

    def _refused(self, failure: Failure, request: Request) -> None:
        if _gone(request):
            return
        error = failure.value
        if isinstance(error, AuthError):
            body = refusal(request, error)
        else:
            # Report only the type: an exception message might quote the
            # credentials the authenticator was looking at.
            log.error("authentication failed unexpectedly: {kind}", kind=type(error).__name__)
            body = plain(request, 500, "authentication failed unexpectedly")
        request.setHeader(b"content-length", str(len(body)).encode())
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


def refusal(request: Request, error: AuthError) -> bytes:
    """Status, challenge and short reason of an :class:`AuthError`."""
    if error.challenge:
        request.setHeader(b"www-authenticate", error.challenge.encode("utf-8"))
    if error.status == 503:
        request.setHeader(b"retry-after", str(RETRY_AFTER).encode())
    return plain(request, error.status, error.reason)


def _gone(request: Request) -> bool:
    """True once the client has hung up (nothing more may be written)."""
    return bool(getattr(request, "_disconnected", False))


def secure_root(inner: IResource, settings: Settings, reactor: IReactor, pool: ThreadPool) -> SecureResource:
    """The site root for ``settings``: the authenticator is built once, here.

    ``pool`` is the service's thread pool (bcrypt runs there).
    """
    agent = idp_agent(reactor, settings.oidc_ca_file) if settings.auth == "oidc" else None
    authenticator = build_authenticator(settings.auth, settings.auth_settings, reactor, agent,
                                        threadpool=pool)
    return SecureResource(inner, authenticator, CorsPolicy(settings.cors_origins))


def idp_agent(reactor: IReactor, ca_file: str | None) -> IAgent | None:
    """The HTTP agent for the identity provider; None means the default
    (system CAs).  With ``ca_file``, only those CAs are trusted: a private
    IdP's certificate is checked, never skipped."""
    if ca_file is None:
        return None
    from twisted.web.client import Agent

    return Agent(reactor, contextFactory=https_policy(ca_file))


__all__ = ["CorsPolicy", "SecureResource", "allow_headers", "idp_agent", "is_preflight", "principal_of",
           "secure_root"]
