"""Bad STOW input gets a clear 4xx or failure item, and nothing half-stored.

In this process (tests/inprocess.py), for both ways a body is received: split
into part files as it arrives (the embedded store) and spooled whole (the
CouchDB store), which reach the multipart reader by different paths.
"""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import failed, json_of, multipart_body, referenced, stow
from tests.inprocess import Client, Response

ACCEPT_JSON = {"Accept": "application/dicom+json"}


def _post(http: Client, body: bytes, content_type: str, path: str = "/studies") -> Response:
    return http.post(path, data=body, headers={"Content-Type": content_type, **ACCEPT_JSON}, timeout=60)


def _with(**changes: object) -> bytes:
    """A generated instance with some attributes changed (None deletes)."""
    ds = pydicom.dcmread(io.BytesIO(dicomgen.ct_instance(generate_uid(), generate_uid(), 1)))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _study_count(http: Client, study: str) -> int:
    return len(http.get("/studies", params={"StudyInstanceUID": study}).json())


def test_a_truncated_body_is_a_bad_request_and_stores_nothing(http: Client) -> None:
    study = generate_uid()
    body, boundary = multipart_body(list(dicomgen.ct_series(2, study_uid=study)))
    response = _post(http, body[: len(body) // 2], f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert response.status_code == 400
    assert "truncated" in response.text
    assert _study_count(http, study) == 0


@pytest.mark.parametrize("content_type, status", [
    ('multipart/related; type="application/dicom"; boundary=not-the-boundary', 400),
    ('multipart/related; type="application/dicom"', 400),
    ("application/json", 415),
    ("application/dicom", 409),  # one instance as the body: this one is not DICOM
    ('multipart/related; type="application/dicom+json"; boundary=x', 400),
    ('multipart/related; type="application/dicom+xml"; boundary=x', 400),
    ('multipart/related; type="application/xml"; boundary=x', 415),
    ("", 415),
    ("multipart/related; boundary", 400),
])
def test_a_wrong_content_type_or_boundary_is_refused(http: Client, content_type: str, status: int) -> None:
    study = generate_uid()
    body, _ = multipart_body([dicomgen.ct_instance(study, generate_uid(), 1)])
    response = _post(http, body, content_type)
    assert response.status_code == status, response.text
    assert response.text.strip()
    assert _study_count(http, study) == 0


def test_an_unquoted_boundary_is_accepted(http: Client) -> None:
    body, boundary = multipart_body([dicomgen.ct_instance(generate_uid(), generate_uid(), 1)])
    response = _post(http, body, f"multipart/related; type=application/dicom; boundary={boundary}")
    assert response.status_code == 200


def test_a_part_that_is_not_dicom_gets_a_failure_item(http: Client) -> None:
    good = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    response = stow(http, [b"this is not DICOM at all" * 10, good])
    assert response.status_code == 202
    body = json_of(response)
    assert failed(body) == [(None, 0xC000)]
    assert len(referenced(body)) == 1


@pytest.mark.parametrize("changes", [
    {"SOPInstanceUID": None},
    {"StudyInstanceUID": None},
    {"SeriesInstanceUID": None},
    {"StudyInstanceUID": "1.2.abc"},
    {"StudyInstanceUID": "1.2..3"},
    {"SeriesInstanceUID": "1.2/../3"},
    {"SOPInstanceUID": "1." + "2" * 70},
    {"SOPInstanceUID": "1.2.3."},
], ids=lambda c: ",".join(f"{k}={v!s:.12}" for k, v in c.items()))
def test_an_instance_with_missing_or_invalid_uids_is_refused(http: Client, changes: dict[str, object]) -> None:
    response = stow(http, [_with(**changes)])
    assert response.status_code == 409
    assert [reason for _, reason in failed(json_of(response))] == [0xC000]


def test_an_oversize_body_is_answered_413_and_the_server_keeps_serving(http: Client) -> None:
    big = b"\0" * (65 * 1024 * 1024)
    body, boundary = multipart_body([big])
    response = _post(http, body, f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert response.status_code == 413
    assert response.text == f"request body larger than the {64 * 1024 * 1024} byte limit\n"
    assert http.get("/health").status_code == 200


def test_bad_uids_in_the_url_are_a_bad_request(http: Client) -> None:
    response = http.get("/studies/1.2.abc")
    assert (response.status_code, response.text) == (400, "study is not a valid UID\n")
    assert http.get("/studies/1.2.3/series/..").status_code in (400, 404)
    body, boundary = multipart_body([dicomgen.ct_instance(generate_uid(), generate_uid(), 1)])
    response = _post(http, body, f'multipart/related; type="application/dicom"; boundary={boundary}',
                     path="/studies/1.2.x")
    assert (response.status_code, response.text) == (400, "study is not a valid UID\n")


def test_unknown_uids_are_not_found(http: Client) -> None:
    study = generate_uid()
    for path, level in ((f"studies/{study}", "study"), (f"studies/{study}/series/1.2.3", "series"),
                        (f"studies/{study}/series/1.2/instances/1.3", "instance"),
                        (f"studies/{study}/metadata", "study")):
        response = http.get(f"/{path}")
        assert (response.status_code, response.text) == (404, f"no such {level}\n"), path
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_an_unacceptable_accept_header_is_406_and_stores_nothing(http: Client) -> None:
    study = generate_uid()
    response = stow(http, [dicomgen.ct_instance(study, generate_uid(), 1)], headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert _study_count(http, study) == 0


def test_an_empty_multipart_body_is_a_bad_request(http: Client) -> None:
    response = _post(http, b"--b--\r\n", 'multipart/related; type="application/dicom"; boundary=b')
    assert response.status_code == 400
