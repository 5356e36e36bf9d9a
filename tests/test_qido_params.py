"""Decoding of raw QIDO query strings (dicomweb.web.qido), without a server."""

from __future__ import annotations

import pytest

from dicomweb.web.errors import HTTPError
from dicomweb.web.qido import finish, parse, query_pairs, warning_headers


@pytest.mark.parametrize(("uri", "pairs"), [
    (b"/studies", []),
    (b"/studies?", []),
    (b"/studies?a=1&&b=", [("a", "1"), ("b", "")]),
    (b"/studies?includefield=00081030%2C00100030&includefield=all",
     [("includefield", "00081030,00100030"), ("includefield", "all")]),
    (b"/studies?PatientName=M%C3%BCller%2A", [("PatientName", "Müller*")]),
    (b"/studies?PatientName=ann+mey", [("PatientName", "ann mey")]),
    (b"/studies?StudyDescription=a%2Bb", [("StudyDescription", "a+b")]),
    # A hand-typed DT offset: "+" cannot be a space in a date/time value.
    (b"/instances?AcquisitionDateTime=20200101120000+0100", [("AcquisitionDateTime", "20200101120000+0100")]),
    (b"/studies?StudyInstanceUID=1.2%5C1.3&limit=2", [("StudyInstanceUID", "1.2\\1.3"), ("limit", "2")]),
])
def test_query_pairs(uri: bytes, pairs: list[tuple[str, str]]) -> None:
    assert query_pairs(uri) == pairs


@pytest.mark.parametrize("uri", [b"/studies?PatientName=%FF", "/studies?PatientName=M\u00fcller".encode()])
def test_undecodable_query_strings_are_400(uri: bytes) -> None:
    with pytest.raises(HTTPError) as info:
        query_pairs(uri)
    assert info.value.status == 400


def test_parse_scopes_and_reports_query_errors() -> None:
    query = parse(b"/studies/1.2.3/series?Modality=CT", "series", "1.2.3")
    assert query.scope == {"0020000D": "1.2.3"}
    with pytest.raises(HTTPError) as info:
        parse(b"/studies?StudyDate=2020-13-01", "study")
    assert info.value.status == 400 and "StudyDate" in info.value.reason


def test_finish_makes_urls_absolute_and_fills_required_attributes() -> None:
    query = parse(b"/studies/1.2.3/series", "series", "1.2.3")
    [item] = finish([{"0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
                      "00081190": {"vr": "UR", "Value": ["studies/1.2.3/series/1.2.3.4"]}}], query, "https://pacs/dw")
    assert item["00081190"]["Value"] == ["https://pacs/dw/studies/1.2.3/series/1.2.3.4"]
    assert item["00400244"] == {"vr": "DA"} and item["00201209"] == {"vr": "IS"}
    assert "00100010" not in item  # the study is fixed by the path
    assert list(item) == sorted(item)


def test_warning_header_form() -> None:
    query = parse(b"/studies?limit=999999999", "study")
    assert warning_headers(query, "http://pacs.example:8080/dw") == [
        b'299 pacs.example: "limit reduced to the server maximum of 10000"']
