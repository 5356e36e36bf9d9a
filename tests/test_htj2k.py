"""HTJ2K frames: produced from any decodable source, decoded back by pydicom,
kept in the derived frame cache, served in byte ranges, precomputed after STOW."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset

from dicomweb.dicom.htj2k import encode
from dicomweb.dicom.pixels import HTJ2K, HTJ2K_LOSSLESS, HTJ2K_RPCL
from dicomweb.dicom.transcode import transcode_instance
from dicomweb.web.derived import DerivedCache
from tests import dicomgen
from tests.httpclient import split_multipart, stow
from tests.inprocess import Client, InProcessServer
from tests.server import ServerProcess
from tests.wado_samples import Sample, content_syntax, decode_frame, pixel_frames, stored_fixture  # noqa: F401 (a fixture)

JPHC = 'multipart/related; type="image/jphc"'
#: One source per family the encoder must take: native 16-bit signed, big
#: endian, RLE (grey and RGB, multi-frame), JPEG 2000, JPEG-LS, JPEG baseline YBR.
SOURCES = ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm",
           "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm", "examples_ybr_color.dcm",
           "SC_rgb_expb_16bit_2frame.dcm"]


def _frames(url: str, numbers: str, accept: str = JPHC, **headers: str) -> requests.Response:
    return requests.get(f"{url}/frames/{numbers}", headers={"Accept": accept, **headers}, timeout=60)


def _as_served(ds: Dataset) -> Dataset:
    # Decoded colour is RGB; HTJ2K lossless writes it with the reversible colour transform.
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        ds.PhotometricInterpretation = "YBR_RCT"
        ds.PlanarConfiguration = 0
    return ds


@pytest.mark.parametrize("name", SOURCES)
def test_htj2k_frames_decode_to_the_source_pixels(url: str, stored: dict[str, Sample], name: str) -> None:
    sample = stored[name]
    ds = sample.dataset()
    expected = list(pixel_frames(ds))
    numbers = sorted({1, sample.frames})
    response = _frames(sample.url(url), ",".join(map(str, numbers)))
    assert response.status_code == 200, response.text
    for number, (headers, body) in zip(numbers, split_multipart(response), strict=True):
        assert headers["content-type"] == f"image/jphc; transfer-syntax={HTJ2K_LOSSLESS}"
        assert body[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: a raw codestream (PS3.5 A.4.4)
        got = decode_frame(_as_served(sample.dataset()), body, HTJ2K_LOSSLESS)
        np.testing.assert_array_equal(got, expected[number - 1])


def test_rpcl_and_lossy_are_named_by_transfer_syntax(url: str, stored: dict[str, Sample]) -> None:
    sample = stored["CT_small.dcm"]
    ds = sample.dataset()
    rpcl = _frames(sample.url(url), "1", f"{JPHC}; transfer-syntax={HTJ2K_RPCL}")
    ((headers, body),) = split_multipart(rpcl)
    assert content_syntax(headers["content-type"]) == HTJ2K_RPCL
    np.testing.assert_array_equal(decode_frame(ds, body, HTJ2K_RPCL), ds.pixel_array)
    lossy = _frames(sample.url(url), "1", f"{JPHC}; transfer-syntax={HTJ2K}")
    ((headers, small),) = split_multipart(lossy)
    assert content_syntax(headers["content-type"]) == HTJ2K
    assert len(small) < len(body)
    error = np.abs(decode_frame(ds, small, HTJ2K).astype(int) - ds.pixel_array.astype(int))
    # The quantization step is 1/1,024 of the frame's value range: errors stay within a few steps.
    span = int(ds.pixel_array.max()) - int(ds.pixel_array.min())
    assert error.mean() < span / 1024 and error.max() < 16 * span / 1024


@pytest.mark.parametrize("name", ["liver.dcm", "rtdose.dcm"])
def test_htj2k_of_1_or_32_bit_data_is_not_acceptable(url: str, stored: dict[str, Sample], name: str) -> None:
    response = _frames(stored[name].url(url), "1")
    assert response.status_code == 406
    assert HTJ2K_LOSSLESS in response.text  # the reason names what cannot be produced


def test_a_stored_htj2k_instance_is_served_as_stored_and_decoded(url: str) -> None:
    raw = Path(dicomgen.sample_file("CT_small.dcm")).read_bytes()
    source = pydicom.dcmread(io.BytesIO(raw))
    study, series, sop = (pydicom.uid.generate_uid() for _ in range(3))
    source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID = study, series, sop
    source.file_meta.MediaStorageSOPInstanceUID = sop
    out = io.BytesIO()
    source.save_as(out, enforce_file_format=True)
    htj2k = transcode_instance(out.getvalue(), HTJ2K_RPCL)
    assert stow(url, [htj2k]).status_code == 200
    base = f"{url}/studies/{study}/series/{series}/instances/{sop}"
    as_stored = _frames(base, "1", "multipart/related; type=application/octet-stream; transfer-syntax=*")
    ((headers, body),) = split_multipart(as_stored)
    assert content_syntax(headers["content-type"]) == HTJ2K_RPCL
    assert body == pydicom.encaps.get_frame(pydicom.dcmread(io.BytesIO(htj2k)).PixelData, 0)
    decoded = _frames(base, "1", "multipart/related; type=application/octet-stream")
    ((_, native),) = split_multipart(decoded)
    np.testing.assert_array_equal(np.frombuffer(native, "<i2").reshape(source.pixel_array.shape), source.pixel_array)


# -- the derived frame cache (in process: the counters are read directly) ------------

def _count(server: InProcessServer, result: str) -> float:
    return server.metrics.registry.get_sample_value("dicomweb_derived_frames_total", {"result": result}) or 0.0


def _ct(sop: str, seed: int, size: int = 64) -> tuple[bytes, str]:
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    raw = dicomgen.ct_instance(study, series, 1, size=size, sop_uid=sop, seed=seed)
    return raw, f"/studies/{study}/series/{series}/instances/{sop}"


def _one_frame(http: Client, path: str, accept: str = JPHC) -> bytes:
    response = http.get(f"{path}/frames/1", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    ((_, body),) = split_multipart(response)
    return body


def test_the_second_request_is_served_from_the_derived_cache(inproc: InProcessServer) -> None:
    raw, path = _ct("1.2.826.0.1.3680043.8.498.10", seed=1)
    assert stow(inproc.client, [raw]).status_code == 200
    first = _one_frame(inproc.client, path)
    assert (_count(inproc, "miss"), _count(inproc, "hit")) == (1, 0)
    assert _one_frame(inproc.client, path) == first
    # 4.201 and 4.202 are one codestream here: the RPCL request is a hit too.
    assert _one_frame(inproc.client, path, f"{JPHC}; transfer-syntax={HTJ2K_RPCL}") == first
    assert (_count(inproc, "miss"), _count(inproc, "hit")) == (1, 2)
    assert list((Path(inproc.settings.data_dir) / "derived").rglob("*.frame"))


def test_a_replaced_instance_never_serves_the_old_derived_frames(inproc: InProcessServer) -> None:
    sop = "1.2.826.0.1.3680043.8.498.11"
    old, path = _ct(sop, seed=1)
    assert stow(inproc.client, [old]).status_code == 200
    before = _one_frame(inproc.client, path)
    new, _ = _ct(sop, seed=2)
    assert stow(inproc.client, [new]).status_code == 200  # same SOP, other pixels: replaced
    after = _one_frame(inproc.client, path)
    assert after != before
    expected = pydicom.dcmread(io.BytesIO(new)).pixel_array
    np.testing.assert_array_equal(decode_frame(pydicom.dcmread(io.BytesIO(new)), after, HTJ2K_LOSSLESS), expected)
    assert inproc.client.delete(path).status_code in (200, 204)
    assert inproc.client.get(f"{path}/frames/1", headers={"Accept": JPHC}).status_code == 404


def test_the_derived_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    cache = DerivedCache(str(tmp_path / "derived"), limit_bytes=10_000)
    for i in range(5):
        cache.put(f"{i:064x}", bytes(3_000))
        if i >= 1:
            assert cache.get(f"{0:064x}") is not None  # frame 0 stays the most recently used
    assert cache.total_bytes() <= 10_000
    assert cache.get(f"{0:064x}") is not None
    assert cache.get(f"{1:064x}") is None and cache.stats.evicted >= 1
    assert not list((tmp_path / "derived").rglob(".tmp-*"))  # written by rename only


def test_two_caches_on_one_directory_never_see_a_partial_frame(tmp_path: Path) -> None:
    """Two frontends (here two cache objects in threads) writing, reading and
    evicting in the same directory: a read gives a whole frame or nothing."""
    import threading

    root = str(tmp_path / "derived")
    caches = [DerivedCache(root, limit_bytes=200_000), DerivedCache(root, limit_bytes=200_000)]
    errors: list[str] = []

    def work(cache: DerivedCache, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(300):
            n = int(rng.integers(0, 40))
            key = f"{n:064x}"
            data = cache.get(key)
            if data is not None and data != bytes([n]) * (5_000 + n):
                errors.append(f"frame {n}: {len(data)} bytes")
            if data is None:
                cache.put(key, bytes([n]) * (5_000 + n))

    threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(caches * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    caches[0].evict()
    assert caches[0].total_bytes() <= 200_000


def test_a_zero_limit_turns_the_cache_off(tmp_path: Path) -> None:
    with InProcessServer(str(tmp_path / "data"), "--derived-cache-mb", "0") as server:
        raw, path = _ct("1.2.826.0.1.3680043.8.498.12", seed=3)
        assert stow(server.client, [raw]).status_code == 200
        assert _one_frame(server.client, path) == _one_frame(server.client, path)
        assert _count(server, "hit") + _count(server, "miss") == 0
        assert not (tmp_path / "data" / "derived").exists()


# -- byte ranges ---------------------------------------------------------------------

def test_a_range_of_one_frame_is_206_and_the_pieces_make_the_whole(inproc: InProcessServer) -> None:
    raw, path = _ct("1.2.826.0.1.3680043.8.498.13", seed=4, size=256)
    assert stow(inproc.client, [raw]).status_code == 200
    url = f"{path}/frames/1"
    whole = inproc.client.get(url, headers={"Accept": JPHC, "Range": "bytes=0-"})
    assert whole.status_code == 206
    size = int(whole.headers["Content-Range"].rsplit("/", 1)[1])
    assert len(whole.content) == size
    head = inproc.client.get(url, headers={"Accept": JPHC, "Range": "bytes=0-1023"})
    tail = inproc.client.get(url, headers={"Accept": JPHC, "Range": "bytes=1024-"})
    assert head.status_code == tail.status_code == 206
    assert head.headers["Content-Range"] == f"bytes 0-1023/{size}"
    assert head.headers["Content-Type"] == tail.headers["Content-Type"]  # the same boundary each time
    assert head.content + tail.content == whole.content
    ((headers, body),) = split_multipart(whole)
    assert content_syntax(headers["content-type"]) == HTJ2K_LOSSLESS
    assert body[:4] in head.content  # the codestream starts in the first piece
    beyond = inproc.client.get(url, headers={"Accept": JPHC, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416


def test_the_first_bytes_of_an_htj2k_frame_hold_a_low_resolution_image() -> None:
    import imagecodecs

    rng = np.random.default_rng(5)
    image = (np.add.outer(np.arange(512), np.arange(512)) * 8 + rng.integers(0, 64, (512, 512))).astype(np.uint16)
    codestream = encode(image, {"bits_allocated": 16, "bits_stored": 16, "pixel_representation": 0}, HTJ2K_RPCL)
    # RPCL with one tile-part per resolution: the lowest resolutions come first.
    low = imagecodecs.htj2k_decode(codestream, skipres=4)
    assert low.shape == (32, 32)
    assert codestream.count(b"\xff\x90") == 6  # SOT: one tile-part per resolution (5 decompositions)


def test_the_accept_query_parameter_asks_for_htj2k(inproc: InProcessServer) -> None:
    """For a viewer that cannot set Accept on frame requests (PS3.18 8.3.3.1)."""
    raw, path = _ct("1.2.826.0.1.3680043.8.498.14", seed=6)
    assert stow(inproc.client, [raw]).status_code == 200
    response = inproc.client.get(f"{path}/frames/1", params={"accept": JPHC},
                                 headers={"Accept": "multipart/related; type=application/octet-stream"})
    ((headers, _),) = split_multipart(response)
    assert headers["content-type"] == f"image/jphc; transfer-syntax={HTJ2K_LOSSLESS}"


def test_capabilities_list_the_htj2k_syntaxes_and_media_type(http: Client) -> None:
    text = http.options("/", headers={"Accept": "application/vnd.sun.wadl+xml"}).text
    for uid in (HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K):
        assert f'value="{uid}"' in text
    assert "image/jphc" in text


# -- precompute ----------------------------------------------------------------------

def test_precompute_fills_the_cache_after_stow(fresh_server: ServerProcess) -> None:
    fresh_server.extra += ["--precompute", "htj2k"]
    with fresh_server:
        path = dicomgen.sample_file("color3d_jpeg_baseline.dcm")  # 120 frames
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert stow(fresh_server.url, [Path(path).read_bytes()]).status_code == 200
        # The answer came first: encoding 120 frames takes far longer than this look.
        assert _metric(fresh_server.url, "precomputed") < 120
        deadline = time.monotonic() + 120
        while _metric(fresh_server.url, "precomputed") < 120:
            assert time.monotonic() < deadline, "the frames were not precomputed"
            time.sleep(0.1)  # polling a counter: the server offers no event to wait on
        base = (f"{fresh_server.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")
        response = _frames(base, "1,120")
        assert len(split_multipart(response)) == 2
        assert _metric(fresh_server.url, "hit") == 2 and _metric(fresh_server.url, "miss") == 0


def _metric(url: str, result: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'dicomweb_derived_frames_total{{result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


warnings.filterwarnings("ignore", module="pydicom")
