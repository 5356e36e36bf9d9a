"""DICOM JSON -> PS3.19 Native DICOM Model XML (for application/dicom+xml)."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag

_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def to_xml(dataset: dict[str, Any]) -> bytes:
    """One dataset as a complete XML document."""
    body = "".join(_attributes(dataset))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
        f"{body}</NativeDicomModel>"
    ).encode()


def _attributes(dataset: dict[str, Any]) -> list[str]:
    out = []
    for tag, element in dataset.items():
        vr = element.get("vr", "UN")
        try:
            keyword = keyword_for_tag(int(tag, 16))
        except ValueError:
            keyword = ""
        attrs = f"tag={quoteattr(tag)} vr={quoteattr(vr)}"
        if keyword:
            attrs += f" keyword={quoteattr(keyword)}"
        out.append(f"<DicomAttribute {attrs}>{_value(vr, element)}</DicomAttribute>")
    return out


def _value(vr: str, element: dict[str, Any]) -> str:
    if "BulkDataURI" in element:
        return f"<BulkData uri={quoteattr(element['BulkDataURI'])}/>"
    if "InlineBinary" in element:
        return f"<InlineBinary>{escape(element['InlineBinary'])}</InlineBinary>"
    parts = []
    for number, value in enumerate(element.get("Value", []), start=1):
        if vr == "SQ":
            parts.append(f'<Item number="{number}">{"".join(_attributes(value))}</Item>')
        elif vr == "PN":
            parts.append(f'<PersonName number="{number}">{_person_name(value)}</PersonName>')
        else:
            text = "" if value is None else escape(str(value))
            parts.append(f'<Value number="{number}">{text}</Value>')
    return "".join(parts)


def _person_name(value: dict[str, str]) -> str:
    groups = []
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        text = value.get(group)
        if not text:
            continue
        comps = text.split("^")
        inner = "".join(f"<{name}>{escape(comp)}</{name}>" for name, comp in zip(_PN_PARTS, comps, strict=False) if comp)
        groups.append(f"<{group}>{inner}</{group}>")
    return "".join(groups)
