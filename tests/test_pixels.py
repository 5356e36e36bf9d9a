"""Frame decoding, transcoding and negotiation, table-driven over pydicom's test files.

Every file is run through ``analyze`` (as STOW does), its frames are read by
byte range (as WADO does) and decoded or transcoded with ``dicomweb.dicom``;
the result is compared with pydicom's own decoding of the whole file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array

from dicomweb.dicom.analyze import InstanceInfo, analyze
from dicomweb.dicom.pixels import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    HTJ2K_LOSSLESS,
    HTJ2K_RPCL,
    J2K_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    LOSSY,
    NATIVE,
    RLE_LOSSLESS,
    CannotDecode,
    NotAcceptable,
    PixelError,
    decode_frame,
    frame_media_type,
    negotiate_frame_syntax,
    negotiate_instance_syntax,
)
from dicomweb.dicom.transcode import (
    can_transcode,
    encoder_available,
    frame_attributes,
    frame_bytes_to_target,
    frame_from_instance,
    transcode_instance,
)

warnings.filterwarnings("ignore", module="pydicom")

SITE = Path(pydicom.__file__).parent.parent
DATA_DIRS = [SITE / "data_store" / "data", Path(pydicom.__file__).parent / "data" / "test_files"]
#: Larger than this, only the first frame is checked (keeps the run short).
BIG = 2_000_000


def _all_files() -> list[Path]:
    # Listed directly: get_testdata_files('*') would try to download.
    return sorted(p for d in DATA_DIRS if d.is_dir() for p in d.glob("*.dcm"))


def _analyzed(path: Path) -> InstanceInfo | None:
    try:
        with path.open("rb") as fp:
            return analyze(fp)
    except Exception:
        return None


def _pydicom_decodes(path: Path) -> bool:
    try:
        pixel_array(str(path), index=0)
    except Exception:
        return False
    return True


def _odd_big_endian(info: InstanceInfo) -> bool:
    # Odd-length 8-bit OW big endian frames are not addressable (see frame_from_instance).
    assert info.frames
    return info.transfer_syntax_uid == EXPLICIT_VR_BE and sum(n for _, n in info.frames[0]) % 2 == 1


def _addressable() -> list[tuple[Path, InstanceInfo]]:
    out = []
    for path in _all_files():
        info = _analyzed(path)
        if info is None or not info.frames or not _pydicom_decodes(path) or _odd_big_endian(info):
            continue
        out.append((path, info))
    return out


FILES = _addressable()
IDS = [p.name for p, _ in FILES]
NATIVE_FILES = [(p, i) for p, i in FILES if i.transfer_syntax_uid in NATIVE]


def _frames_to_check(path: Path, info: InstanceInfo) -> list[int]:
    assert info.frames
    last = len(info.frames) - 1
    return [0] if path.stat().st_size > BIG else sorted({0, last})


def _fragments(path: Path, ranges: list[tuple[int, int]]) -> list[bytes]:
    with path.open("rb") as fp:
        out = []
        for offset, length in ranges:
            fp.seek(offset)
            out.append(fp.read(length))
        return out


def _adjusted(metadata: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Metadata as a client must see it for frames served with ``changes``."""
    md = dict(metadata)
    if "PhotometricInterpretation" in changes:
        md["00280004"] = {"vr": "CS", "Value": [changes["PhotometricInterpretation"]]}
    if "PlanarConfiguration" in changes:
        md["00280006"] = {"vr": "US", "Value": [changes["PlanarConfiguration"]]}
    return md


def test_corpus_covers_every_family() -> None:
    syntaxes = {i.transfer_syntax_uid for _, i in FILES}
    for ts in (EXPLICIT_VR_LE, EXPLICIT_VR_BE, RLE_LOSSLESS, JPEG_BASELINE, JPEG_LOSSLESS_SV1,
               JPEG_LS_LOSSLESS, J2K_LOSSLESS, "1.2.840.10008.1.2.4.91"):
        assert ts in syntaxes, ts
    names = {p.name for p, _ in FILES}
    assert {"color3d_jpeg_baseline.dcm", "examples_ybr_color.dcm", "emri_small_jpeg_2k_lossless.dcm",
            "emri_small_RLE.dcm"} <= names


@pytest.mark.parametrize(("path", "info"), FILES, ids=IDS)
def test_decode_frame_matches_pydicom(path: Path, info: InstanceInfo) -> None:
    assert info.frames
    for index in _frames_to_check(path, info):
        got = decode_frame(info.metadata, _fragments(path, info.frames[index]), info.transfer_syntax_uid, index)
        want = pixel_array(str(path), index=index)
        assert got.shape == want.shape and got.dtype == want.dtype
        # The same decoders run on the same bytes: exact even for lossy syntaxes.
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("path", "info"), FILES, ids=IDS)
def test_frame_as_explicit_little_endian(path: Path, info: InstanceInfo) -> None:
    assert info.frames
    ts = info.transfer_syntax_uid
    for index in _frames_to_check(path, info):
        fragments = _fragments(path, info.frames[index])
        out = frame_bytes_to_target(fragments, info.metadata, ts, EXPLICIT_VR_LE)
        if ts in (EXPLICIT_VR_LE, "1.2.840.10008.1.2"):
            assert out == b"".join(fragments)  # native little endian: served as stored
        md = _adjusted(info.metadata, frame_attributes(info.metadata, ts, EXPLICIT_VR_LE))
        got = decode_frame(md, [out], EXPLICIT_VR_LE, index)
        np.testing.assert_array_equal(got, pixel_array(str(path), index=index))


LOSSLESS_TARGETS = [RLE_LOSSLESS, J2K_LOSSLESS, HTJ2K_LOSSLESS, HTJ2K_RPCL]
#: Encoding a 2k x 2k radiograph takes seconds: one large file stands for the others.
ROUND_TRIP = [(p, i) for p, i in FILES if p.stat().st_size < BIG or p.name == "RG3_UNCR.dcm"]


@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
@pytest.mark.parametrize(("path", "info"), ROUND_TRIP, ids=[p.name for p, _ in ROUND_TRIP])
def test_frame_lossless_round_trip(path: Path, info: InstanceInfo, target: str) -> None:
    assert info.frames
    ts = info.transfer_syntax_uid
    if not can_transcode(ts, target, info.metadata):
        with pytest.raises(NotAcceptable):
            frame_bytes_to_target(_fragments(path, info.frames[0]), info.metadata, ts, target)
        return
    index = _frames_to_check(path, info)[-1]
    try:
        out = frame_bytes_to_target(_fragments(path, info.frames[index]), info.metadata, ts, target,
                                    frame_index=index)
    except NotAcceptable as exc:  # encoder limits not known in advance (e.g. 3x3 J2K, 32-bit RLE)
        pytest.skip(exc.reason)
    md = _adjusted(info.metadata, frame_attributes(info.metadata, ts, target))
    got = decode_frame(md, [out], target, index)
    np.testing.assert_array_equal(got, pixel_array(str(path), index=index))


INSTANCE_CASES = [(p, i) for p, i in FILES if (p.stat().st_size < BIG and i.transfer_syntax_uid != EXPLICIT_VR_BE)
                  or p.name in ("MR_small_bigendian.dcm", "SC_rgb_expb_2frame.dcm", "OBXXXX1A_expb.dcm")]


def _all_frames(data: bytes) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data))
    return ds.pixel_array


@pytest.mark.parametrize("target", [EXPLICIT_VR_LE, *LOSSLESS_TARGETS])
@pytest.mark.parametrize(("path", "info"), INSTANCE_CASES, ids=[p.name for p, _ in INSTANCE_CASES])
def test_transcode_instance_lossless(path: Path, info: InstanceInfo, target: str) -> None:
    data = path.read_bytes()
    try:
        out = transcode_instance(data, target)
    except NotAcceptable as exc:
        assert target != EXPLICIT_VR_LE, "decoding to native must always work"
        pytest.skip(exc.reason)
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.SOPInstanceUID == info.sop_uid  # another representation, same instance
    assert "LossyImageCompression" not in ds or info.transfer_syntax_uid in LOSSY \
        or ds.LossyImageCompression == pydicom.dcmread(path).get("LossyImageCompression")
    np.testing.assert_array_equal(ds.pixel_array, _all_frames(data))
    again = analyze(io.BytesIO(out))  # what STOW would say of the result
    assert again.frames and len(again.frames) == len(info.frames or [])


def test_transcode_instance_same_syntax_is_identity() -> None:
    path = next(p for p, i in FILES if i.transfer_syntax_uid == J2K_LOSSLESS)
    data = path.read_bytes()
    assert transcode_instance(data, J2K_LOSSLESS) is data


def test_transcode_instance_jpeg_baseline_is_lossy_and_close() -> None:
    path = next(p for p, _ in FILES if p.name == "SC_rgb.dcm")
    out = transcode_instance(path.read_bytes(), JPEG_BASELINE, quality=95)
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert ds.LossyImageCompression == "01"
    assert "ISO_10918_1" in ds.LossyImageCompressionMethod
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    diff = np.abs(ds.pixel_array.astype(int) - pydicom.dcmread(path).pixel_array.astype(int))
    assert diff.mean() < 4


def test_jpeg_baseline_refuses_16_bit() -> None:
    path, info = next((p, i) for p, i in FILES if p.name == "CT_small.dcm")
    assert not can_transcode(info.transfer_syntax_uid, JPEG_BASELINE, info.metadata)
    with pytest.raises(NotAcceptable):
        transcode_instance(path.read_bytes(), JPEG_BASELINE)


def test_jpeg_baseline_frame_of_8_bit_grey() -> None:
    path, info = next((p, i) for p, i in FILES if p.name == "JPGLosslessP14SV1_1s_1f_8b.dcm")
    assert info.frames
    out = frame_bytes_to_target(_fragments(path, info.frames[0]), info.metadata, info.transfer_syntax_uid,
                                JPEG_BASELINE)
    assert out[:2] == b"\xff\xd8"
    got = decode_frame(info.metadata, [out], JPEG_BASELINE).astype(int)
    assert np.abs(got - pixel_array(str(path), index=0).astype(int)).mean() < 3


def test_unproducible_syntaxes_are_not_acceptable() -> None:
    path, info = next((p, i) for p, i in FILES if p.name == "MR_small.dcm")
    assert info.frames
    fragments = _fragments(path, info.frames[0])
    for target in (JPEG_LOSSLESS_SV1, "1.2.840.10008.1.2.4.92", EXPLICIT_VR_BE, "1.2.3.4"):
        with pytest.raises(NotAcceptable):
            frame_bytes_to_target(fragments, info.metadata, info.transfer_syntax_uid, target)
    if not encoder_available(JPEG_LS_LOSSLESS):  # pyjpegls is optional
        with pytest.raises(NotAcceptable):
            transcode_instance(path.read_bytes(), JPEG_LS_LOSSLESS)


def test_frame_from_instance_for_unaddressable_frames() -> None:
    path = DATA_DIRS[1] / "image_dfl.dcm"  # deflated: STOW records no frame ranges
    if not path.exists():
        pytest.skip("pydicom test file missing")
    out = frame_from_instance(path.read_bytes(), 0, EXPLICIT_VR_LE)
    want = pydicom.dcmread(path).pixel_array
    assert np.frombuffer(out, dtype=want.dtype).reshape(want.shape).tolist() == want.tolist()
    with pytest.raises(NotAcceptable):
        frame_from_instance(path.read_bytes(), 5, EXPLICIT_VR_LE)


def test_odd_big_endian_frame_from_instance() -> None:
    path = DATA_DIRS[1] / "SC_rgb_small_odd_big_endian.dcm"
    out = frame_from_instance(path.read_bytes(), 0, EXPLICIT_VR_LE)
    assert np.frombuffer(out, np.uint8).reshape(3, 3, 3).tolist() == pydicom.dcmread(path).pixel_array.tolist()


def test_damaged_data_raises_cannot_decode() -> None:
    path, info = next((p, i) for p, i in FILES if p.name == "MR_small_jp2klossless.dcm")
    assert info.frames
    fragment = _fragments(path, info.frames[0])[0]
    with pytest.raises(CannotDecode):
        decode_frame(info.metadata, [fragment[: len(fragment) // 3]], info.transfer_syntax_uid)
    with pytest.raises(CannotDecode):
        decode_frame({"00280010": {"vr": "US", "Value": [8]}}, [b"\0" * 10], EXPLICIT_VR_LE)
    with pytest.raises(CannotDecode):
        transcode_instance(b"not dicom at all", EXPLICIT_VR_LE)
    assert issubclass(CannotDecode, PixelError) and issubclass(NotAcceptable, ValueError)


# --- Negotiation -------------------------------------------------------------------

OCTET = "application/octet-stream"
FRAME_CASES = [
    # stored, acceptable, expected (media type, syntax)
    (J2K_LOSSLESS, [(OCTET, "*")], (OCTET, J2K_LOSSLESS)),  # OHIF: the stored bytes
    (J2K_LOSSLESS, [(OCTET, None)], (OCTET, EXPLICIT_VR_LE)),  # PS3.18 default: decoded
    (EXPLICIT_VR_LE, [(OCTET, None)], (OCTET, EXPLICIT_VR_LE)),
    (EXPLICIT_VR_BE, [(OCTET, "*")], (OCTET, EXPLICIT_VR_LE)),  # big endian is never served
    ("1.2.840.10008.1.2", [(OCTET, "*")], (OCTET, EXPLICIT_VR_LE)),
    (JPEG_BASELINE, [("image/jpeg", None)], ("image/jpeg", JPEG_BASELINE)),  # as stored, same media type
    (J2K_LOSSLESS, [("image/jpeg", None), ("image/jp2", None)], ("image/jp2", J2K_LOSSLESS)),
    (EXPLICIT_VR_LE, [("image/jp2", None)], ("image/jp2", J2K_LOSSLESS)),
    (EXPLICIT_VR_LE, [("image/x-dicom-rle", None)], ("image/x-dicom-rle", RLE_LOSSLESS)),
    (RLE_LOSSLESS, [("*/*", None)], ("image/dicom-rle", RLE_LOSSLESS)),
    (EXPLICIT_VR_LE, [("image/jpeg", JPEG_BASELINE)], ("image/jpeg", JPEG_BASELINE)),
    (EXPLICIT_VR_LE, [("image/jpeg", None), (OCTET, None)], (OCTET, EXPLICIT_VR_LE)),  # no JPEG lossless encoder
]


@pytest.mark.parametrize(("stored", "acceptable", "expected"), FRAME_CASES)
def test_negotiate_frame_syntax(stored: str, acceptable: list[tuple[str, str | None]],
                                expected: tuple[str, str]) -> None:
    assert negotiate_frame_syntax(stored, acceptable, can_transcode) == expected


@pytest.mark.parametrize(("stored", "acceptable"), [
    (EXPLICIT_VR_LE, [("image/jpeg", None)]),  # default 4.70 cannot be produced
    (EXPLICIT_VR_LE, [("image/jpeg", J2K_LOSSLESS)]),  # syntax of another media type
    (EXPLICIT_VR_LE, [("text/html", None)]),
    (J2K_LOSSLESS, [(OCTET, J2K_LOSSLESS)]),  # octet-stream is for native data only
])
def test_negotiate_frame_syntax_not_acceptable(stored: str, acceptable: list[tuple[str, str | None]]) -> None:
    with pytest.raises(NotAcceptable):
        negotiate_frame_syntax(stored, acceptable, can_transcode)


@pytest.mark.parametrize(("stored", "acceptable", "expected"), [
    (J2K_LOSSLESS, ["*"], J2K_LOSSLESS),
    (J2K_LOSSLESS, [None], EXPLICIT_VR_LE),  # PS3.18 Table 8.7.3-2 default
    ("1.2.840.10008.1.2", [None], EXPLICIT_VR_LE),
    (JPEG_BASELINE, [None], JPEG_BASELINE),  # lossy stays as it is (PS3.18 8.7.3)
    (EXPLICIT_VR_LE, [RLE_LOSSLESS], RLE_LOSSLESS),
    (EXPLICIT_VR_LE, [JPEG_LOSSLESS_SV1, J2K_LOSSLESS], J2K_LOSSLESS),
])
def test_negotiate_instance_syntax(stored: str, acceptable: list[str | None], expected: str) -> None:
    assert negotiate_instance_syntax(stored, acceptable, can_transcode) == expected


def test_negotiate_instance_syntax_not_acceptable() -> None:
    with pytest.raises(NotAcceptable):
        negotiate_instance_syntax(EXPLICIT_VR_LE, [JPEG_LOSSLESS_SV1], can_transcode)


def test_frame_media_types() -> None:
    assert frame_media_type(JPEG_BASELINE) == "image/jpeg"
    assert frame_media_type("1.2.840.10008.1.2.4.57") == "image/jpeg"
    assert frame_media_type("1.2.840.10008.1.2.4.81") == "image/jls"
    assert frame_media_type("1.2.840.10008.1.2.4.91") == "image/jp2"
    assert frame_media_type(RLE_LOSSLESS) == "image/dicom-rle"
    assert frame_media_type(EXPLICIT_VR_LE) == OCTET
