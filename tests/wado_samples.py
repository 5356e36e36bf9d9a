"""Shared data for the WADO tests: sample files stored once per server, and decoding helpers."""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
import pydicom.uid
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from tests import dicomgen
from tests.httpclient import stow

NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}

#: One file per storage case the frame code must handle.
SAMPLES = [
    "CT_small.dcm",  # native, explicit little endian
    "MR_small_implicit.dcm",  # implicit VR
    "MR_small_bigendian.dcm",  # big endian: frames must be byte-swapped
    "SC_rgb_expb_16bit_2frame.dcm",  # big endian colour, 2 frames
    "MR_small_RLE.dcm",  # RLE
    "SC_rgb_rle_2frame.dcm",  # RLE colour, 2 frames
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000, 10 frames
    "emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS, 10 frames
    "examples_ybr_color.dcm",  # JPEG baseline YBR_FULL_422, 30 frames
    "color3d_jpeg_baseline.dcm",  # JPEG baseline, 120 frames (ultrasound-like)
    "JPEG-LL.dcm",  # JPEG lossless SV1
    "JPGExtended.dcm",  # JPEG extended 12-bit
    "rtdose.dcm",  # implicit, 32-bit, 15 frames
    "image_dfl.dcm",  # deflated: frames decoded on request
    "liver.dcm",  # 1-bit, 3 frames: frames decoded on request
    "examples_palette.dcm",  # palette colour
    "gdcm-US-ALOKA-16.dcm",  # implicit VR, 16-bit palette whose LUTs are bulk data
]


@dataclass(frozen=True)
class Sample:
    name: str
    path: str
    raw: bytes
    study: str
    series: str
    sop: str
    tsuid: str
    frames: int

    def url(self, base: str) -> str:
        return f"{base}/studies/{self.study}/series/{self.series}/instances/{self.sop}"

    def dataset(self) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.raw))


def _renamed(raw: bytes, ds: Dataset, rng: random.Random) -> bytes:
    """``raw`` with new Study/Series/SOP Instance UIDs of the same lengths.

    pydicom's sample files share UIDs (MR_small*.dcm are one instance in
    several encodings), and other tests store them too: fresh UIDs keep each
    sample its own instance. Replacing bytes in place keeps everything else
    exactly as in the file.
    """
    for uid in sorted({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}, key=len, reverse=True):
        # Every digit after the "1.2." root is redrawn (dots stay in place), so
        # the new UID is unique however short its last component is.
        digits = [str(rng.randint(1, 9)) if i == 0 or uid[i - 1] == "." else str(rng.randint(0, 9))
                  for i in range(len(uid))]
        new = "".join(c if c == "." or i < 4 else digits[i] for i, c in enumerate(uid))
        raw = raw.replace(uid.encode(), new.encode())
    return raw


def load(name: str, rng: random.Random) -> Sample:
    path = dicomgen.sample_file(name)
    with open(path, "rb") as fp:
        raw = fp.read()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1.99":  # deflated: UIDs are not in clear
        full = pydicom.dcmread(path)
        full.StudyInstanceUID, full.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        full.SOPInstanceUID = full.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        out = io.BytesIO()
        full.save_as(out)
        raw = out.getvalue()
    else:
        raw = _renamed(raw, ds, rng)
    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    return Sample(name, path, raw, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                  str(ds.file_meta.TransferSyntaxUID), int(ds.get("NumberOfFrames", 1) or 1))


@pytest.fixture(scope="session", name="stored")
def stored_fixture(server) -> dict[str, Sample]:
    """Every sample stored, as received, on this server."""
    rng = random.Random()
    samples = {name: load(name, rng) for name in SAMPLES}
    response = stow(server.url, [s.raw for s in samples.values()])
    assert response.status_code == 200, response.text
    return samples


def pixel_frames(ds: Dataset) -> Iterator[np.ndarray]:
    """pydicom's own decoding, one frame at a time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        yield arr
    else:
        yield from arr


def decode_frame(original: Dataset, data: bytes, tsuid: str) -> np.ndarray:
    """Decode one served frame with pydicom, described by the original's pixel attributes."""
    ds = Dataset()
    for elem in original:
        if elem.tag.group == 0x0028 and elem.tag != 0x00280008:
            ds.add(elem)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(tsuid)
    ds.set_original_encoding(False, True)
    if tsuid in NATIVE:
        ds.PixelData = data
        ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    else:
        ds.PixelData = encapsulate([data])
        ds["PixelData"].VR = "OB"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def content_syntax(content_type: str) -> str:
    from dicomweb.mediatype import parse_media_type

    syntax = parse_media_type(content_type).param("transfer-syntax")
    assert syntax, content_type
    return syntax
