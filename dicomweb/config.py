"""Typed settings, from command-line options, a TOML config file or the
environment.

Precedence: command line > environment (``DICOMWEB_<OPTION>``) > config file
(``--config FILE``, TOML with the option names as keys, e.g.
``data-dir = "/srv/dicom"``) > defaults.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .auth import AUTH_KINDS, AuthSettings

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"2G"`` -> 2147483648; plain numbers are bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 500M or 4G)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class Settings:
    port: str = "5985"
    data_dir: str = "dicomweb-data"
    base_url: str | None = None
    max_request_size: int = 4 << 30
    threads: int = 4
    allow_remote: bool = False
    trust_forwarded: bool = False
    log_query_strings: bool = False
    no_sendfile: bool = False
    auth: str = "none"
    auth_settings: AuthSettings = field(default_factory=AuthSettings)
    cors_origins: tuple[str, ...] = ("*",)
    oidc_ca_file: str | None = None
    # The CouchDB store (used when ``couchdb`` is set). Credentials come from the
    # URL, ``couchdb_credentials`` (a file holding ``user:password``) or
    # ``DICOMWEB_COUCHDB_USER``/``DICOMWEB_COUCHDB_PASSWORD``; never logged.
    couchdb: str | None = field(default=None, repr=False)
    couchdb_db: str = "dicomweb"
    couchdb_credentials: str | None = None
    couchdb_ca: str | None = None
    couchdb_user: str | None = None
    couchdb_password: str | None = field(default=None, repr=False)

    def couchdb_login(self) -> tuple[str | None, str | None]:
        """(user, password) from the credentials file or settings, else (None, None)."""
        if self.couchdb_credentials:
            with open(self.couchdb_credentials, encoding="utf-8") as fp:
                line = fp.readline().strip()
            user, sep, password = line.partition(":")
            if not sep or not user:
                raise ValueError("the CouchDB credentials file must hold one line: user:password")
            return user, password
        return self.couchdb_user, self.couchdb_password


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Options given as ``DICOMWEB_DATA_DIR=...`` etc."""
    environ = os.environ if environ is None else environ
    out = {}
    for key, value in environ.items():
        if key.startswith("DICOMWEB_") and key != "DICOMWEB_ARGS":
            out[key[len("DICOMWEB_"):].lower().replace("_", "-")] = value
    return out


def load_config_file(path: str) -> dict[str, Any]:
    with open(path, "rb") as fp:
        data = tomllib.load(fp)
    section = data.get("dicomweb", data)
    return {str(k).replace("_", "-"): v for k, v in section.items()}


# -- authentication and CORS ---------------------------------------------------

#: Option name -> AuthSettings field, for the options that are plain strings.
_AUTH_FIELDS = {
    "users-file": "users_file",
    "realm": "realm",
    "oidc-issuer": "oidc_issuer",
    "oidc-audience": "oidc_audience",
    "oidc-jwks-uri": "oidc_jwks_uri",
    "oidc-write-role": "oidc_write_role",
    "oidc-roles-claim": "oidc_roles_claim",
    "oidc-username-claim": "oidc_username_claim",
    "oidc-introspection": "oidc_introspection",
    "oidc-client-id": "oidc_client_id",
    "oidc-client-secret": "oidc_client_secret",
    "keycloak-realm": "keycloak_realm",
    "keycloak-url": "keycloak_auth_server_url",
}
#: Options that take a list (repeated, comma-separated, or a TOML array).
_AUTH_LISTS = {"oidc-required-scope": "oidc_required_scopes",
               "oidc-required-role": "oidc_required_roles"}
SECURITY_KEYS = frozenset({*_AUTH_FIELDS, *_AUTH_LISTS, "auth", "cors-origin",
                           "oidc-client-secret-file", "oidc-ca-file"})


def words(value: Any) -> tuple[str, ...]:
    """``"a,b"``, ``["a", "b,c"]`` -> ``("a", "b", "c")``."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(w.strip() for item in items for w in str(item).split(",") if w.strip())


def read_secret_file(path: str) -> str:
    """A secret kept in a file (not on the command line, where ``ps`` shows it)."""
    with open(path, encoding="utf-8") as fp:
        secret = fp.read().strip()
    if not secret:
        raise ValueError(f"secret file {path} is empty")
    return secret


def security_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Pop the auth and CORS options from ``values``; ``Settings`` keyword
    arguments for them.  ValueError on a bad value."""
    mine = {k: values.pop(k) for k in list(values) if k in SECURITY_KEYS}
    kind = str(mine.pop("auth", "none")).lower()
    if kind not in AUTH_KINDS:
        raise ValueError(f"--auth must be one of {', '.join(AUTH_KINDS)}, not {kind!r}")
    out: dict[str, Any] = {"auth": kind}
    if "cors-origin" in mine:
        out["cors_origins"] = words(mine.pop("cors-origin")) or ("*",)
    if "oidc-ca-file" in mine:
        out["oidc_ca_file"] = str(mine.pop("oidc-ca-file"))
    secret_file = mine.pop("oidc-client-secret-file", None)
    if secret_file is not None:
        if "oidc-client-secret" in mine:
            raise ValueError("give --oidc-client-secret or --oidc-client-secret-file, not both")
        try:
            mine["oidc-client-secret"] = read_secret_file(str(secret_file))
        except OSError as exc:
            raise ValueError(f"cannot read the client secret file: {exc.strerror}") from None
    fields: dict[str, Any] = {_AUTH_FIELDS[k]: str(v) for k, v in mine.items() if k in _AUTH_FIELDS}
    fields.update({_AUTH_LISTS[k]: words(v) for k, v in mine.items() if k in _AUTH_LISTS})
    out["auth_settings"] = AuthSettings(**fields)
    return out


def validate_security(settings: Settings) -> None:
    """Refuse at start what would fail at the first request.  ValueError."""
    if settings.auth == "basic":
        path = settings.auth_settings.users_file
        if not path:
            raise ValueError("--auth basic needs --users-file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"cannot read the users file {path}")
    elif settings.auth == "oidc":
        from .auth.oidc import resolve_issuer, validate_settings

        validate_settings(settings.auth_settings)
        resolve_issuer(settings.auth_settings)
    if settings.oidc_ca_file and not os.access(settings.oidc_ca_file, os.R_OK):
        raise ValueError(f"cannot read the CA file {settings.oidc_ca_file}")


class SecurityOptions:
    """The auth, TLS-to-IdP and CORS options, mixed into the tap's Options
    (``usage.Options`` gathers ``optParameters`` and ``opt_`` methods from
    every base class)."""

    optParameters = [
        ["auth", None, None, "Authentication: none, basic or oidc [default: none]"],
        ["users-file", None, None, "--auth basic: users file, name:bcrypt-hash[:read,write] (htpasswd -B)"],
        ["realm", None, None, "Realm named in WWW-Authenticate challenges [default: dicomweb]"],
        ["oidc-issuer", None, None, "--auth oidc: issuer URL (discovery document and JWKS come from it)"],
        ["oidc-audience", None, None, "Required 'aud' of bearer tokens (strongly recommended)"],
        ["oidc-jwks-uri", None, None, "Key set URL, instead of the discovery document's"],
        ["oidc-write-role", None, None, "Role or scope that grants write (STOW, delete, reject) [default: write]"],
        ["oidc-roles-claim", None, None, "Dotted path of the roles claim [default: roles; Keycloak: realm_access.roles]"],
        ["oidc-username-claim", None, None, "Claim logged as the user's name [default: preferred_username]"],
        ["oidc-introspection", None, None, "RFC 7662 introspection: off, opaque or always [default: off]"],
        ["oidc-client-id", None, None, "Client id for token introspection"],
        ["oidc-client-secret", None, None, "Client secret for introspection (prefer --oidc-client-secret-file)"],
        ["oidc-client-secret-file", None, None, "File holding the introspection client secret"],
        ["oidc-ca-file", None, None, "PEM CA bundle trusted for TLS to the identity provider [default: system CAs]"],
        ["keycloak-realm", None, None, "Keycloak realm (with --keycloak-url: issuer URL/realms/REALM)"],
        ["keycloak-url", None, None, "Keycloak auth server URL, e.g. https://sso.example/auth"],
    ]

    def _append(self, key: str, value: str) -> None:
        opts: dict[str, Any] = self.opts  # type: ignore[attr-defined]
        opts[key] = [*(opts.get(key) or []), *words(value)]

    def opt_oidc_required_scope(self, value: str) -> None:
        """Scope every token must carry (repeatable or comma list)"""
        self._append("oidc-required-scope", value)

    def opt_oidc_required_role(self, value: str) -> None:
        """Role every token must carry (repeatable or comma list)"""
        self._append("oidc-required-role", value)

    def opt_cors_origin(self, value: str) -> None:
        """Browser origin allowed to call the server (repeatable or comma list) [default: *]"""
        self._append("cors-origin", value)
