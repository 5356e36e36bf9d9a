"""The vocabulary shared by every authenticator: principals, errors, the protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: Every authenticated principal may read; these are the role names we grant.
ROLE_READ = "read"
ROLE_WRITE = "write"
KNOWN_ROLES = frozenset({ROLE_READ, ROLE_WRITE})


@dataclass(frozen=True)
class Principal:
    """Who is asking, and what they may do.

    ``name`` is an account name (users file) or the token's user claim; it is
    not secret but it is the only identity the web layer should log.
    """

    name: str
    roles: frozenset[str]

    @property
    def can_write(self) -> bool:
        """Storing, deleting and rejecting need the ``write`` role."""
        return ROLE_WRITE in self.roles


class AuthError(Exception):
    """A request that must not go on.

    ``status`` is 401 (who are you?), 403 (known, but not allowed) or 503 (the
    identity provider cannot be reached, so we cannot tell; retry later).
    ``challenge`` is the whole ``WWW-Authenticate`` value to send, or None.
    ``reason`` is a short fixed text, safe to show to clients: it never
    contains a password, a token or anything else the client sent.
    """

    def __init__(self, status: int, reason: str, challenge: str | None = None) -> None:
        if status not in (401, 403, 503):
            raise ValueError(f"AuthError status must be 401, 403 or 503, not {status}")
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.challenge = challenge

    def __repr__(self) -> str:
        return f"AuthError({self.status}, {self.reason!r}, challenge={self.challenge!r})"


@runtime_checkable
class Authenticator(Protocol):
    """Turns an ``Authorization`` header value into a :class:`Principal`."""

    async def authenticate(self, authorization: bytes | None) -> Principal:
        """Return the principal, or raise :class:`AuthError` (401 with challenge)."""
        ...

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value for a request without credentials."""
        ...


class Clock(Protocol):
    """What we need of a reactor for timing (``IReactorTime``, or a test Clock)."""

    def seconds(self) -> float: ...


ANONYMOUS = Principal("anonymous", frozenset({ROLE_READ, ROLE_WRITE}))


class NoAuth:
    """``--auth none``: everyone is the anonymous principal, with read and write."""

    async def authenticate(self, authorization: bytes | None) -> Principal:
        return ANONYMOUS

    def challenge(self) -> str:
        # Never sent: NoAuth never refuses; an empty value keeps the type simple.
        return ""


def require_write(principal: Principal) -> None:
    """Raise 403 unless ``principal`` may store, delete or reject."""
    if not principal.can_write:
        raise AuthError(403, "write permission required")


def quote(value: str) -> str:
    """An RFC 9110 quoted-string, for challenge parameters we build ourselves."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
