"""Bad STOW input gets a clear 4xx or failure item, and nothing half-stored."""

from __future__ import annotations

import io

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import failed, json_of, multipart_body, referenced, stow

ACCEPT_JSON = {"Accept": "application/dicom+json"}


def _post(url: str, body: bytes, content_type: str, path: str = "/studies") -> requests.Response:
    return requests.post(url + path, data=body, headers={"Content-Type": content_type, **ACCEPT_JSON}, timeout=60)


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


def _study_count(url: str, study: str) -> int:
    return len(requests.get(f"{url}/studies", params={"StudyInstanceUID": study}).json())


def test_a_truncated_body_is_a_bad_request_and_stores_nothing(url: str) -> None:
    study = generate_uid()
    body, boundary = multipart_body(list(dicomgen.ct_series(2, study_uid=study)))
    response = _post(url, body[: len(body) // 2], f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert response.status_code == 400
    assert "truncated" in response.text
    assert _study_count(url, study) == 0


@pytest.mark.parametrize("content_type, status", [
    ('multipart/related; type="application/dicom"; boundary=not-the-boundary', 400),
    ('multipart/related; type="application/dicom"', 400),
    ("application/json", 415),
    ("application/dicom", 409),  # one instance as the body: this one is not DICOM
    ('multipart/related; type="application/dicom+json"; boundary=x', 400),
    ('multipart/related; type="application/dicom+xml"; boundary=x', 415),
    ("", 415),
    ("multipart/related; boundary", 400),
])
def test_a_wrong_content_type_or_boundary_is_refused(url: str, content_type: str, status: int) -> None:
    study = generate_uid()
    body, _ = multipart_body([dicomgen.ct_instance(study, generate_uid(), 1)])
    response = _post(url, body, content_type)
    assert response.status_code == status, response.text
    assert response.text.strip()
    assert _study_count(url, study) == 0


def test_an_unquoted_boundary_is_accepted(url: str) -> None:
    body, boundary = multipart_body([dicomgen.ct_instance(generate_uid(), generate_uid(), 1)])
    response = _post(url, body, f"multipart/related; type=application/dicom; boundary={boundary}")
    assert response.status_code == 200


def test_a_part_that_is_not_dicom_gets_a_failure_item(url: str) -> None:
    good = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    response = stow(url, [b"this is not DICOM at all" * 10, good])
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
def test_an_instance_with_missing_or_invalid_uids_is_refused(url: str, changes: dict[str, object]) -> None:
    response = stow(url, [_with(**changes)])
    assert response.status_code == 409
    assert [reason for _, reason in failed(json_of(response))] == [0xC000]


def test_an_oversize_body_is_answered_413_and_the_server_keeps_serving(url: str) -> None:
    big = b"\0" * (65 * 1024 * 1024)
    body, boundary = multipart_body([big])
    response = _post(url, body, f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert response.status_code == 413
    assert requests.get(url + "/health").status_code == 200


def test_bad_uids_in_the_url_are_a_bad_request(url: str) -> None:
    assert requests.get(f"{url}/studies/1.2.abc").status_code == 400
    assert requests.get(f"{url}/studies/1.2.3/series/..").status_code in (400, 404)
    body, boundary = multipart_body([dicomgen.ct_instance(generate_uid(), generate_uid(), 1)])
    assert _post(url, body, f'multipart/related; type="application/dicom"; boundary={boundary}',
                 path="/studies/1.2.x").status_code == 400


def test_unknown_uids_are_not_found(url: str) -> None:
    study = generate_uid()
    for path in (f"studies/{study}", f"studies/{study}/series/1.2.3", f"studies/{study}/series/1.2/instances/1.3",
                 f"studies/{study}/metadata"):
        assert requests.get(f"{url}/{path}").status_code == 404, path


def test_an_unacceptable_accept_header_is_406_and_stores_nothing(url: str) -> None:
    study = generate_uid()
    response = stow(url, [dicomgen.ct_instance(study, generate_uid(), 1)], headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert _study_count(url, study) == 0


def test_an_empty_multipart_body_is_a_bad_request(url: str) -> None:
    response = _post(url, b"--b--\r\n", 'multipart/related; type="application/dicom"; boundary=b')
    assert response.status_code == 400
