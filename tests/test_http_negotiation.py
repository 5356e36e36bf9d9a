"""Accept headers as clients send them, on the real routes, in this process
(tests/inprocess.py): how the answer's form is chosen, and the 400/406
answers with the reason, before any store-specific work. What each store
sends back for a chosen form (bytes, transcoding) is tested against the
real server processes (tests/test_wado_*.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import split_multipart, stow
from tests.inprocess import Client, InProcessServer, Response

DICOM = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'
EXPLICIT_LE = "1.2.840.10008.1.2.1"
PLAIN = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Stored:
    study: str
    series: str
    sop: str
    raw: bytes

    @property
    def instance(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@pytest.fixture
def stored(http: Client) -> Stored:
    """One explicit little endian CT instance."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    raw = dicomgen.ct_instance(study, series, 1, sop_uid=sop)
    assert stow(http, [raw]).status_code == 200
    return Stored(study, series, sop, raw)


def _get(http: Client, path: str, accept: str | None) -> Response:
    return http.get(path, headers={"Accept": accept} if accept is not None else {})


@pytest.mark.parametrize(("accept", "form"), [
    (None, "application/dicom+json"),
    ("*/*", "application/dicom+json"),
    ("application/json", "application/dicom+json"),
    ("application/dicom+xml", 'multipart/related; type="application/dicom+xml"'),
    ('multipart/related; type="application/dicom+xml"', 'multipart/related; type="application/dicom+xml"'),
    ("application/dicom+xml;q=0.5, application/dicom+json", "application/dicom+json"),
])
def test_metadata_form_follows_accept(http: Client, stored: Stored, accept: str | None, form: str) -> None:
    response = _get(http, f"/studies/{stored.study}/metadata", accept)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(form)


@pytest.mark.parametrize(("accept", "status", "reason"), [
    ("text/html", 406, "can answer application/dicom+json or application/dicom+xml only"),
    ("application/dicom+json;q=0, */*;q=0", 406, "every media range in Accept has q=0"),
    ("application/dicom+json;;;q=x", 400, "malformed Accept header"),
])
def test_metadata_refusals_say_why(http: Client, stored: Stored, accept: str, status: int, reason: str) -> None:
    response = _get(http, f"/studies/{stored.study}/metadata", accept)
    assert response.status_code == status
    assert response.headers["Content-Type"] == PLAIN
    assert reason in response.text


@pytest.mark.parametrize("accept", [
    f"{DICOM}; transfer-syntax=*",
    "multipart/related; type=application/dicom; transfer-syntax=*",  # unquoted
    f'{DICOM}; transfer-syntax="{EXPLICIT_LE}"',  # quoted syntax
    f"{DICOM}; transfer-syntax={EXPLICIT_LE}, {DICOM}; transfer-syntax={EXPLICIT_LE}",  # twice, as OHIF sends it
    f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.70, {DICOM}; transfer-syntax={EXPLICIT_LE};q=0.5",
])
def test_instance_accept_forms_get_the_stored_bytes(http: Client, stored: Stored, accept: str) -> None:
    response = _get(http, stored.instance, accept)
    assert response.status_code == 200, response.text
    [(headers, body)] = split_multipart(response)
    assert f"transfer-syntax={EXPLICIT_LE}" in headers["content-type"]
    assert body == stored.raw


@pytest.mark.parametrize(("suffix", "accept", "reason"), [
    ("", "image/png", 'can answer multipart/related; type="application/dicom" only'),
    ("/frames/1", "image/png", "cannot produce the requested representation"),
    ("/bulk/7FE00010", "text/plain", 'bulk data is served as multipart/related; type="application/octet-stream"'),
    ("/rendered", "text/html", "rendered images are served as image/jpeg, image/png or image/gif"),
])
def test_retrieve_refusals_are_406_with_the_reason(http: Client, stored: Stored, suffix: str, accept: str,
                                                   reason: str) -> None:
    response = _get(http, stored.instance + suffix, accept)
    assert response.status_code == 406
    assert response.headers["Content-Type"] == PLAIN
    assert reason in response.text


@pytest.mark.parametrize(("suffix", "accept", "form"), [
    ("/frames/1", f"{OCTETS}; transfer-syntax=*", OCTETS),
    ("/rendered", "image/png", "image/png"),
    ("/rendered", None, "image/jpeg"),
])
def test_frames_and_rendered_forms(http: Client, stored: Stored, suffix: str, accept: str | None,
                                   form: str) -> None:
    response = _get(http, stored.instance + suffix, accept)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(form)


def test_a_study_as_zip(http: Client, stored: Stored) -> None:
    response = _get(http, f"/studies/{stored.study}", "application/zip")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert response.content[:2] == b"PK"


def test_a_head_request_answers_headers_only(inproc: InProcessServer, stored: Stored) -> None:
    response = inproc.client.head(f"/studies/{stored.study}/metadata")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom+json"
    assert response.content == b""
