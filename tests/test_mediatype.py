"""Media type and Accept parsing: tolerant of what real clients send."""

from __future__ import annotations

import pytest

from dicomweb.mediatype import parse_accept, parse_media_type


def test_ohif_frame_accept_with_repeated_transfer_syntax() -> None:
    header = ('multipart/related; type="application/octet-stream"; transfer-syntax=*, '
              'multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1;q=0.9')
    ranges = parse_accept(header)
    assert [r.param("transfer-syntax") for r in ranges] == ["*", "1.2.840.10008.1.2.1"]
    assert ranges[0].param("type") == "application/octet-stream"
    assert ranges[1].q == 0.9


def test_quoted_boundaries_with_separators_inside() -> None:
    media = parse_media_type('multipart/related; type="application/dicom"; boundary="a;b,c=d"')
    assert media.param("boundary") == "a;b,c=d"


def test_ranges_are_ordered_by_q_and_q0_means_never() -> None:
    ranges = parse_accept("text/html;q=0, application/dicom+xml;q=0.5, application/dicom+json")
    assert [r.type for r in ranges] == ["application/dicom+json", "application/dicom+xml"]


def test_a_missing_accept_means_anything() -> None:
    assert parse_accept(None)[0].type == "*/*"


@pytest.mark.parametrize("text", ["", "nonsense", "a/b; q", "a/b;q=2"])
def test_malformed_media_types_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_media_type(text)
