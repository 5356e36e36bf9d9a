"""Content negotiation for DICOMweb responses (PS3.18 8.7)."""

from __future__ import annotations

from ..mediatype import MediaRange, parse_accept
from .errors import bad_request, not_acceptable

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART = "multipart/related"


def accept_ranges(header: bytes | None) -> list[MediaRange]:
    try:
        ranges = parse_accept(header.decode("latin-1") if header else None)
    except ValueError as exc:
        raise bad_request(f"malformed Accept header: {exc}") from None
    if not ranges:
        raise not_acceptable("every media range in Accept has q=0")
    return ranges


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
