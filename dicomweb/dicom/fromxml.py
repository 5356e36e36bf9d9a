"""PS3.19 Native DICOM Model XML -> DICOM JSON (for STOW-RS of
``application/dicom+xml`` metadata, PS3.18 10.5.1.2.2).

The XML metadata of one instance becomes the same DICOM JSON data set a
``application/dicom+json`` part gives, so :mod:`.fromjson` builds the Part 10
object from either. The parser refuses entity declarations and external
references (defusedxml): metadata is untrusted input.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from .fromjson import Unusable

_NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
_INT_VRS = frozenset({"SL", "SS", "UL", "US", "SV", "UV"})
_FLOAT_VRS = frozenset({"FL", "FD"})
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
#: Nesting of Items the converter follows (deep enough for real objects; the
#: built object is checked again against the stored-object limit).
MAX_DEPTH = 64


def parse_metadata(data: bytes) -> list[dict[str, Any]]:
    """The data set of one ``application/dicom+xml`` part, as DICOM JSON."""
    try:
        root = fromstring(data)
    except (ParseError, DefusedXmlException, ValueError):
        raise Unusable("the metadata part is not well-formed XML (or declares entities)") from None
    if _local(root.tag) != "NativeDicomModel":
        raise Unusable("the metadata part is not a NativeDicomModel document")
    return [_dataset(root, 0)]


def _local(tag: str) -> str:
    return tag[len(_NS):] if tag.startswith(_NS) else tag


def _children(node: Element, name: str) -> list[Element]:
    return [child for child in node if _local(child.tag) == name]


def _dataset(node: Element, depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise Unusable(f"the metadata nests Items deeper than {MAX_DEPTH}")
    out: dict[str, Any] = {}
    for attribute in _children(node, "DicomAttribute"):
        tag = attribute.get("tag", "")
        if not _TAG.fullmatch(tag):
            raise Unusable("a DicomAttribute has no valid tag (eight hexadecimal digits)")
        vr = attribute.get("vr") or ""
        if not re.fullmatch(r"[A-Z]{2}", vr):
            raise Unusable(f"the DicomAttribute {tag} has no valid vr")
        out[tag.upper()] = _element(attribute, vr, depth)
    return out


def _element(attribute: Element, vr: str, depth: int) -> dict[str, Any]:
    element: dict[str, Any] = {"vr": vr}
    bulk = _children(attribute, "BulkData")
    if bulk:
        uri = bulk[0].get("uri")
        if not uri:
            raise Unusable("a BulkData element has no uri")
        element["BulkDataURI"] = uri
        return element
    inline = _children(attribute, "InlineBinary")
    if inline:
        element["InlineBinary"] = "".join((inline[0].text or "").split())
        return element
    if vr == "SQ":
        items = _numbered(attribute, "Item")
        if items:
            element["Value"] = [_dataset(item, depth + 1) for item in items]
        return element
    if vr == "PN":
        names = _numbered(attribute, "PersonName")
        if names:
            element["Value"] = [_person_name(name) for name in names]
        return element
    values = _numbered(attribute, "Value")
    if values:
        element["Value"] = [_value(vr, value.text) for value in values]
    return element


def _numbered(attribute: Element, name: str) -> list[Element]:
    """The ``name`` children in their ``number`` order (PS3.19 A.1.1: numbered from 1)."""
    children = _children(attribute, name)
    try:
        return sorted(children, key=lambda child: int(child.get("number") or 0))
    except ValueError:
        raise Unusable(f"a {name} element has a number that is not an integer") from None


def _value(vr: str, text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        if vr in _INT_VRS:
            return int(text.strip())
        if vr in _FLOAT_VRS:
            return float(text.strip())
    except ValueError:
        raise Unusable(f"a {vr} value is not a number") from None
    return text


def _person_name(node: Element) -> dict[str, str]:
    out: dict[str, str] = {}
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        found = _children(node, group)
        if not found:
            continue
        parts = {_local(child.tag): child.text or "" for child in found[0]}
        components = [parts.get(name, "") for name in _PN_PARTS]
        while components and not components[-1]:
            components.pop()
        out[group] = "^".join(components)
    return out


__all__ = ["MAX_DEPTH", "parse_metadata"]
