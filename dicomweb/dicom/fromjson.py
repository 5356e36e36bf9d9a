"""Part 10 objects built from STOW-RS metadata and bulk data (PS3.18 10.5.1.2.2).

A client may store DICOM JSON metadata (``application/dicom+json``, an array
of data sets) with each large value in a part of its own, named by the
part's Content-Location and referenced by the metadata's BulkDataURI. This
module joins them into a Part 10 object (File Meta Information, PS3.10 7.1,
included) that then goes through the same analysis and validation as any
received file. What does not fit together (a BulkDataURI no part answers,
a part no instance references, two transfer syntaxes for one instance) is
refused for that instance with a short reason.

Pixel Data in a bulk part is stored as sent: native data (PS3.18 8.7.3:
``application/octet-stream``) in Explicit VR Little Endian; compressed data
(``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/dicom-rle``, or any
type with a ``transfer-syntax`` parameter) encapsulated in its own transfer
syntax, one fragment per frame part.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from ..mediatype import parse_media_type
from .uids import clean_uid, is_valid_uid

EXPLICIT_LE = "1.2.840.10008.1.2.1"
PIXEL_DATA = "7FE00010"
#: Transfer syntax of a bulk part's media type when it names none (PS3.18 Table 8.7.3-2).
MEDIA_SYNTAX = {
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1"
IMPLEMENTATION_VERSION = "DICOMWEB_1"


class Unusable(ValueError):
    """The metadata or its bulk data cannot make a Part 10 object."""

    def __init__(self, reason: str, sop_class_uid: str = "", sop_uid: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_uid = sop_uid


@dataclass
class BulkPart:
    """One received bulk data part."""

    location: str
    content_type: str
    data: bytes
    used: bool = False


def parse_metadata(data: bytes) -> list[dict[str, Any]]:
    """The data sets of one ``application/dicom+json`` part (an array, or one object)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise Unusable("the metadata part is not valid JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise Unusable("the metadata part is not an array of DICOM JSON data sets")
    return value


def _uid_in(meta: dict[str, Any], tag: str) -> str:
    try:
        value = meta[tag]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return ""
    text = clean_uid(str(value))
    return text if is_valid_uid(text) else ""


def _part_syntax(content_type: str) -> str | None:
    """The transfer syntax a bulk part's media type says, or None for native bytes."""
    try:
        media = parse_media_type(content_type or "application/octet-stream")
    except ValueError:
        raise Unusable("a bulk data part has a malformed Content-Type") from None
    syntax = media.param("transfer-syntax")
    if syntax:
        return None if syntax in NATIVE_SYNTAXES else syntax
    if media.type in MEDIA_SYNTAX:
        return MEDIA_SYNTAX[media.type]
    if media.type == "application/octet-stream":
        return None
    raise Unusable(f"a bulk data part has an unsupported media type ({media.type[:40]})")


def build(meta: dict[str, Any], parts: dict[str, BulkPart]) -> bytes:
    """A Part 10 object from one DICOM JSON data set and the bulk parts by
    Content-Location; Unusable when they do not fit together."""
    sop_class, sop_uid = _uid_in(meta, "00080016"), _uid_in(meta, "00080018")
    try:
        return _build(meta, parts)
    except Unusable as exc:
        exc.sop_class_uid, exc.sop_uid = sop_class, sop_uid
        raise
    except Exception as exc:  # pydicom raises many types on bad JSON values
        raise Unusable(f"the metadata cannot be encoded ({type(exc).__name__})", sop_class, sop_uid) from None


def _build(meta: dict[str, Any], parts: dict[str, BulkPart]) -> bytes:
    declared = _uid_in(meta, "00020010")
    body = {tag: elem for tag, elem in meta.items() if not tag.startswith("0002")}
    pixel_syntax: list[str | None] = []

    def bulk(tag: str, _vr: str, uri: str) -> bytes:
        part = parts.get(uri)
        if part is None:
            raise Unusable(f"no part answers the BulkDataURI of ({tag[:4]},{tag[4:]})")
        part.used = True
        if tag.upper() == PIXEL_DATA:
            pixel_syntax.append(_part_syntax(part.content_type))
        elif _part_syntax(part.content_type) is not None:
            raise Unusable(f"the bulk data of ({tag[:4]},{tag[4:]}) is not application/octet-stream")
        return part.data

    if not isinstance(body.get("00080016"), dict) or not isinstance(body.get("00080018"), dict):
        raise Unusable("the metadata has no SOPClassUID or SOPInstanceUID")
    ds = Dataset.from_json(body, bulk_data_uri_handler=bulk)
    syntax = EXPLICIT_LE
    if pixel_syntax and pixel_syntax[0] is not None:
        syntax = pixel_syntax[0]
        data = ds.PixelData
        if data[:4] != b"\xfe\xff\x00\xe0":  # not already an item sequence: one frame
            data = encapsulate([data])
        ds.PixelData = data
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    if declared and declared != syntax and not (declared in NATIVE_SYNTAXES and syntax == EXPLICIT_LE):
        raise Unusable("the metadata's TransferSyntaxUID conflicts with its pixel data part")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


__all__ = ["BulkPart", "Unusable", "build", "parse_metadata"]
