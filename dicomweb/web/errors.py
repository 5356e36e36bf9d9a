"""One error type for every route, mapped to an HTTP answer in one place."""

from __future__ import annotations


class HTTPError(Exception):
    """An HTTP answer with a short reason for the client (no patient data)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def bad_request(reason: str) -> HTTPError:
    return HTTPError(400, reason)


def not_found(reason: str = "not found") -> HTTPError:
    return HTTPError(404, reason)


def not_acceptable(reason: str) -> HTTPError:
    return HTTPError(406, reason)


def unsupported_media_type(reason: str) -> HTTPError:
    return HTTPError(415, reason)
