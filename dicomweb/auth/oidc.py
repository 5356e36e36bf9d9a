"""``--auth oidc``: OAuth 2 bearer tokens from an OpenID Connect provider.

JWT access tokens are validated locally with PyJWT: the issuer's discovery
document (``{issuer}/.well-known/openid-configuration``) names the
``jwks_uri``; its keys are fetched once with treq and cached.  A token whose
``kid`` is unknown triggers one refresh (at most every
``oidc_jwks_min_refresh`` seconds); keys older than ``oidc_jwks_max_age`` are
refreshed in the background.  Once keys are cached no request calls the IdP.

Checks, in order: the ``Authorization: Bearer`` syntax; ``alg`` in the
allow-list (asymmetric only: never ``none``, never HS*) and fitting the key's
type; the signature; ``exp`` and ``nbf`` with ``oidc_leeway`` seconds of
skew; ``iss`` equal to the issuer; ``aud`` containing ``oidc_audience``; then
``oidc_required_scopes`` (``scope`` string or ``scp`` list) and
``oidc_required_roles`` (from ``oidc_roles_claim``, a dotted path such as
Keycloak's ``realm_access.roles``).  ``oidc_write_role`` found among the roles
*or* scopes grants write.

With ``oidc_introspection`` set to ``opaque`` (non-JWT tokens) or ``always``,
tokens are sent to the RFC 7662 introspection endpoint (from discovery or
``oidc_introspection_endpoint``) with ``oidc_client_id``/``oidc_client_secret``
and the answer is cached until the token expires.

Keycloak: ``keycloak_auth_server_url`` + ``keycloak_realm`` (Keycloak's
own ``authServerUrl`` and ``realm`` adapter settings) mean issuer
``{auth_server_url}/realms/{realm}``; ``clientId``/``clientSecret`` map onto
``oidc_client_id``/``oidc_client_secret``.

Answers: no bearer token, 401 ``Bearer realm="dicomweb"``; a bad token, 401
``Bearer realm="dicomweb", error="invalid_token", error_description="..."``
(a fixed text, never token contents); missing scope or role, 403
``error="insufficient_scope"``; IdP unreachable while keys or an
introspection answer are needed, 503 (no challenge), retried every
``oidc_retry_interval`` seconds until it recovers.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
from treq.client import HTTPClient
from twisted.logger import Logger
from twisted.web.client import Agent
from twisted.web.iweb import IAgent

from ..twistedtypes import IReactor
from ._core import ROLE_READ, ROLE_WRITE, AuthError, Clock, Principal, quote
from ._http import IdpClient, IdpUnavailable
from ._introspect import InactiveToken, Introspector
from ._jwks import KeyCache
from ._settings import ASYMMETRIC_ALGORITHMS, AuthSettings

#: Twisted's Logger spells it .warn; ruff's G010 assumes stdlib logging.
log = Logger()

#: RFC 6750 b64token, with a generous length cap.
_TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]{1,16384}=*")
_INTROSPECTION_MODES = ("off", "opaque", "always")

#: PyJWT exceptions to fixed client-safe descriptions (most specific first).
_JWT_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.MissingRequiredClaimError, "required claim missing"),
    (jwt.InvalidTokenError, "invalid token"),
)


def resolve_issuer(settings: AuthSettings) -> str:
    """The issuer URL, from ``oidc_issuer`` or the Keycloak settings."""
    keycloak = None
    if settings.keycloak_realm or settings.keycloak_auth_server_url:
        if not (settings.keycloak_realm and settings.keycloak_auth_server_url):
            raise ValueError("Keycloak needs both realm and auth server URL")
        base = settings.keycloak_auth_server_url.rstrip("/")
        keycloak = f"{base}/realms/{settings.keycloak_realm}"
    issuer = settings.oidc_issuer or keycloak
    if issuer is None:
        raise ValueError("--auth oidc needs an issuer URL (or Keycloak realm and URL)")
    if keycloak and issuer.rstrip("/") != keycloak:
        raise ValueError("the OIDC issuer and the Keycloak settings disagree")
    return issuer


def validate_settings(settings: AuthSettings) -> None:
    """Refuse, at start, settings that would weaken or break validation."""
    bad = set(settings.oidc_algorithms) - set(ASYMMETRIC_ALGORITHMS)
    if bad or not settings.oidc_algorithms:
        raise ValueError(f"only asymmetric JWT algorithms are allowed, not {sorted(bad)}")
    if settings.oidc_introspection not in _INTROSPECTION_MODES:
        raise ValueError(f"oidc_introspection must be one of {_INTROSPECTION_MODES}")
    if settings.oidc_introspection != "off" and not (
            settings.oidc_client_id and settings.oidc_client_secret):
        raise ValueError("token introspection needs a client id and secret")


def claim_words(value: Any) -> set[str]:
    """A claim holding names: space-separated string or list of strings."""
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str)}
    return set()


def dig(claims: dict[str, Any], path: str) -> Any:
    """Follow a dotted claim path such as ``realm_access.roles``."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class OidcAuthenticator:
    """The :class:`~dicomweb.auth.Authenticator` for ``--auth oidc``."""

    def __init__(self, settings: AuthSettings, reactor: IReactor, agent: IAgent | None = None,
                 clock: Clock | None = None) -> None:
        validate_settings(settings)
        self._settings = settings
        self._issuer = resolve_issuer(settings)
        self._issuers = frozenset({self._issuer, self._issuer.rstrip("/")})
        self._roles_claim = settings.oidc_roles_claim or (
            "realm_access.roles" if settings.keycloak_realm else "roles")
        if agent is None:
            agent = Agent(reactor)
        self._http = IdpClient(HTTPClient(agent), reactor, settings.oidc_http_timeout)
        self._discovery: dict[str, Any] | None = None
        self.keys = KeyCache(self._fetch_jwks, settings.oidc_algorithms, clock or reactor,
                             settings.oidc_jwks_min_refresh, settings.oidc_jwks_max_age,
                             settings.oidc_retry_interval)
        self._introspector = self._make_introspector(settings)
        self._challenge = f"Bearer realm={quote(settings.realm)}"
        if settings.oidc_audience is None:
            log.warn("no OIDC audience configured: tokens for any audience of {issuer} "
                     "are accepted", issuer=self._issuer)

    def _make_introspector(self, settings: AuthSettings) -> Introspector | None:
        if settings.oidc_introspection == "off":
            return None
        assert settings.oidc_client_id and settings.oidc_client_secret
        return Introspector(self._http, self._introspection_endpoint,
                            settings.oidc_client_id, settings.oidc_client_secret,
                            settings.oidc_introspection_cache_size,
                            settings.oidc_introspection_cache_ttl)

    def challenge(self) -> str:
        return self._challenge

    async def authenticate(self, authorization: bytes | None) -> Principal:
        token = self._bearer_token(authorization)
        try:
            claims = await self._claims(token)
        except IdpUnavailable:
            raise AuthError(503, "identity provider unavailable") from None
        return self._principal(claims)

    # -- the token ----------------------------------------------------------

    def _bearer_token(self, authorization: bytes | None) -> str:
        if not authorization:
            raise AuthError(401, "bearer token required", self._challenge)
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            # Another scheme is "no bearer credentials": RFC 6750 3.1 sends
            # the bare challenge, without an error code.
            raise AuthError(401, "bearer token required", self._challenge)
        token = token.strip()
        if not _TOKEN.fullmatch(token):
            raise self._invalid("malformed bearer token")
        return token.decode("ascii")

    def _invalid(self, description: str) -> AuthError:
        challenge = (f"{self._challenge}, error=\"invalid_token\", "
                     f"error_description={quote(description)}")
        return AuthError(401, description, challenge)

    def _insufficient(self, description: str, scopes: tuple[str, ...]) -> AuthError:
        challenge = (f"{self._challenge}, error=\"insufficient_scope\", "
                     f"error_description={quote(description)}")
        if scopes:
            challenge += f", scope={quote(' '.join(scopes))}"
        return AuthError(403, description, challenge)

    async def _claims(self, token: str) -> dict[str, Any]:
        mode = self._settings.oidc_introspection
        if mode == "always" or (mode == "opaque" and not _looks_like_jwt(token)):
            return await self._introspected(token)
        return await self._verified(token)

    async def _verified(self, token: str) -> dict[str, Any]:
        header = _header(token)
        if header is None:
            raise self._invalid("malformed token")
        alg, kid = header.get("alg"), header.get("kid", "")
        if not isinstance(kid, str):
            raise self._invalid("malformed token")
        if alg not in self._settings.oidc_algorithms:
            # Covers "none" and HS*: they never reach a key.
            raise self._invalid("unsupported algorithm")
        key = await self.keys.get(kid)
        if key is None:
            raise self._invalid("unknown signing key")
        if not key.fits(alg):
            raise self._invalid("algorithm does not fit the key")
        return self._decode(token, key.key, alg)

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        audience = self._settings.oidc_audience
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], audience=audience, issuer=self._issuers,
                leeway=self._settings.oidc_leeway,
                options={"require": ["exp", "iss"], "verify_aud": audience is not None})
        except jwt.InvalidTokenError as e:
            raise self._invalid(_describe(e)) from None
        return claims

    async def _introspected(self, token: str) -> dict[str, Any]:
        assert self._introspector is not None
        try:
            claims = await self._introspector.claims(token)
        except InactiveToken:
            raise self._invalid("token is not active") from None
        self._check_introspected(claims)
        return claims

    def _check_introspected(self, claims: dict[str, Any]) -> None:
        """RFC 7662 answers are trusted, but must still be for us and current."""
        now, leeway = time.time(), self._settings.oidc_leeway
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if isinstance(exp, (int, float)) and exp < now - leeway:
            raise self._invalid("token expired")
        if isinstance(nbf, (int, float)) and nbf > now + leeway:
            raise self._invalid("token not yet valid")
        if "iss" in claims and claims["iss"] not in self._issuers:
            raise self._invalid("wrong issuer")
        audience = self._settings.oidc_audience
        if audience is not None and audience not in claim_words(_as_list(claims.get("aud"))):
            raise self._invalid("wrong audience")

    # -- who it is ----------------------------------------------------------

    def _principal(self, claims: dict[str, Any]) -> Principal:
        scopes = claim_words(claims.get("scope")) | claim_words(claims.get("scp"))
        roles = claim_words(dig(claims, self._roles_claim))
        required_scopes = self._settings.oidc_required_scopes
        if not set(required_scopes) <= scopes:
            raise self._insufficient("missing required scope", required_scopes)
        if not set(self._settings.oidc_required_roles) <= roles:
            raise self._insufficient("missing required role", ())
        granted = {ROLE_READ}
        if self._settings.oidc_write_role in roles | scopes:
            granted.add(ROLE_WRITE)
        return Principal(self._name(claims), frozenset(granted))

    def _name(self, claims: dict[str, Any]) -> str:
        for claim in (self._settings.oidc_username_claim, "sub"):
            value = claims.get(claim)
            if isinstance(value, str) and value:
                return value
        return "unknown"

    # -- the identity provider ---------------------------------------------

    async def _metadata(self) -> dict[str, Any]:
        if self._discovery is None:
            url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await self._http.get_json(url)
            if doc.get("issuer") not in self._issuers:
                log.error("discovery document of {issuer} names another issuer",
                          issuer=self._issuer)
                raise IdpUnavailable("issuer mismatch in discovery document")
            self._discovery = doc
        return self._discovery

    async def _endpoint(self, configured: str | None, name: str) -> str:
        if configured:
            return configured
        value = (await self._metadata()).get(name)
        if not isinstance(value, str):
            log.error("discovery document of {issuer} has no {name}",
                      issuer=self._issuer, name=name)
            raise IdpUnavailable(f"no {name}")
        return value

    async def _fetch_jwks(self) -> dict[str, Any]:
        uri = await self._endpoint(self._settings.oidc_jwks_uri, "jwks_uri")
        try:
            return await self._http.get_json(uri)
        except IdpUnavailable:
            # The IdP may have moved its keys: discover again next time.
            self._discovery = None
            raise

    async def _introspection_endpoint(self) -> str:
        return await self._endpoint(self._settings.oidc_introspection_endpoint,
                                    "introspection_endpoint")


def _header(token: str) -> dict[str, Any] | None:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        return None
    return header if isinstance(header, dict) else None


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and _header(token) is not None


def _describe(error: Exception) -> str:
    return next(text for kind, text in _JWT_ERRORS if isinstance(error, kind))


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value
