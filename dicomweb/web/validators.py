"""Entity tags, conditional requests and cache headers (RFC 9110 8.8.3, 13.1.2).

An entity tag names one representation of one version of a resource. It is
derived from what the store already keeps, never from the body, so a
``304 Not Modified`` costs no body at all:

- per instance, :func:`instance_token`: the SOP Instance UID, where its
  stored bytes are (a new name for every stored version: a replaced,
  restored or re-stored instance gets a new one), their size and syntax;
- per study or series: the store's ``version`` token, which changes with
  any change of its instances.

Everything else the answer depends on goes in too: the request's
representation (media type, transfer syntax, frame list, rendering
parameters), the public base URL (BulkDataURIs and Content-Locations are
written with it), :data:`FORMAT`, and the content coding, so gzip, brotli and
plain bodies have different tags. Tags are strong: the same inputs give the
same bytes (multipart boundaries are derived from the tag, see
:func:`boundary_of`; gzip has no time stamp), so byte ranges may be combined
across requests. A ZIP (entries dated when they are sent) has a weak tag.

Answers with a tag carry ``Cache-Control: private, no-cache``: medical data
is for this user's cache only (never a shared proxy), and is revalidated on
every use, which the tag makes cheap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from twisted.web.server import Request

from ..store import InstanceRecord

#: Bump when a representation of the same stored data changes (a change of
#: the JSON, XML or multipart writers): clients then drop what they kept.
FORMAT = 1
CACHE_CONTROL = b"private, no-cache"


def entity_tag(*parts: object, weak: bool = False) -> bytes:
    """A quoted entity tag of ``parts`` (their ``repr``), 96 bits of BLAKE2b."""
    digest = hashlib.blake2b(repr((FORMAT, *parts)).encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    return (b'W/"' if weak else b'"') + digest.encode() + b'"'


def coded(tag: bytes, coding: str | None) -> bytes:
    """The tag of the same representation with a content coding applied:
    ``"abc"`` -> ``"abc-gzip"`` (a different body needs a different tag)."""
    if coding is None:
        return tag
    return tag[:-1] + b"-" + coding.encode() + b'"'


def instance_token(record: InstanceRecord) -> tuple[str, str, int, str]:
    """What names one stored version of an instance (see the module docstring)."""
    return (record.sop_uid, record.location, record.size, record.transfer_syntax_uid)


def boundary_of(tag: bytes) -> str:
    """A multipart boundary for the body named by ``tag``: the same body
    bytes on every request, and as unlikely to occur in the parts as a
    random one."""
    return hashlib.blake2b(b"boundary" + tag, digest_size=16).hexdigest()


def _opaque(tag: bytes) -> bytes:
    """The opaque part of an entity tag, for the weak comparison."""
    return tag[2:] if tag.startswith(b"W/") else tag


def parse_tags(header: bytes) -> list[bytes] | None:
    """The entity tags of an ``If-None-Match`` value; None for ``*``."""
    if header.strip() == b"*":
        return None
    tags, rest = [], header.strip()
    while rest:
        rest = rest.lstrip(b", \t")
        weak = rest.startswith(b"W/")
        body = rest[2:] if weak else rest
        if not body.startswith(b'"'):
            break  # malformed: the tags read so far count
        end = body.find(b'"', 1)
        if end < 0:
            break
        tags.append((b"W/" if weak else b"") + body[:end + 1])
        rest = body[end + 1:]
    return tags


def matching(request: Request, candidates: Iterable[bytes]) -> bytes | None:
    """The candidate tag that the request's ``If-None-Match`` names (weak
    comparison, RFC 9110 13.1.2), or None (no header, or no match).
    ``*`` matches the first candidate: the resource exists."""
    header = request.getHeader(b"if-none-match")
    if header is None:
        return None
    candidates = list(candidates)
    tags = parse_tags(header)
    if tags is None:
        return candidates[0] if candidates else None
    wanted = {_opaque(t) for t in tags}
    for tag in candidates:
        if _opaque(tag) in wanted:
            return tag
    return None


def add_vary(request: Request, *names: bytes) -> None:
    """Add ``names`` to the response's ``Vary`` header (kept: what is there)."""
    current = request.responseHeaders.getRawHeaders(b"vary") or []
    have = [v.strip() for value in current for v in value.split(b",") if v.strip()]
    lower = {v.lower() for v in have}
    added = [n for n in names if n.lower() not in lower]
    if added:
        request.setHeader(b"vary", b", ".join(have + added))


def validated(request: Request, tag: bytes) -> None:
    """Headers of an answer named by ``tag``."""
    request.setHeader(b"etag", tag)
    request.setHeader(b"cache-control", CACHE_CONTROL)


def not_modified(request: Request, *candidates: bytes) -> bool:
    """When ``If-None-Match`` names one of ``candidates`` (the first is the
    tag of the representation this request would get; the others are the
    same content in another coding): set 304 with that tag and return True;
    the caller then sends no body. Otherwise set the first tag; False."""
    found = matching(request, candidates)
    validated(request, found or candidates[0])
    if found is None:
        return False
    request.setResponseCode(304)
    for name in (b"content-type", b"content-length", b"content-encoding"):
        request.responseHeaders.removeHeader(name)
    return True


def if_range_allows(request: Request, tag: bytes) -> bool:
    """Whether a ``Range`` may be honoured: no ``If-Range``, or one naming
    ``tag`` by the strong comparison (a date never matches: no answer here
    has a Last-Modified); else the whole representation is sent."""
    header = request.getHeader(b"if-range")
    if header is None:
        return True
    header = header.strip()
    return not header.startswith(b"W/") and not tag.startswith(b"W/") and header == tag


__all__ = ["CACHE_CONTROL", "FORMAT", "add_vary", "boundary_of", "coded", "entity_tag", "if_range_allows",
           "instance_token", "matching", "not_modified", "parse_tags", "validated"]
