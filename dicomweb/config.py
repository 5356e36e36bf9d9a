"""Typed settings, from command-line options, a TOML config file or the
environment.

The options are declared once, in :data:`dicomweb.options.OPTIONS`; this
module reads them from every source into one :class:`Settings`.

Precedence: command line > environment (``DICOMWEB_<OPTION>``) > config file
(``--config FILE`` or ``DICOMWEB_CONFIG``, TOML with the option names as keys,
e.g. ``data-dir = "/srv/dicom"``, at top level or in a ``[dicomweb]`` table)
> defaults.  A key or ``DICOMWEB_`` variable that names no option is refused.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .auth import AuthSettings
from .dimse.peers import Peer
from .options import AUTH, ENV_NOT_OPTIONS, ENV_PREFIX, OPTIONS, Option, by_name, parse_size, words

__all__ = ["Settings", "env_values", "load_config_file", "load_settings", "parse_size", "resolve",
           "validate_security", "words"]

@dataclass(frozen=True)
class Settings:
    """Every setting of the server, typed.  One field per option of
    :data:`~dicomweb.options.OPTIONS` (the auth options are fields of
    ``auth_settings``); the defaults are the table's, and a unit test checks
    that both agree."""

    port: str = "5985"
    data_dir: str = "dicomweb-data"
    base_url: str | None = None
    max_request_size: int = 4 << 30
    threads: int = 4
    workers: int = 1
    allow_remote: bool = False
    trust_forwarded: bool = False
    changefeed_waiters: int = 100
    log_query_strings: bool = False
    no_sendfile: bool = False
    no_compression: bool = False
    metadata_cache_size: int = 64 << 20
    no_http2: bool = False
    derived_cache_mb: int = 1024
    precompute: str = "none"
    auth: str = "none"
    auth_settings: AuthSettings = field(default_factory=AuthSettings)
    cors_origins: tuple[str, ...] = ("*",)
    oidc_ca_file: str | None = None
    # The CouchDB store (used when ``couchdb`` is set). Credentials come from the
    # URL, ``couchdb_credentials`` (a file holding ``user:password``) or
    # ``DICOMWEB_COUCHDB_USER``/``DICOMWEB_COUCHDB_PASSWORD``; never logged.
    couchdb: str | None = None
    couchdb_db: str = "dicomweb"
    couchdb_credentials: str | None = None
    couchdb_ca: str | None = None
    couchdb_wait: float = 60.0
    couchdb_user: str | None = None
    couchdb_password: str | None = None
    # DIMSE (``dicomweb.dimse``): off unless ``dimse_port`` is set.
    dimse_port: str | None = None
    ae_title: str = "DICOMWEB"
    dimse_peers: tuple[Peer, ...] = ()
    dimse_refuse_unknown: bool = False
    dimse_max_associations: int = 10
    dimse_acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    dimse_network_timeout: float = 120.0
    dimse_tls_cert: str | None = None
    dimse_tls_key: str | None = None
    dimse_tls_ca: str | None = None

    def __repr__(self) -> str:
        # The values of secret options (a password, a URL that may hold one)
        # would otherwise reach any log line or traceback showing the settings.
        def shown(name: str) -> str:
            value = getattr(self, name)
            return "<hidden>" if name in _SECRET_FIELDS and value is not None else repr(value)

        return f"Settings({', '.join(f'{f.name}={shown(f.name)}' for f in fields(self))})"

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


_SECRET_FIELDS = frozenset(o.attribute for o in OPTIONS if o.secret and not o.group)


# -- the sources ---------------------------------------------------------------


def env_values(environ: Mapping[str, str] | None = None, table: Sequence[Option] = OPTIONS) -> dict[str, str]:
    """Options given as ``DICOMWEB_DATA_DIR=...``, by option name.  ValueError
    naming the ``DICOMWEB_`` variables that are no option."""
    environ = os.environ if environ is None else environ
    known = by_name(table)
    out: dict[str, str] = {}
    unknown = []
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key not in ENV_NOT_OPTIONS:
            name = key[len(ENV_PREFIX):].lower().replace("_", "-")
            if name in known:
                out[name] = value
            else:
                unknown.append(key)
    if unknown:
        raise ValueError(f"unknown setting(s) in the environment: {', '.join(sorted(unknown))}")
    return out


def load_config_file(path: str) -> dict[str, Any]:
    """The keys of a TOML file, as option names.  OSError when it cannot be
    read; ValueError when it is not TOML."""
    with open(path, "rb") as fp:
        data = tomllib.load(fp)
    section = data.get("dicomweb", data)
    return {str(k).replace("_", "-"): v for k, v in section.items()}


def resolve(command_line: Mapping[str, Any], environ: Mapping[str, str] | None = None,
            table: Sequence[Option] = OPTIONS) -> dict[str, dict[str, Any]]:
    """Every option's typed value, as ``{group: {field: value}}`` (group ""
    is ``Settings`` itself), from the command line (twistd's ``opts``: None or
    a false flag means not given; a repeatable option's values as a list), the
    environment, the config file it names, and the defaults.  ValueError."""
    environ = os.environ if environ is None else environ
    options = by_name(table)
    given = {k: v for k, v in command_line.items()
             if k in options and v is not None and (v or not options[k].flag)}
    env = env_values(environ, table)
    merged: dict[str, Any] = {}
    config_path = given.get("config") or env.get("config")
    if config_path:
        try:
            merged.update(load_config_file(str(config_path)))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read config file: {exc}") from None
        unknown = set(merged) - set(options)
        if unknown:
            raise ValueError(f"unknown setting(s) in {config_path}: {', '.join(sorted(unknown))}")
    merged.update(env)
    merged.update(given)
    _read_value_files(merged, table)
    out: dict[str, dict[str, Any]] = {}
    for opt in table:
        if opt.attribute is None:
            continue
        try:
            value = opt.value(merged.get(opt.name))
        except ValueError as exc:
            raise ValueError(f"{opt.label}: bad value" if opt.secret else f"{opt.label}: {exc}") from None
        out.setdefault(opt.group, {})[opt.attribute] = value
    return out


def _read_value_files(merged: dict[str, Any], table: Sequence[Option]) -> None:
    """Replace each given ``file_of`` option by the value its file holds."""
    options = by_name(table)
    for opt in table:
        if opt.file_of is None or opt.name not in merged:
            continue
        path = str(merged.pop(opt.name))
        target = options[opt.file_of]
        if target.name in merged:
            raise ValueError(f"give {target.label} or {opt.label}, not both")
        try:
            merged[target.name] = read_secret_file(path)
        except OSError as exc:
            raise ValueError(f"cannot read {opt.label} {path}: {exc.strerror}") from None


def read_secret_file(path: str) -> str:
    """A secret kept in a file (not on the command line, where ``ps`` shows it)."""
    with open(path, encoding="utf-8") as fp:
        secret = fp.read().strip()
    if not secret:
        raise ValueError(f"secret file {path} is empty")
    return secret


def load_settings(command_line: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """The validated settings (see :func:`resolve`).  ValueError."""
    values = resolve(command_line, environ)
    auth = AuthSettings(**values.pop(AUTH, {}))
    settings = Settings(**values.pop("", {}), auth_settings=auth)
    validate_security(settings)
    return settings


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
