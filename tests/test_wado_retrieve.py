"""WADO-RS instance retrieve, transfer syntax negotiation, zip and metadata."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import split_multipart, stow
from tests.wado_samples import SAMPLES, Sample, content_syntax, pixel_frames, stored_fixture  # noqa: F401 (a fixture)

ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM = 'multipart/related; type="application/dicom"'
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _get(url: str, accept: str | None) -> requests.Response:
    return requests.get(url, headers={"Accept": accept} if accept is not None else {}, timeout=60)


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_comes_back_byte_identical(url: str, stored: dict[str, Sample], name: str) -> None:
    sample = stored[name]
    (headers, body), = split_multipart(_get(sample.url(url), ANY))
    assert body == sample.raw
    assert headers["content-type"] == f"application/dicom; transfer-syntax={sample.tsuid}"
    assert headers["content-location"] == sample.url(url)


@pytest.mark.parametrize(("name", "expected"), [
    ("MR_small_RLE.dcm", EXPLICIT_LE),  # lossless compressed: decoded (PS3.18 8.7.3.4 default)
    ("MR_small_implicit.dcm", EXPLICIT_LE),  # implicit VR never goes on the web
    ("MR_small_bigendian.dcm", EXPLICIT_LE),
    ("examples_ybr_color.dcm", "1.2.840.10008.1.2.4.50"),  # lossy: kept as received
    ("CT_small.dcm", EXPLICIT_LE),
])
def test_application_dicom_without_a_syntax_gets_the_standard_default(url: str, stored: dict[str, Sample],
                                                                       name: str, expected: str) -> None:
    sample = stored[name]
    (headers, body), = split_multipart(_get(sample.url(url), DICOM))
    assert content_syntax(headers["content-type"]) == expected
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == expected
    assert ds.SOPInstanceUID == sample.sop
    original = sample.dataset()
    for got, want in zip(pixel_frames(ds), pixel_frames(original), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("accept", [None, "*/*", "multipart/related"])
def test_a_wildcard_accept_gets_the_bytes_as_stored(url: str, stored: dict[str, Sample], accept: str | None) -> None:
    sample = stored["MR_small_RLE.dcm"]
    (_, body), = split_multipart(_get(sample.url(url), accept))
    assert body == sample.raw


@pytest.mark.parametrize(("name", "target"), [
    ("CT_small.dcm", "1.2.840.10008.1.2.5"),
    ("CT_small.dcm", "1.2.840.10008.1.2.4.90"),
    ("SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.4.90"),
    ("emri_small_jpeg_2k_lossless.dcm", "1.2.840.10008.1.2.5"),
])
def test_named_lossless_syntaxes_are_transcoded_to_the_same_pixels(url: str, stored: dict[str, Sample], name: str,
                                                                    target: str) -> None:
    sample = stored[name]
    response = _get(sample.url(url), f"{DICOM}; transfer-syntax={target}")
    assert response.status_code == 200, response.text
    (headers, body), = split_multipart(response)
    assert content_syntax(headers["content-type"]) == target
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == target
    for got, want in zip(pixel_frames(ds), pixel_frames(sample.dataset()), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_syntax_that_cannot_be_produced_is_406(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["CT_small.dcm"]
    assert _get(sample.url(url), f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.70").status_code == 406
    # CT is 16-bit: JPEG baseline cannot hold it
    assert _get(sample.url(url), f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50").status_code == 406
    assert _get(sample.url(url), "image/png").status_code == 406


def test_the_first_acceptable_syntax_in_the_list_wins(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["CT_small.dcm"]
    accept = f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.70, {DICOM}; transfer-syntax=1.2.840.10008.1.2.5;q=0.5"
    (headers, _), = split_multipart(_get(sample.url(url), accept))
    assert content_syntax(headers["content-type"]) == "1.2.840.10008.1.2.5"


def test_study_and_series_retrieve_and_zip(url: str, dicomweb) -> None:
    study = generate_uid()
    first = list(dicomgen.ct_series(3, study_uid=study))
    second = list(dicomgen.ct_series(2, study_uid=study))
    assert stow(url, first + second).status_code == 200
    parts = split_multipart(_get(f"{url}/studies/{study}", ANY))
    assert sorted(body for _, body in parts) == sorted(first + second)
    datasets = dicomweb.retrieve_study(study)
    assert len(datasets) == 5
    response = _get(f"{url}/studies/{study}", "application/zip")
    assert response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    assert sorted(archive.read(n) for n in archive.namelist()) == sorted(first + second)
    series = pydicom.dcmread(io.BytesIO(second[0])).SeriesInstanceUID
    archive = zipfile.ZipFile(io.BytesIO(_get(f"{url}/studies/{study}/series/{series}", "application/zip").content))
    assert sorted(archive.read(n) for n in archive.namelist()) == sorted(second)


def test_unknown_and_invalid_uids(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["CT_small.dcm"]
    unknown = "1.2.826.0.1.3680043.2.1125.1"
    for path in (f"studies/{unknown}", f"studies/{sample.study}/series/{unknown}",
                 f"studies/{sample.study}/series/{sample.series}/instances/{unknown}",
                 f"studies/{unknown}/metadata", f"studies/{sample.study}/series/{unknown}/metadata"):
        assert requests.get(f"{url}/{path}", timeout=30).status_code == 404, path
    for bad in ("1.2.abc", "1..2", "1." + "2" * 70):
        assert requests.get(f"{url}/studies/{bad}", timeout=30).status_code == 400
        assert requests.get(f"{url}/studies/{sample.study}/series/{bad}/metadata", timeout=30).status_code == 400


def test_metadata_json_and_xml(url: str, dicomweb, stored: dict[str, Sample]) -> None:
    sample = stored["emri_small_jpeg_2k_lossless.dcm"]
    metadata = dicomweb.retrieve_series_metadata(sample.study, sample.series)
    assert metadata[0]["00080018"]["Value"] == [sample.sop]
    # dicomweb_client sends "Host" without the port, so check the links with requests.
    (own,) = requests.get(f"{sample.url(url)}/metadata", timeout=30).json()
    assert own["7FE00010"]["BulkDataURI"] == f"{sample.url(url)}/bulk/7FE00010"
    study_metadata = dicomweb.retrieve_study_metadata(sample.study)
    assert any(m["00080018"]["Value"] == [sample.sop] for m in study_metadata)
    response = _get(f"{sample.url(url)}/metadata", 'multipart/related; type="application/dicom+xml"')
    assert response.status_code == 200
    (headers, body), = split_multipart(response)
    assert headers["content-type"] == "application/dicom+xml"
    assert b"NativeDicomModel" in body and sample.sop.encode() in body


def test_head_of_a_study_sends_no_body(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["CT_small.dcm"]
    response = requests.head(f"{url}/studies/{sample.study}", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
