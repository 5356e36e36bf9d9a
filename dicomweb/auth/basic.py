"""``--auth basic``: HTTP basic authentication against a bcrypt users file.

Users file format (one user per line; ``#`` starts a comment line)::

    # name:bcrypt-hash[:roles]
    alice:$2b$12$...............:read,write
    scanner:$2y$05$..............:write
    bob:$2y$05$..............

``roles`` is a comma list of ``read`` and ``write``; it defaults to ``read``
and ``write`` implies ``read``.  The output of Apache's ``htpasswd -B``
(``$2y$`` hashes) works unchanged, so ``htpasswd -B -C 12 users.txt alice``
manages the file; append ``:read,write`` by hand to grant write.  Only bcrypt
hashes are accepted (``$2a$``, ``$2b$``, ``$2y$``); other htpasswd formats
(MD5 ``$apr1$``, ``{SHA}``, crypt) are skipped with a warning naming the line.
As with htpasswd, only the first 72 bytes of a password count.

The file is re-read when its modification time (or size) changes; if the new
file cannot be read, the previous users stay in force and an error is logged.

Checks go through ``twisted.cred`` (a :class:`BcryptChecker` and a realm in a
:class:`~twisted.cred.portal.Portal`).  ``bcrypt.checkpw`` runs in a thread
pool, never on the reactor thread; an unknown user costs the same bcrypt work
as a known one, so response times do not reveal which names exist.  A short
cache of successes is keyed by a keyed hash of name and password together, so
a different password can never reuse an earlier success.  Nothing the client
sends (name, password) is ever logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from ..twistedtypes import IReactor
from ._core import KNOWN_ROLES, ROLE_READ, AuthError, Clock, Principal, quote

#: Twisted's Logger spells it .warn; ruff's G010 assumes stdlib logging.
log = Logger()

#: bcrypt ignores bytes after the 72nd; the library now refuses them instead,
#: so we cut like htpasswd and older bcrypt did.
_BCRYPT_MAX = 72
_CACHE_MAX_ENTRIES = 1024
_DEFAULT_COST = 12
#: Checked at load time so a bad line is a warning, not a 500 at login.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


class IPrincipal(Interface):
    """The avatar interface our realm hands out: a :class:`Principal`."""


@dataclass(frozen=True)
class UserEntry:
    hashed: bytes
    roles: frozenset[str]


def _normalise_hash(hashed: str) -> bytes | None:
    """bcrypt bytes for a users-file hash, or None if it is not bcrypt."""
    if not _BCRYPT_HASH.fullmatch(hashed):
        return None
    # PHP/Apache's $2y$ is the same algorithm as $2b$; the library only
    # knows the latter name.
    return ("$2b$" + hashed[4:] if hashed.startswith("$2y$") else hashed).encode("ascii")


def _parse_roles(text: str, lineno: int) -> frozenset[str]:
    roles = {r.strip() for r in text.split(",") if r.strip()}
    unknown = roles - KNOWN_ROLES
    if unknown:
        log.warn("users file line {lineno}: unknown roles ignored", lineno=lineno)
    # Everyone who may log in may read; write is the extra permission.
    return frozenset((roles & KNOWN_ROLES) | {ROLE_READ})


def parse_users(text: str) -> dict[str, UserEntry]:
    """Parse users-file text; bad lines are skipped with a warning (no content)."""
    users: dict[str, UserEntry] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = _parse_line(line, lineno)
        if entry is not None:
            users[entry[0]] = entry[1]
    return users


def _parse_line(line: str, lineno: int) -> tuple[str, UserEntry] | None:
    parts = line.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        log.warn("users file line {lineno}: expected name:hash[:roles]", lineno=lineno)
        return None
    hashed = _normalise_hash(parts[1].strip())
    if hashed is None:
        log.warn(
            "users file line {lineno}: not a bcrypt hash (use htpasswd -B)", lineno=lineno
        )
        return None
    roles = _parse_roles(parts[2] if len(parts) == 3 else "", lineno)
    return parts[0].strip(), UserEntry(hashed, roles)


def _dummy_hash(users: dict[str, UserEntry]) -> bytes:
    """A valid bcrypt hash matching no password, at the users' usual cost.

    Checking an unknown name against it takes as long as a real check.
    """
    costs = Counter(int(e.hashed[4:6]) for e in users.values())
    cost = costs.most_common(1)[0][0] if costs else _DEFAULT_COST
    # 22 salt + 31 digest characters of bcrypt's base64 alphabet.
    return b"$2b$%02d$" % cost + b"O" * 22 + b"0" * 31


class UsersFile:
    """The users file, re-read when its mtime or size changes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self.users: dict[str, UserEntry] = {}
        self.dummy = _dummy_hash({})
        #: Bumped on every reload, so cached successes die with the old file.
        self.version = 0
        self.refresh(initial=True)

    def refresh(self, initial: bool = False) -> None:
        """Reload if the file changed; a stat per request is cheap."""
        try:
            st = os.stat(self._path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            with open(self._path, encoding="utf-8") as fp:
                text = fp.read()
        except (OSError, UnicodeDecodeError) as e:
            if initial:
                raise
            log.error("users file {path} unreadable, keeping previous users: {err}",
                      path=self._path, err=type(e).__name__)
            return
        self._install(parse_users(text), stamp)

    def _install(self, users: dict[str, UserEntry], stamp: tuple[int, int]) -> None:
        self.users = users
        self.dummy = _dummy_hash(users)
        self._stamp = stamp
        self.version += 1
        log.info("users file {path} loaded: {count} users", path=self._path, count=len(users))


class _SuccessCache:
    """Recent successful checks, keyed by HMAC(name, password) under a random key.

    The key covers the password, so a wrong password is a different key and
    can never hit a cached success (a cache keyed by name alone would let
    any password in after one good login).  HMAC with a per-process
    secret means the cache holds nothing that helps guess passwords.
    """

    def __init__(self, ttl: float, clock: Clock) -> None:
        self._ttl = ttl
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[float, int]] = {}

    def key(self, username: bytes, password: bytes) -> bytes:
        msg = len(username).to_bytes(4, "big") + username + password
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def hit(self, key: bytes, version: int) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        expires, entry_version = entry
        if entry_version != version or expires <= self._clock.seconds():
            del self._entries[key]
            return False
        return True

    def add(self, key: bytes, version: int) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= _CACHE_MAX_ENTRIES:
            self._purge()
        self._entries[key] = (self._clock.seconds() + self._ttl, version)

    def _purge(self) -> None:
        now = self._clock.seconds()
        self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
        if len(self._entries) >= _CACHE_MAX_ENTRIES:
            self._entries.clear()


def _checkpw(password: bytes, hashed: bytes) -> bool:
    # Runs in the thread pool; bcrypt compares in constant time itself.
    return bcrypt.checkpw(password[:_BCRYPT_MAX], hashed)


@implementer(ICredentialsChecker)
class BcryptChecker:
    """twisted.cred checker of username/password against the users file."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: UsersFile, reactor: IReactor, threadpool: ThreadPool,
                 cache_ttl: float) -> None:
        self._users = users
        self._reactor = reactor
        self._threadpool = threadpool
        self._cache = _SuccessCache(cache_ttl, reactor)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        return Deferred.fromCoroutine(self._check(credentials.username, credentials.password))

    async def _check(self, username: bytes, password: bytes) -> bytes | tuple[()]:
        """The avatar id (the account name in UTF-8, as twisted.cred wants bytes)."""
        self._users.refresh()
        version = self._users.version
        name = username.decode("utf-8", "replace")
        key = self._cache.key(username, password)
        if self._cache.hit(key, version):
            return name.encode("utf-8")
        entry = self._users.users.get(name)
        # Unknown users still pay for a bcrypt check: equal timing.
        hashed = entry.hashed if entry is not None else self._users.dummy
        ok = await deferToThreadPool(self._reactor, self._threadpool, _checkpw, password, hashed)
        if not (ok and entry is not None):
            raise UnauthorizedLogin()
        self._cache.add(key, version)
        return name.encode("utf-8")


@implementer(IRealm)
class UsersRealm:
    """twisted.cred realm: an account name becomes a :class:`Principal`."""

    def __init__(self, users: UsersFile) -> None:
        self._users = users

    def requestAvatar(self, avatarId: bytes | tuple[()], mind: object,
                      *interfaces: Any) -> tuple[Any, Principal, Callable[[], None]]:
        if IPrincipal not in interfaces:
            raise NotImplementedError("only IPrincipal avatars")
        if not isinstance(avatarId, bytes):  # the anonymous avatar; never checked in
            raise UnauthorizedLogin()
        name = avatarId.decode("utf-8")
        entry = self._users.users.get(name)
        if entry is None:
            # Removed from the file between check and lookup.
            raise UnauthorizedLogin()
        return IPrincipal, Principal(name, entry.roles), lambda: None


def parse_basic_header(authorization: bytes) -> tuple[bytes, bytes]:
    """(username, password) from ``Basic <base64>``; ValueError if malformed."""
    scheme, _, param = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        raise ValueError("not basic")
    raw = base64.b64decode(param.strip(), validate=True)
    username, sep, password = raw.partition(b":")
    if not sep or not username:
        raise ValueError("no user")
    username.decode("utf-8")  # raises UnicodeDecodeError, a ValueError
    return username, password


class BasicAuthenticator:
    """The :class:`~dicomweb.auth.Authenticator` for ``--auth basic``."""

    def __init__(self, users_file: str, reactor: IReactor, threadpool: ThreadPool | None = None,
                 realm: str = "dicomweb", cache_ttl: float = 60.0) -> None:
        pool = threadpool if threadpool is not None else _reactor_pool(reactor)
        self._users = UsersFile(users_file)
        self.checker = BcryptChecker(self._users, reactor, pool, cache_ttl)
        self._portal = Portal(UsersRealm(self._users), [self.checker])
        self._challenge = f"Basic realm={quote(realm)}"

    def challenge(self) -> str:
        return self._challenge

    async def authenticate(self, authorization: bytes | None) -> Principal:
        if not authorization:
            raise AuthError(401, "authentication required", self._challenge)
        try:
            username, password = parse_basic_header(authorization)
        except ValueError:
            raise AuthError(401, "malformed basic credentials", self._challenge) from None
        try:
            _, avatar, _ = await self._portal.login(
                UsernamePassword(username, password), None, IPrincipal)
        except UnauthorizedLogin:
            log.info("basic authentication failed")
            raise AuthError(401, "invalid user name or password", self._challenge) from None
        assert isinstance(avatar, Principal)
        return avatar


def _reactor_pool(reactor: IReactor) -> ThreadPool:
    if not IReactorThreads.providedBy(reactor):
        raise TypeError("reactor has no thread pool; pass threadpool=")
    pool: ThreadPool = reactor.getThreadPool()
    return pool
