"""PS3.19 XML metadata read back into DICOM JSON: what the server writes as
application/dicom+xml, it reads as the same data set."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb.dicom.dicomxml import to_xml
from dicomweb.dicom.fromjson import Unusable
from dicomweb.dicom.fromxml import MAX_DEPTH, parse_metadata

DATASET: dict[str, Any] = {
    "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
    "00080060": {"vr": "CS", "Value": ["CT"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}, {"Alphabetic": "Doe"}]},
    "00100020": {"vr": "LO"},
    "00200013": {"vr": "IS", "Value": ["7"]},
    "00280010": {"vr": "US", "Value": [512]},
    "00280030": {"vr": "DS", "Value": ["0.5", "0.75"]},
    "00181050": {"vr": "DS", "Value": ["1.0", None, "2"]},
    "00209165": {"vr": "AT", "Value": ["00100010"]},
    "00189089": {"vr": "FD", "Value": [0.25, -1.5]},
    "00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["1.2.3"]}}, {}]},
    "00091011": {"vr": "OB", "InlineBinary": "AAECAw=="},
    "7FE00010": {"vr": "OW", "BulkDataURI": "urn:pixels"},
}


def test_the_xml_the_server_writes_reads_back_as_the_same_dicom_json() -> None:
    assert parse_metadata(to_xml(DATASET)) == [DATASET]


def test_values_are_taken_in_their_number_order() -> None:
    xml = (b'<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
           b'<DicomAttribute tag="00080008" vr="CS"><Value number="2">PRIMARY</Value>'
           b'<Value number="1">ORIGINAL</Value></DicomAttribute></NativeDicomModel>')
    assert parse_metadata(xml) == [{"00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}}]


def test_items_nested_beyond_the_limit_are_refused() -> None:
    inner = b""
    for _ in range(MAX_DEPTH + 2):
        inner = b'<DicomAttribute tag="00081115" vr="SQ"><Item number="1">' + inner + b"</Item></DicomAttribute>"
    with pytest.raises(Unusable, match="deeper"):
        parse_metadata(b"<NativeDicomModel>" + inner + b"</NativeDicomModel>")


def test_external_entities_are_never_resolved() -> None:
    xml = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
           b'<NativeDicomModel><DicomAttribute tag="00100010" vr="LO"><Value number="1">&e;</Value>'
           b"</DicomAttribute></NativeDicomModel>")
    with pytest.raises(Unusable, match="entities"):
        parse_metadata(xml)
