"""Content negotiation for DICOMweb responses (PS3.18 8.7)."""

from __future__ import annotations

from functools import lru_cache

from ..mediatype import MediaRange, parse_accept
from .errors import bad_request, not_acceptable

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART = "multipart/related"


def accept_ranges(header: bytes | None) -> tuple[MediaRange, ...]:
    try:
        ranges = _parsed_accept(header)
    except ValueError as exc:
        raise bad_request(f"malformed Accept header: {exc}") from None
    if not ranges:
        raise not_acceptable("every media range in Accept has q=0")
    return ranges


@lru_cache(maxsize=256)
def _parsed_accept(header: bytes | None) -> tuple[MediaRange, ...]:
    # A client sends the same few Accept values again and again, and a route
    # may ask twice (406 before any work, then to encode): parse each once.
    # Bounded, so odd headers only cost a re-parse.
    return tuple(parse_accept(header.decode("latin-1") if header else None))


def choose_dataset_type(header: bytes | None) -> str:
    """JSON or XML for QIDO, metadata and STOW responses.

    ``application/json`` counts as DICOM JSON; XML is only ever sent as
    ``multipart/related; type="application/dicom+xml"`` or when named.
    """
    for media in accept_ranges(header):
        if media.type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return DICOM_JSON
        if media.type == DICOM_XML:
            return DICOM_XML
        if media.type == MULTIPART and media.param("type") == DICOM_XML:
            return DICOM_XML
    raise not_acceptable(f"can answer {DICOM_JSON} or {DICOM_XML} only")


def choose_instance_syntaxes(header: bytes | None) -> list[str]:
    """Transfer syntaxes acceptable for ``multipart/related; type=application/dicom``.

    Returns the list in preference order; ``"*"`` means as stored. An Accept
    with no transfer-syntax parameter means as stored too (see README).
    """
    syntaxes: list[str] = []
    for media in accept_ranges(header):
        if media.type in ("*/*", "multipart/*") or (
            media.type == MULTIPART and media.param("type") in (None, "application/dicom")
        ):
            found = media.all_params("transfer-syntax")
            syntaxes.extend(found or ["*"])
    if not syntaxes:
        raise not_acceptable('can answer multipart/related; type="application/dicom" only')
    return syntaxes


# -- WADO-RS -----------------------------------------------------------------

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
ZIP = "application/zip"
RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
_WILDCARDS = ("*/*", "multipart/*")


def choose_instance_retrieve(header: bytes | None, allow_zip: bool = False) -> tuple[str, list[str | None]]:
    """(``"multipart"`` or ``"zip"``, acceptable transfer syntaxes) for instance retrieve.

    Transfer syntaxes in preference order: ``"*"`` = as stored, ``None`` =
    ``application/dicom`` named without a transfer-syntax (the PS3.18 default
    applies, see README "Transfer syntaxes"), else a UID. A bare wildcard
    (``*/*``, no Accept) means as stored: the client named no DICOM type.
    """
    syntaxes: list[str | None] = []
    for media in accept_ranges(header):
        inner = media.param("type") if media.type == MULTIPART else media.type
        if media.type == ZIP and allow_zip and not syntaxes:
            return "zip", ["*"]
        if media.type in _WILDCARDS or (media.type == MULTIPART and inner in (None, "*/*")):
            syntaxes.append("*")
        elif inner == DICOM:
            named: list[str | None] = [*media.all_params("transfer-syntax")]
            syntaxes.extend(named or [None])
    if not syntaxes:
        also = " or application/zip" if allow_zip else ""
        raise not_acceptable(f'can answer multipart/related; type="application/dicom"{also} only')
    return "multipart", syntaxes


def frame_ranges(header: bytes | None) -> list[tuple[str, str | None]]:
    """(media type, transfer-syntax or None) pairs acceptable for frames, best first.

    ``multipart/related; type=X`` and a bare ``X`` both mean X (whether the
    answer is multipart is :func:`single_part`'s question); a repeated
    ``transfer-syntax`` (OHIF) gives one pair per value.
    """
    out: list[tuple[str, str | None]] = []
    for media in accept_ranges(header):
        inner = (media.param("type") or "*/*") if media.type == MULTIPART else media.type
        if inner in _WILDCARDS or inner == "application/*":
            inner = "*/*" if inner != "application/*" else OCTET_STREAM
        named: list[str | None] = [*media.all_params("transfer-syntax")]
        out.extend((inner, ts) for ts in (named or [None]))
    return out


def single_part(header: bytes | None) -> bool:
    """Whether a one-frame answer is a single part: when Accept names bare
    media types only (``image/jp2``, ``application/octet-stream``), the
    single part payload of PS3.18 8.7.3; ``multipart/related``, ``multipart/*``,
    ``*/*`` or no Accept keep the multipart form."""
    return all(media.type not in (MULTIPART, *_WILDCARDS) for media in accept_ranges(header))


def choose_bulk_form(header: bytes | None) -> str:
    """``"multipart"`` (the PS3.18 default) or ``"single"`` (plain octet-stream asked) for bulk data."""
    for media in accept_ranges(header):
        if media.type == OCTET_STREAM:
            return "single"
        inner = media.param("type") if media.type == MULTIPART else None
        if media.type in _WILDCARDS or (media.type == MULTIPART and inner in (None, "*/*", OCTET_STREAM)):
            return "multipart"
    raise not_acceptable('bulk data is served as multipart/related; type="application/octet-stream" or application/octet-stream')


def choose_rendered(header: bytes | None, query: str | None = None) -> str:
    """The image type of a rendered/thumbnail answer; JPEG unless PNG or GIF is preferred.

    ``query`` is the ``accept`` query parameter (PS3.18 8.3.3.1), which wins
    over the header.
    """
    text = query.encode("latin-1", "replace") if query else header
    for media in accept_ranges(text):
        if media.type in RENDERED_TYPES:
            return media.type
        if media.type in ("*/*", "image/*"):
            return "image/jpeg"
    raise not_acceptable("rendered images are served as image/jpeg, image/png or image/gif")
