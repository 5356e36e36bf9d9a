"""Small helpers to talk to the server over real HTTP (requests)."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import requests

from dicomweb.io.multipart import iter_parts
from dicomweb.mediatype import parse_media_type


def multipart_body(parts: list[bytes], boundary: str | None = None,
                   content_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = boundary or uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
    pieces: list[bytes] = []
    for part in parts:
        pieces += (head, part, b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces), boundary  # one copy of each part


def session(target: Any) -> tuple[Any, str]:
    """``requests`` and the base URL for a URL; the client and its URL for an
    in-process client (:class:`tests.inprocess.Client`), which answers alike."""
    if isinstance(target, str):
        return requests, target
    return target, target.server.url


def stow(url: Any, parts: list[bytes], study: str | None = None, **kwargs: Any) -> requests.Response:
    """STOW ``parts``; ``url`` is a server URL or an in-process client."""
    http, url = session(url)
    body, boundary = multipart_body(parts)
    target = f"{url}/studies" + (f"/{study}" if study else "")
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    headers.update(kwargs.pop("headers", {}))
    response: requests.Response = http.post(target, data=body, headers=headers, timeout=120, **kwargs)
    return response


class HTTPResponse(Protocol):
    """What the helpers read of an answer (``requests`` or the in-process client's)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...


def split_multipart(response: HTTPResponse) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart response: (headers, body)."""
    media = parse_media_type(response.headers["Content-Type"])
    boundary = media.param("boundary")
    assert boundary, response.headers["Content-Type"]
    fp = io.BytesIO(response.content)
    return [(p.headers, response.content[p.offset:p.offset + p.length]) for p in iter_parts(fp, boundary)]


def json_of(response: HTTPResponse) -> Any:
    return json.loads(response.content)


def referenced(body: dict[str, Any]) -> list[str]:
    return [item["00081155"]["Value"][0] for item in body.get("00081199", {}).get("Value", [])]


def failed(body: dict[str, Any]) -> list[tuple[str | None, int]]:
    out = []
    for item in body.get("00081198", {}).get("Value", []):
        uid = item.get("00081155", {}).get("Value", [None])[0]
        out.append((uid, item["00081197"]["Value"][0]))
    return out
