"""Rendered images, thumbnails and WADO-URI."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

from tests.wado_samples import Sample, stored_fixture  # noqa: F401 (a fixture)


def _image(response: requests.Response, media: str = "image/jpeg") -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == media
    image = Image.open(io.BytesIO(response.content))
    assert image.format == {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}[media]
    return np.asarray(image.convert("RGB"))


def _not_blank(pixels: np.ndarray) -> None:
    assert pixels.std() > 5, "the image is blank"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "examples_ybr_color.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm", "gdcm-US-ALOKA-16.dcm", "liver.dcm",
                                  "image_dfl.dcm"])
def test_rendered_instance_has_the_image_size_and_content(url: str, stored: dict[str, Sample], name: str) -> None:
    sample = stored[name]
    ds = sample.dataset()
    pixels = _image(requests.get(f"{sample.url(url)}/rendered", timeout=60))
    assert pixels.shape[:2] == (ds.Rows, ds.Columns)
    _not_blank(pixels)


def test_rendered_frame_png_viewport_window_and_quality(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["emri_small_jpeg_2k_lossless.dcm"]
    base = f"{sample.url(url)}/frames/7/rendered"
    png = _image(requests.get(base, headers={"Accept": "image/png"}, timeout=60), "image/png")
    assert png.shape[:2] == (64, 64)
    small = _image(requests.get(base, params={"viewport": "32,32"}, timeout=60))
    assert small.shape[:2] == (32, 32)
    narrow = _image(requests.get(base, params={"window": "100,50", "accept": "image/png"}, timeout=60), "image/png")
    assert not np.array_equal(narrow, png)
    low = requests.get(base, params={"quality": "5"}, timeout=60)
    high = requests.get(base, params={"quality": "95"}, timeout=60)
    assert len(low.content) < len(high.content)


@pytest.mark.parametrize(("params", "status"), [
    ({"window": "abc,10"}, 400), ({"window": "10"}, 400), ({"window": "10,0"}, 400),
    ({"window": "10,20,CUBIC"}, 400), ({"viewport": "0,10"}, 400), ({"viewport": "10,10,0,0,5,5"}, 400),
    ({"quality": "101"}, 400), ({"quality": "x"}, 400),
])
def test_bad_rendering_parameters_are_400(url: str, stored: dict[str, Sample], params: dict[str, str],
                                          status: int) -> None:
    response = requests.get(f"{stored['CT_small.dcm'].url(url)}/rendered", params=params, timeout=30)
    assert response.status_code == status


def test_rendered_errors(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["emri_small_jpeg_2k_lossless.dcm"]
    assert requests.get(f"{sample.url(url)}/frames/11/rendered", timeout=30).status_code == 404
    assert requests.get(f"{sample.url(url)}/frames/0/rendered", timeout=30).status_code == 400
    assert requests.get(f"{sample.url(url)}/rendered", headers={"Accept": "image/tiff"}, timeout=30).status_code == 406


def test_thumbnails_at_every_level(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["examples_ybr_color.dcm"]
    for path in (f"{sample.url(url)}/thumbnail", f"{sample.url(url)}/frames/3/thumbnail",
                 f"{url}/studies/{sample.study}/series/{sample.series}/thumbnail", f"{url}/studies/{sample.study}/thumbnail"):
        pixels = _image(requests.get(path, headers={"Accept": "image/jpeg"}, timeout=60))
        assert max(pixels.shape[:2]) <= 128
        _not_blank(pixels)


# -- WADO-URI -----------------------------------------------------------------------

def _wado(url: str, sample: Sample, root: str = "/wado", **params: str) -> requests.Response:
    query = {"requestType": "WADO", "studyUID": sample.study, "seriesUID": sample.series, "objectUID": sample.sop,
             **params}
    return requests.get(url + root, params=query, timeout=60)


@pytest.mark.parametrize("root", ["/wado", "/"])
def test_wado_uri_dicom_as_stored(url: str, stored: dict[str, Sample], root: str) -> None:
    sample = stored["emri_small_jpeg_2k_lossless.dcm"]
    response = _wado(url, sample, root, contentType="application/dicom", transferSyntax="*")
    assert response.status_code == 200
    assert response.content == sample.raw
    assert response.headers["Content-Type"].startswith("application/dicom")


def test_wado_uri_dicom_transcoded(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["MR_small_RLE.dcm"]
    response = _wado(url, sample, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.1")
    ds = pydicom.dcmread(io.BytesIO(response.content))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    np.testing.assert_array_equal(ds.pixel_array, sample.dataset().pixel_array)


def test_wado_uri_images(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["emri_small_jpeg_2k_lossless.dcm"]
    default = _image(_wado(url, sample))  # image/jpeg is the default
    assert default.shape[:2] == (64, 64)
    png = _image(_wado(url, sample, contentType="image/png", frameNumber="10", rows="32", columns="32"), "image/png")
    assert png.shape[:2] == (32, 32)
    windowed = _image(_wado(url, sample, contentType="image/png", windowCenter="200", windowWidth="100"), "image/png")
    _not_blank(windowed)


@pytest.mark.parametrize(("params", "status"), [
    ({"requestType": None}, 400), ({"requestType": "WADO-RS"}, 400), ({"studyUID": None}, 400),
    ({"objectUID": "1.2.x"}, 400), ({"contentType": "text/html"}, 406), ({"frameNumber": "0"}, 400),
    ({"frameNumber": "11"}, 404), ({"windowCenter": "10"}, 400), ({"rows": "-3"}, 400),
    ({"transferSyntax": "1.2.840.10008.1.2.1"}, 400),  # only with application/dicom
    ({"contentType": "application/dicom", "transferSyntax": "abc"}, 400),
    ({"anonymize": "yes"}, 400), ({"objectUID": "1.2.826.0.1.3680043.2.1125.99"}, 404),
])
def test_wado_uri_errors(url: str, stored: dict[str, Sample], params: dict[str, str | None], status: int) -> None:
    sample = stored["emri_small_jpeg_2k_lossless.dcm"]
    query: dict[str, str | None] = {"requestType": "WADO", "studyUID": sample.study, "seriesUID": sample.series,
                                    "objectUID": sample.sop}
    query.update(params)
    response = requests.get(url + "/wado", params={k: v for k, v in query.items() if v is not None}, timeout=30)
    assert response.status_code == status, response.text
    assert response.text.strip()


def test_the_root_without_parameters_is_a_banner(url: str) -> None:
    response = requests.get(url + "/", timeout=10)
    assert response.status_code == 200
    assert "DICOMweb" in response.text
