"""Every server option, declared once.

:data:`OPTIONS` is the one table of the server's options.  Everything else is
derived from it:

- twistd's ``Options`` (``dicomweb.tap``): ``optParameters``, ``optFlags`` and
  one ``opt_`` handler per repeatable option, with the short names and help
  given here (``[default: ...]`` is appended from :attr:`Option.default`);
- the config file loader: TOML keys are the option names
  (``data-dir = "/srv/dicom"``; ``_`` is read as ``-``);
- the environment loader: ``DICOMWEB_<NAME>`` with ``-`` written ``_``
  (``DICOMWEB_DATA_DIR``);
- the typed :class:`dicomweb.config.Settings`: every option names the field it
  fills, its parser gives the field's type, its default the field's default
  (``tests/test_options.py`` fails when the dataclass and this table disagree,
  and when README's option tables miss an option or name one that is gone).

Adding an option
----------------

1. One :class:`Option` entry in :data:`OPTIONS`, e.g. for DIMSE::

       Option("dimse-port", "Port of the DIMSE listener (C-ECHO, C-STORE)", parse=at_least(1)),
       Option("ae-title", "Our AE title", default="DICOMWEB", parse=ae_title),
       Option("dimse-peer", "Known peer, AE=host:port", parse=peer, repeatable=True,
              field="dimse_peers"),

   A parser takes the value as given (a string from the command line or the
   environment, or any TOML value) and returns the typed value, or raises
   ValueError with a short reason (the loader prefixes the option's name).
   Use :func:`text` (the default), :func:`size`, :func:`at_least`,
   :func:`choice`, or a small function of your own (``ae_title`` and ``peer``
   above would be new ones).  A repeatable option's parser gets one value at
   a time; its field is a tuple of what the parser returns.
2. The field in :class:`dicomweb.config.Settings`, with the same default
   (``dimse_port: int | None = None``, ``ae_title: str = "DICOMWEB"``,
   ``dimse_peers: tuple[Peer, ...] = ()``).  An option with ``group=AUTH``
   fills a field of :class:`dicomweb.auth.AuthSettings` instead.
3. A row in one of README's ``| option | default | meaning |`` tables.

``tests/test_options.py`` fails, naming what is missing, until 2 and 3 are
done; the command line, ``--help``, the config file and ``DICOMWEB_*`` follow
from 1 alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .auth import AUTH_KINDS
from .dimse.peers import ae_title, listen_address, peer

#: A value as given (str from the command line or environment, any TOML
#: value) -> the typed value; ValueError with a short reason when it is bad.
Parser = Callable[[Any], Any]

#: ``group`` of the options that fill :class:`dicomweb.auth.AuthSettings`
#: (``Settings.auth_settings``) rather than ``Settings`` itself.
AUTH = "auth_settings"

#: Prefix of the environment variables read as options.
ENV_PREFIX = "DICOMWEB_"
#: ``DICOMWEB_*`` variables that are not options: the .tac file's command line.
ENV_NOT_OPTIONS = frozenset({"DICOMWEB_ARGS"})


# -- parsers -------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def text(value: Any) -> str:
    """Any value as text (a TOML ``port = 5985`` is the string ``"5985"``)."""
    return str(value)


def parse_size(value: str | int) -> int:
    """``"2G"`` -> 2147483648; plain numbers are bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 500M or 4G)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def size(value: Any) -> int:
    """A byte count with an optional unit: ``500M``, ``4G``, ``1048576``."""
    return parse_size(value if isinstance(value, int) else str(value))


def at_least(minimum: int) -> Parser:
    """An integer not below ``minimum``."""

    def parse(value: Any) -> int:
        number = int(value)
        if number < minimum:
            raise ValueError(f"must be at least {minimum}")
        return number

    return parse


def choice(*allowed: str) -> Parser:
    """One of ``allowed``, compared in lower case."""

    def parse(value: Any) -> str:
        word = str(value).lower()
        if word not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, not {word!r}")
        return word

    return parse


def seconds(value: Any) -> float:
    """A positive duration in seconds (``30``, ``2.5``)."""
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number of seconds")
    return number


def workers(value: Any) -> int:
    """A number of server processes: a positive integer, or ``auto`` for one
    per CPU this process may run on."""
    if str(value).strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return int(at_least(1)(value))


def boolean(value: Any) -> bool:
    """A TOML boolean, or ``1``/``true``/``yes``/``on`` (any case) for true."""
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


def words(value: Any) -> tuple[str, ...]:
    """``"a,b"``, ``["a", "b,c"]`` -> ``("a", "b", "c")``: the values of a
    repeatable option, however they were given."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(w.strip() for item in items for w in str(item).split(",") if w.strip())


# -- the table -----------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option: ``--name`` on the command line, ``name`` in the config
    file, ``DICOMWEB_NAME`` in the environment, a field of ``Settings``.

    ``default`` is written as it would be given (``"4G"``, ``"*"``) and goes
    through ``parse`` like any given value; None means unset (the field is
    None).  A ``flag`` takes no value on the command line (default off).  A
    ``repeatable`` option may be given several times on the command line, as a
    TOML list, or comma-separated; ``parse`` applies to each value and the
    field holds a tuple (the default when no value is left).  ``secret``
    values never appear in a repr (the tests check it) and are never logged.
    ``command_line=False`` keeps an option off the command line (where ``ps``
    shows it).  ``field`` is the attribute filled ("" = the name with ``_``;
    None = not a setting, read by the loader itself), in ``Settings`` or, with
    ``group=AUTH``, in ``Settings.auth_settings``.  ``file_of`` names the
    option whose value this option's file holds (a secret kept out of ``ps``).
    """

    name: str
    help: str
    parse: Parser = text
    default: Any = None
    short: str | None = None
    flag: bool = False
    repeatable: bool = False
    secret: bool = False
    command_line: bool = True
    field: str | None = ""
    group: str = ""
    file_of: str | None = None

    @property
    def attribute(self) -> str | None:
        """The field this option fills, or None."""
        if self.field is None or self.file_of is not None:
            return None
        return self.field or self.name.replace("-", "_")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def usage_help(self) -> str:
        """The help line twistd shows."""
        out = self.help
        if self.repeatable:
            out += " (repeatable or comma list)"
        if self.default is not None and not self.flag:
            out += f" [default: {self.default}]"
        return out

    def value(self, given: Any) -> Any:
        """The typed value of ``given`` (None: the default).  ValueError."""
        if self.flag:
            return False if given is None else boolean(given)
        if given is None:
            given = self.default
        if given is None:
            return () if self.repeatable else None
        if self.repeatable:
            values = tuple(self.parse(w) for w in words(given))
            if not values and self.default is not None:
                values = tuple(self.parse(w) for w in words(self.default))
            return values
        return self.parse(given)

    @property
    def label(self) -> str:
        """How messages name the option."""
        return f"--{self.name}" if self.command_line else self.name


OPTIONS: tuple[Option, ...] = (
    Option("port", "Port number (binds 127.0.0.1) or a Twisted endpoint string", default="5985", short="p"),
    Option("data-dir", "Embedded store directory", default="dicomweb-data", short="d"),
    Option("base-url", "Public base URL used in RetrieveURL and BulkDataURI (behind a proxy)"),
    Option("max-request-size", "Largest request body accepted, e.g. 500M, 4G", parse=size, default="4G"),
    Option("threads", "Worker threads for DICOM, image and SQLite work", parse=at_least(1), default="4"),
    Option("workers", "Server processes sharing the listening socket(s), or auto (one per CPU); "
           "README \"Workers\"", parse=workers, default="1"),
    Option("config", "TOML config file with the same option names", short="c", field=None),
    Option("allow-remote", "Allow listening on non-loopback addresses without authentication", flag=True),
    Option("changefeed-waiters", "Change-feed long-poll requests waiting at once at most (more: 503)",
           parse=at_least(1), default="100"),
    Option("trust-forwarded", "Build public URLs from X-Forwarded-Proto/Host/Prefix", flag=True),
    Option("log-query-strings", "Put query strings (may hold patient names/IDs) in the access log", flag=True),
    Option("no-sendfile", "Send stored files through user space instead of os.sendfile (e.g. on a "
           "network filesystem that mishandles it)", flag=True),
    Option("no-compression", "Never compress JSON and XML answers (gzip, br), even when the client accepts it",
           flag=True),
    Option("metadata-cache-size", "Memory kept for compressed study and series metadata, e.g. 64M (0: none)",
           parse=size, default="64M"),
    Option("no-http2", "Over TLS, offer HTTP/1.1 only (HTTP/2 is offered by ALPN by default)", flag=True),
    Option("derived-cache-mb", "Disk (MiB) for transcoded frames kept under DATA-DIR/derived, least recently "
           "used first out; 0 = off", parse=at_least(0), default="1024"),
    Option("precompute", "After STOW, encode new frames in the background: none or htj2k",
           parse=choice("none", "htj2k"), default="none"),
    # The CouchDB store (used when couchdb is set).  The URL may hold a password.
    Option("couchdb", "Use the CouchDB store at this URL (http://[user:password@]host:5984)", secret=True),
    Option("couchdb-db", "CouchDB database name", default="dicomweb"),
    Option("couchdb-credentials", "File holding the CouchDB user:password (one line)"),
    Option("couchdb-ca", "PEM CA bundle trusted for an https:// CouchDB URL [default: system CAs]"),
    Option("couchdb-wait", "Seconds to wait at start for CouchDB to answer, then exit with status 1",
           parse=seconds, default="60"),
    Option("couchdb-user", "CouchDB user (config file or environment only)", command_line=False),
    Option("couchdb-password", "CouchDB password (config file or environment only)", command_line=False,
           secret=True),
    # Authentication, TLS to the identity provider, CORS.
    Option("auth", "Authentication: none, basic or oidc", parse=choice(*AUTH_KINDS), default="none"),
    Option("users-file", "--auth basic: users file, name:bcrypt-hash[:read,write] (htpasswd -B)", group=AUTH),
    Option("realm", "Realm named in WWW-Authenticate challenges", default="dicomweb", group=AUTH),
    Option("oidc-issuer", "--auth oidc: issuer URL (discovery document and JWKS come from it)", group=AUTH),
    Option("oidc-audience", "Required 'aud' of bearer tokens (strongly recommended)", group=AUTH),
    Option("oidc-jwks-uri", "Key set URL, instead of the discovery document's", group=AUTH),
    Option("oidc-write-role", "Role or scope that grants write (STOW, delete, reject)", default="write",
           group=AUTH),
    Option("oidc-roles-claim", "Dotted path of the roles claim [default: roles; Keycloak: realm_access.roles]",
           group=AUTH),
    Option("oidc-username-claim", "Claim logged as the user's name", default="preferred_username", group=AUTH),
    Option("oidc-introspection", "RFC 7662 introspection: off, opaque or always", default="off", group=AUTH),
    Option("oidc-client-id", "Client id for token introspection", group=AUTH),
    Option("oidc-client-secret", "Client secret for introspection (prefer --oidc-client-secret-file)",
           secret=True, group=AUTH),
    Option("oidc-client-secret-file", "File holding the introspection client secret",
           file_of="oidc-client-secret"),
    Option("oidc-required-scope", "Scope every token must carry", repeatable=True, group=AUTH,
           field="oidc_required_scopes"),
    Option("oidc-required-role", "Role every token must carry", repeatable=True, group=AUTH,
           field="oidc_required_roles"),
    Option("oidc-ca-file", "PEM CA bundle trusted for TLS to the identity provider [default: system CAs]"),
    Option("keycloak-realm", "Keycloak realm (with --keycloak-url: issuer URL/realms/REALM)", group=AUTH),
    Option("keycloak-url", "Keycloak auth server URL, e.g. https://sso.example/auth", group=AUTH,
           field="keycloak_auth_server_url"),
    Option("cors-origin", "Browser origin allowed to call the server", repeatable=True, default="*",
           field="cors_origins"),
    # DIMSE (README "DIMSE"): off unless dimse-port is given.
    Option("dimse-port", "DIMSE listener: a port number (binds 127.0.0.1) or HOST:PORT [default: off]",
           parse=listen_address),
    Option("ae-title", "Our DIMSE AE title", parse=ae_title, default="DICOMWEB"),
    Option("dimse-peer", "Known DIMSE peer AE=host:port, or AE=tls://host:port over DICOM TLS "
           "(C-MOVE destination; allowlist)", parse=peer, repeatable=True, field="dimse_peers"),
    Option("dimse-refuse-unknown", "Refuse associations unless the calling AE is a --dimse-peer "
           "connecting from that peer's host", flag=True),
    Option("dimse-max-associations", "Concurrent DIMSE associations at most (per worker process)", parse=at_least(1),
           default="10"),
    Option("dimse-acse-timeout", "Seconds to wait for association messages", parse=seconds, default="30"),
    Option("dimse-timeout", "Seconds to wait for a DIMSE message", parse=seconds, default="60"),
    Option("dimse-network-timeout", "Seconds an idle association stays open", parse=seconds, default="120"),
    Option("dimse-tls-cert", "PEM certificate: DIMSE over TLS (PS3.15 B.1)"),
    Option("dimse-tls-key", "PEM private key of --dimse-tls-cert"),
    Option("dimse-tls-ca", "PEM CA bundle: DIMSE peers must present a certificate it signed"),
)


def by_name(table: Iterable[Option] = OPTIONS) -> dict[str, Option]:
    return {opt.name: opt for opt in table}


def usage_parameters(table: Sequence[Option] = OPTIONS) -> list[list[Any]]:
    """twistd ``optParameters``: options that take one value.  Their default
    is None so that a value not given on the command line can come from the
    environment or the config file."""
    return [[o.name, o.short, None, o.usage_help] for o in table
            if o.command_line and not o.flag and not o.repeatable]


def usage_flags(table: Sequence[Option] = OPTIONS) -> list[list[Any]]:
    """twistd ``optFlags``."""
    return [[o.name, o.short, o.usage_help] for o in table if o.command_line and o.flag]


def usage_handlers(table: Sequence[Option] = OPTIONS) -> dict[str, Callable[[Any, str], None]]:
    """``opt_`` methods for the repeatable options (twistd keeps only the last
    value of an ``optParameters`` entry): each appends to a list in ``opts``."""
    out: dict[str, Callable[[Any, str], None]] = {}
    for opt in table:
        if opt.command_line and opt.repeatable:
            handler = _appender(opt.name)
            handler.__doc__ = opt.usage_help
            out["opt_" + opt.name.replace("-", "_")] = handler
            if opt.short:
                out["opt_" + opt.short] = handler
    return out


def _appender(name: str) -> Callable[[Any, str], None]:
    def append(self: Any, value: str) -> None:
        self.opts[name] = [*(self.opts.get(name) or []), value]

    return append
