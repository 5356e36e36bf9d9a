"""Every authentication option in one typed record.

The options of ``dicomweb.options.OPTIONS`` with ``group=AUTH`` fill an
:class:`AuthSettings` (from the command line, environment or config file, see
``dicomweb.config``); the fields no option names keep their defaults here.  The
authenticators read nothing else.  Fields that do not apply to the chosen
``--auth`` kind are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Signature algorithms we accept: asymmetric only.  ``none`` and the HMAC
#: family are absent on purpose: with HS256 an attacker signs with the
#: (public) verification key, so a public-key server must never accept it.
ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


@dataclass(frozen=True)
class AuthSettings:
    """Options of ``--auth basic`` and ``--auth oidc``.

    Shared:

    ``realm``
        The ``realm`` parameter of every challenge (default ``dicomweb``).

    Basic (``--auth basic``):

    ``users_file``
        Path of the users file: ``name:bcrypt-hash[:roles]`` per line, roles a
        comma list of ``read``/``write`` (default ``read``; ``write`` implies
        ``read``).  ``htpasswd -B`` output works as is.  Reloaded when its
        modification time changes.
    ``basic_cache_ttl``
        Seconds a successful check is remembered (keyed by a keyed hash of
        name *and* password, so a wrong password never matches).  0 disables.

    OIDC (``--auth oidc``):

    ``oidc_issuer``
        Issuer URL; ``{issuer}/.well-known/openid-configuration`` gives the
        ``jwks_uri``.  Tokens must carry exactly this ``iss``.
    ``keycloak_realm``, ``keycloak_auth_server_url``
        Keycloak convenience (its adapter's ``realm``/``authServerUrl``):
        both together mean issuer ``{auth_server_url}/realms/{realm}``, and
        the roles claim defaults to ``realm_access.roles``.
    ``oidc_audience``
        Required ``aud`` value.  None skips the audience check (a warning is
        logged at start: any token of the issuer is then accepted).
    ``oidc_jwks_uri``
        Use this key set URL instead of the discovery document's.
    ``oidc_algorithms``
        Accepted ``alg`` values; a subset of :data:`ASYMMETRIC_ALGORITHMS`.
    ``oidc_leeway``
        Seconds of clock skew allowed on ``exp``/``nbf`` (default 30).
    ``oidc_required_scopes``
        Scopes every token must have (``scope`` string or ``scp`` list).
    ``oidc_required_roles``
        Roles every token must have, read from ``oidc_roles_claim``.
    ``oidc_roles_claim``
        Dotted path of the roles claim (``roles``; ``realm_access.roles`` for
        Keycloak; ``resource_access.<client>.roles`` for client roles).
    ``oidc_write_role``
        A role *or* scope name that grants write (default ``write``).
    ``oidc_username_claim``
        Claim used as the principal's name (default ``preferred_username``,
        falling back to ``sub``).
    ``oidc_jwks_min_refresh``
        Minimum seconds between two key set fetches caused by an unknown
        ``kid`` (default 30): a flood of forged tokens cannot flood the IdP.
    ``oidc_jwks_max_age``
        Seconds after which cached keys are refreshed in the background
        (default 3600), so keys the IdP withdrew stop being trusted.  No
        request waits for that refresh.
    ``oidc_retry_interval``
        While the IdP is unreachable and keys are missing, requests answer 503
        and a new fetch is tried at most this often (default 5 s).
    ``oidc_http_timeout``
        Seconds for each call to the IdP (default 10).
    ``oidc_introspection``
        RFC 7662 token introspection: ``off`` (default), ``opaque`` (tokens
        that are not JWTs are introspected, JWTs are checked locally) or
        ``always`` (every token is introspected; catches revocation).
    ``oidc_introspection_endpoint``
        Override the discovery document's ``introspection_endpoint``.
    ``oidc_client_id``, ``oidc_client_secret``
        Credentials sent to the introspection endpoint with HTTP basic.
    ``oidc_introspection_cache_size``, ``oidc_introspection_cache_ttl``
        Active introspection answers are cached until the token's ``exp``, at
        most ``cache_ttl`` seconds (default 300), at most ``cache_size``
        entries (default 10000).
    """

    realm: str = "dicomweb"
    users_file: str | None = None
    basic_cache_ttl: float = 60.0
    oidc_issuer: str | None = None
    keycloak_realm: str | None = None
    keycloak_auth_server_url: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_uri: str | None = None
    oidc_algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    oidc_leeway: float = 30.0
    oidc_required_scopes: tuple[str, ...] = ()
    oidc_required_roles: tuple[str, ...] = ()
    oidc_roles_claim: str | None = None
    oidc_write_role: str = "write"
    oidc_username_claim: str = "preferred_username"
    oidc_jwks_min_refresh: float = 30.0
    oidc_jwks_max_age: float = 3600.0
    oidc_retry_interval: float = 5.0
    oidc_http_timeout: float = 10.0
    oidc_introspection: str = "off"
    oidc_introspection_endpoint: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_introspection_cache_size: int = 10000
    oidc_introspection_cache_ttl: float = 300.0

    def __repr__(self) -> str:
        # The dataclass repr would print the client secret into any log line
        # or traceback that shows the settings.
        secret = "<hidden>" if self.oidc_client_secret else None
        fields = {k: v for k, v in vars(self).items() if k != "oidc_client_secret"}
        inner = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"AuthSettings({inner}, oidc_client_secret={secret!r})"
