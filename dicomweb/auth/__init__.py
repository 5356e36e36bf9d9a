"""Who may use the server: authentication and read/write authorization.

Public API (everything else in this package is private):

- :class:`Principal` — ``name`` and ``roles``; ``can_write``.
- :class:`AuthError` — ``status`` (401, 403, 503), ``challenge`` (the full
  ``WWW-Authenticate`` value or None), ``reason`` (client-safe text).
- :class:`Authenticator` — ``await authenticate(authorization_header)`` and
  ``challenge()``.
- :class:`NoAuth`, :class:`~dicomweb.auth.basic.BasicAuthenticator`,
  :class:`~dicomweb.auth.oidc.OidcAuthenticator`.
- :class:`AuthSettings` — every option (documented on the class).
- :func:`build_authenticator` — ``--auth none|basic|oidc`` to an authenticator.
- :func:`require_write` — 403 unless the principal may store/delete/reject.

The web layer calls ``authenticate(request.getHeader(b"authorization"))`` on
every route except CORS preflight and the health check, calls
``require_write`` on STOW, delete and reject, and turns an :class:`AuthError`
into ``status`` + ``WWW-Authenticate: challenge`` (if not None) + ``reason``.
"""

from __future__ import annotations

from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IAgent

from ..twistedtypes import IReactor
from ._core import ANONYMOUS, Authenticator, AuthError, NoAuth, Principal, require_write
from ._settings import ASYMMETRIC_ALGORITHMS, AuthSettings
from .basic import BasicAuthenticator
from .oidc import OidcAuthenticator

AUTH_KINDS = ("none", "basic", "oidc")


def build_authenticator(kind: str, settings: AuthSettings, reactor: IReactor,
                        agent: IAgent | None = None, *,
                        threadpool: ThreadPool | None = None) -> Authenticator:
    """The authenticator for ``--auth kind``; ValueError on bad settings.

    ``reactor`` gives time, threads and (for oidc) network; ``agent`` is the
    HTTP agent used to reach the identity provider (default: a new
    :class:`twisted.web.client.Agent`, which verifies TLS certificates);
    ``threadpool`` runs bcrypt (default: the reactor's thread pool).
    """
    if kind == "none":
        return NoAuth()
    if kind == "basic":
        if not settings.users_file:
            raise ValueError("--auth basic needs a users file")
        return BasicAuthenticator(settings.users_file, reactor, threadpool,
                                  realm=settings.realm, cache_ttl=settings.basic_cache_ttl)
    if kind == "oidc":
        return OidcAuthenticator(settings, reactor, agent)
    raise ValueError(f"unknown auth kind {kind!r}; expected one of {AUTH_KINDS}")


__all__ = [
    "ANONYMOUS",
    "ASYMMETRIC_ALGORITHMS",
    "AUTH_KINDS",
    "AuthError",
    "AuthSettings",
    "Authenticator",
    "BasicAuthenticator",
    "NoAuth",
    "OidcAuthenticator",
    "Principal",
    "build_authenticator",
    "require_write",
]
