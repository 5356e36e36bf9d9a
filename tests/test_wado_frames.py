"""WADO-RS frames and bulk data, against the real server, compared with pydicom's own decoding."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from tests.httpclient import split_multipart
from tests.wado_samples import SAMPLES, Sample, content_syntax, decode_frame, pixel_frames, stored_fixture  # noqa: F401 (a fixture)

OHIF = "multipart/related; type=application/octet-stream; transfer-syntax=*"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"


def _frames(url: str, numbers: str, accept: str = OHIF) -> requests.Response:
    return requests.get(f"{url}/frames/{numbers}", headers={"Accept": accept}, timeout=60)


@pytest.mark.parametrize("name", SAMPLES)
def test_every_frame_as_ohif_asks_decodes_like_pydicom(url: str, stored: dict[str, Sample], name: str) -> None:
    sample = stored[name]
    ds = sample.dataset()
    expected = list(pixel_frames(ds))
    numbers = list(range(1, sample.frames + 1))
    if len(numbers) > 12:  # first, last and a spread between keep the 120-frame file quick
        numbers = sorted({1, len(numbers), *numbers[:: len(numbers) // 8]})
    response = _frames(sample.url(url), ",".join(map(str, numbers)))
    assert response.status_code == 200, response.text
    parts = split_multipart(response)
    assert len(parts) == len(numbers)
    for number, (headers, body) in zip(numbers, parts, strict=True):
        syntax = content_syntax(headers["content-type"])
        assert headers["content-type"].startswith("application/octet-stream; transfer-syntax=")
        assert headers["content-location"].endswith(f"/frames/{number}")
        if sample.tsuid in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"):
            assert syntax == EXPLICIT_LE  # never implicit or big endian on the web
        elif sample.tsuid != EXPLICIT_LE:
            assert syntax == sample.tsuid  # transfer-syntax=*: compressed bytes as stored
        np.testing.assert_array_equal(decode_frame(ds, body, syntax), expected[number - 1])


def test_frames_in_any_order_with_repeats(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["emri_small_jpeg_2k_lossless.dcm"]
    parts = split_multipart(_frames(sample.url(url), "3,1,3,10"))
    assert [h["content-location"].rsplit("/", 1)[1] for h, _ in parts] == ["3", "1", "3", "10"]
    assert parts[0][1] == parts[2][1]
    assert parts[0][0]["content-type"] == f"application/octet-stream; transfer-syntax={J2K_LOSSLESS}"


@pytest.mark.parametrize("accept", [
    'multipart/related; type="application/octet-stream"; transfer-syntax="*"',
    "multipart/related; type=application/octet-stream; transfer-syntax=*; transfer-syntax=*",
    'multipart/related; type="image/jp2"',
    "multipart/related; type=image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90",
    "*/*",
    "",
])
def test_compressed_frames_come_as_stored_for_every_form_of_accept(url: str, stored: dict[str, Sample], accept: str) -> None:
    sample = stored["emri_small_jpeg_2k_lossless.dcm"]
    response = _frames(sample.url(url), "2", accept)
    assert response.status_code == 200, response.text
    (headers, body), = split_multipart(response)
    assert content_syntax(headers["content-type"]) == J2K_LOSSLESS
    assert body[:2] == b"\xff\x4f"  # a JPEG 2000 codestream


def test_octet_stream_without_syntax_means_decoded_explicit_little_endian(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["examples_ybr_color.dcm"]
    expected = list(pixel_frames(sample.dataset()))
    response = _frames(sample.url(url), "5", 'multipart/related; type="application/octet-stream"')
    (headers, body), = split_multipart(response)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    np.testing.assert_array_equal(np.frombuffer(body, np.uint8).reshape(expected[4].shape), expected[4])


@pytest.mark.parametrize(("name", "media", "target"), [
    ("CT_small.dcm", "image/jp2", J2K_LOSSLESS),
    ("CT_small.dcm", "image/dicom-rle", RLE),
    ("MR_small_RLE.dcm", "image/jp2", J2K_LOSSLESS),
    ("SC_rgb_rle_2frame.dcm", "application/octet-stream", EXPLICIT_LE),
])
def test_transcoded_frames_decode_to_the_same_pixels(url: str, stored: dict[str, Sample], name: str, media: str,
                                                      target: str) -> None:
    sample = stored[name]
    ds = sample.dataset()
    expected = list(pixel_frames(ds))
    response = _frames(sample.url(url), "1", f"multipart/related; type={media}; transfer-syntax={target}")
    assert response.status_code == 200, response.text
    (headers, body), = split_multipart(response)
    assert headers["content-type"] == f"{media}; transfer-syntax={target}"
    if target == EXPLICIT_LE:
        np.testing.assert_array_equal(np.frombuffer(body, expected[0].dtype).reshape(expected[0].shape), expected[0])
    else:
        np.testing.assert_array_equal(decode_frame(ds, body, target), expected[0])


@pytest.mark.parametrize(("numbers", "status"), [
    ("0", 400), ("-1", 400), ("a", 400), ("1,,2", 400), ("1.5", 400), ("11", 404), ("1,99", 404),
])
def test_bad_frame_numbers(url: str, stored: dict[str, Sample], numbers: str, status: int) -> None:
    response = _frames(stored["emri_small_jpeg_2k_lossless.dcm"].url(url), numbers)
    assert response.status_code == status


def test_unproducible_frames_are_406(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["CT_small.dcm"]
    assert _frames(sample.url(url), "1", "multipart/related; type=image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.70"
                   ).status_code == 406
    assert _frames(sample.url(url), "1", "application/dicom+json").status_code == 406


def test_frames_of_unknown_or_invalid_instances(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["CT_small.dcm"]
    assert _frames(f"{url}/studies/{sample.study}/series/{sample.series}/instances/1.2.3.4", "1").status_code == 404
    assert _frames(f"{url}/studies/{sample.study}/series/{sample.series}/instances/1..2", "1").status_code == 400


def test_dicomweb_client_retrieves_frames(dicomweb, stored: dict[str, Sample]) -> None:
    sample = stored["SC_rgb_rle_2frame.dcm"]
    frames = dicomweb.retrieve_instance_frames(sample.study, sample.series, sample.sop, frame_numbers=[2, 1])
    ds = sample.dataset()
    expected = list(pixel_frames(ds))
    np.testing.assert_array_equal(decode_frame(ds, frames[0], RLE), expected[1])
    np.testing.assert_array_equal(decode_frame(ds, frames[1], RLE), expected[0])


# -- bulk data -----------------------------------------------------------------------

def _pixel_uri(url: str, sample: Sample) -> str:
    (meta,) = requests.get(f"{sample.url(url)}/metadata", timeout=30).json()
    uri: str = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith(url + "/")
    return uri


def test_native_pixel_data_bulk_with_ranges(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["CT_small.dcm"]
    pixels = bytes(sample.dataset().PixelData)
    uri = _pixel_uri(url, sample)
    (headers, body), = split_multipart(requests.get(uri, timeout=30))
    assert body == pixels
    plain = requests.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=10-19"}, timeout=30)
    assert plain.status_code == 206
    assert plain.content == pixels[10:20]
    assert plain.headers["Content-Range"] == f"bytes 10-19/{len(pixels)}"
    suffix = requests.get(uri, headers={"Range": "bytes=-5"}, timeout=30)
    assert suffix.status_code == 206
    (headers, body), = split_multipart(suffix)
    assert body == pixels[-5:]
    assert headers["content-range"] == f"bytes {len(pixels) - 5}-{len(pixels) - 1}/{len(pixels)}"
    assert requests.get(uri, headers={"Range": f"bytes={len(pixels)}-"}, timeout=30).status_code == 416


def test_big_endian_pixel_data_bulk_is_little_endian(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["MR_small_bigendian.dcm"]
    expected = sample.dataset().pixel_array
    body = requests.get(_pixel_uri(url, sample), headers={"Accept": "application/octet-stream"}, timeout=30).content
    np.testing.assert_array_equal(np.frombuffer(body, "<i2").reshape(expected.shape), expected)


def test_encapsulated_pixel_data_bulk_answers_with_the_frames(url: str, dicomweb,
                                                              stored: dict[str, Sample]) -> None:
    sample = stored["emri_small_jpeg_2k_lossless.dcm"]
    frames = dicomweb.retrieve_bulkdata(_pixel_uri(url, sample))
    assert len(frames) == 10
    ds = sample.dataset()
    expected = list(pixel_frames(ds))
    np.testing.assert_array_equal(decode_frame(ds, frames[9], J2K_LOSSLESS), expected[9])


def test_other_bulk_data_and_bad_paths(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["gdcm-US-ALOKA-16.dcm"]
    (meta,) = requests.get(f"{sample.url(url)}/metadata", timeout=30).json()
    ds = sample.dataset()
    uris = {tag: v["BulkDataURI"] for tag, v in meta.items() if "BulkDataURI" in v and tag != "7FE00010"}
    assert uris, "the palette's LUT data should be bulk data"
    for tag, uri in uris.items():
        (_, body), = split_multipart(requests.get(uri, timeout=30))
        assert body == ds[int(tag, 16)].value
    base = f"{sample.url(url)}/bulk"
    for bad in ("7FE0001", "7FE00010/x", "../7FE00010", "7FE00010/0/"):
        assert requests.get(f"{base}/{bad}", timeout=30).status_code in (400, 404), bad
    assert requests.get(f"{base}/00100010", timeout=30).status_code == 404


def test_deflated_objects_serve_their_bulk_data_inflated(url: str, stored: dict[str, Sample]) -> None:
    """A deflated data set is compressed as a whole (PS3.5 A.5): its bulk data
    has no byte range in the stored file, yet its BulkDataURIs answer with the
    values, Pixel Data included, read from the inflated object."""
    sample = stored["image_dfl.dcm"]
    ds = sample.dataset()
    (meta,) = requests.get(f"{sample.url(url)}/metadata", timeout=30).json()
    uri = meta["7FE00010"]["BulkDataURI"]
    (headers, body), = split_multipart(requests.get(uri, timeout=30))
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert body == ds.PixelData
    part = requests.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=0-99"}, timeout=30)
    assert part.status_code == 206 and part.content == ds.PixelData[:100]
    assert requests.get(f"{sample.url(url)}/bulk/00091011", timeout=30).status_code == 404
