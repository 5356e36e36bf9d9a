"""Store-time analysis: the frame byte ranges match pydicom's own reading."""

from __future__ import annotations

import io
import os

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomweb.dicom.analyze import InvalidInstance, analyze
from dicomweb.dicom.transcode import element_value
from tests import dicomgen

NATIVE = ["CT_small.dcm", "MR_small_bigendian.dcm", "rtdose.dcm", "SC_rgb_2frame.dcm", "US1_UNCR.dcm"]
ENCAPSULATED = ["MR_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm", "examples_ybr_color.dcm",
                "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "emri_small_jpeg_ls_lossless.dcm"]


def _frames(path: str) -> list[bytes]:
    with open(path, "rb") as fp:
        info = analyze(fp)
        assert info.frames is not None
        out = []
        for frame in info.frames:
            data = b""
            for offset, length in frame:
                fp.seek(offset)
                data += fp.read(length)
            out.append(data)
        return out


@pytest.mark.parametrize("name", NATIVE)
def test_native_frame_ranges_cover_the_pixel_data(name: str) -> None:
    path = dicomgen.sample_file(name)
    ds = pydicom.dcmread(path)
    assert b"".join(_frames(path)) == ds.PixelData[: len(b"".join(_frames(path)))]
    assert len(_frames(path)) == int(ds.get("NumberOfFrames", 1) or 1)


@pytest.mark.parametrize("name", ENCAPSULATED)
def test_encapsulated_frames_match_pydicom(name: str) -> None:
    path = dicomgen.sample_file(name)
    ds = pydicom.dcmread(path)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    expected = [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=nframes)]
    # pydicom keeps the odd-length padding byte of the last fragment, as we do
    assert _frames(path) == expected


def test_metadata_has_bulk_data_uris_and_no_pixel_values() -> None:
    with open(dicomgen.sample_file("CT_small.dcm"), "rb") as fp:
        info = analyze(fp)
    pixel = info.metadata["7FE00010"]
    assert pixel["BulkDataURI"].startswith(f"studies/{info.study_uid}/series/{info.series_uid}/instances/")
    assert "Value" not in pixel and "InlineBinary" not in pixel
    assert info.study["00100010"]["Value"][0]["Alphabetic"] == "CompressedSamples^CT1"
    assert info.size == os.path.getsize(dicomgen.sample_file("CT_small.dcm"))


def test_a_file_without_the_dicm_prefix_is_refused() -> None:
    with open(dicomgen.sample_file("no_meta.dcm"), "rb") as fp, pytest.raises(InvalidInstance) as info:
        analyze(fp)
    assert info.value.failure == 0xC000


def test_a_deflated_object_keeps_its_bulk_data_uris_without_byte_ranges(tmp_path) -> None:
    """Offsets into a deflated file mean nothing (the data set is compressed):
    the bulk values keep their URIs and are read from the inflated object."""
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "LO", "private creator")
    ds.add_new(0x00091011, "OB", bytes(range(256)) * 20)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    info = analyze(io.BytesIO(buffer.getvalue()))
    assert info.bulk == {} and info.frames is None
    assert info.metadata["00091011"]["BulkDataURI"].endswith("/bulk/00091011")
    assert info.metadata["7FE00010"] == {"vr": "OW", "BulkDataURI": info.metadata["7FE00010"]["BulkDataURI"]}
    assert element_value(buffer.getvalue(), "00091011") == bytes(range(256)) * 20
    assert element_value(buffer.getvalue(), "7FE00010") == ds.PixelData
    assert element_value(buffer.getvalue(), "00100010/0/00100010") is None
