"""Crafted Part 10 objects, valid and damaged, for the store-time validation tests."""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

from tests import dicomgen

PIXEL_HEADER = b"\xe0\x7f\x10\x00OB\x00\x00"
PIXEL_HEADER_OW = b"\xe0\x7f\x10\x00OW\x00\x00"


def ct(**changes: object) -> bytes:
    return modified(dicomgen.ct_instance(generate_uid(), generate_uid(), 1), **changes)


def modified(data: bytes, **changes: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return save(ds)


def save(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def pixel_length_at(data: bytes) -> int:
    """Offset of the 4-byte length of the (explicit VR LE) Pixel Data element."""
    pos = data.rfind(PIXEL_HEADER_OW)
    if pos < 0:
        pos = data.rfind(PIXEL_HEADER)
    assert pos > 0
    return pos + 8


def with_pixel_length(data: bytes, length: int) -> bytes:
    at = pixel_length_at(data)
    return data[:at] + struct.pack("<L", length) + data[at + 4:]


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """Same bytes with the file meta's Transfer Syntax UID replaced (same length)."""
    old = b"1.2.840.10008.1.2.1\x00"
    assert old in data[:400]
    new = uid.encode().ljust(len(old), b"\x00")
    assert len(new) == len(old)
    return data.replace(old, new, 1)


def nested(depth: int) -> bytes:
    """A CT instance with sequences of undefined length nested ``depth`` levels
    deep (encoded by hand: pydicom's writer recurses too deep for hundreds)."""
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, size=8)
    sq = b"SQ\x00\x00\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    code = b"\x08\x00\x00\x01SH\x02\x00X "  # CodeValue
    inner = b"\x40\x00\x68\xa1" + sq  # ConceptCodeSequence
    close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    value = b"\x40\x00\x43\xa0" + sq + (item + inner) * (depth - 1) + item + code + close * depth
    at = data.rfind(PIXEL_HEADER_OW)
    return data[:at] + value + data[at:]


def rtstruct_like(size: int = 80 * 1024) -> bytes:
    """An RT Structure Set-like object whose top-level sequence has a defined
    length over 64 KiB (how many writers encode RTSTRUCT contours)."""
    ds = dataset(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, size=8))
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.481.3")
    ds.Modality = "RTSTRUCT"
    items = []
    per_item = 2000
    for n in range(size // (per_item * 8) + 1):
        contour = Dataset()
        contour.ReferencedROINumber = n
        contour.ContourData = [float(i) for i in range(per_item // 2)]  # ~8 bytes each as DS text
        items.append(contour)
    ds.ROIContourSequence = Sequence(items)
    raw = save(ds)
    return defined_length_sequences(raw)


def defined_length_sequences(data: bytes) -> bytes:
    """``data`` re-encoded with every sequence and item of defined length."""
    ds = dataset(data)

    def mark(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                elem.is_undefined_length = False
                for item in elem.value:
                    item.is_undefined_length_sequence_item = False
                    mark(item)

    mark(ds)
    from pydicom.filewriter import dcmwrite

    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    blob = out.getvalue()
    return blob


def jpeg_multiframe(frames: int = 3, fragments_per_frame: int = 1, bot: bool = True) -> bytes:
    """A multi-frame object in JPEG Baseline with tiny fake frames (SOI ... EOI)."""
    ds = dataset(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, size=8))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes([n]) * 30 + b"\xff\xd9" for n in range(frames)],
                               fragments_per_frame, has_bot=bot)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return save(ds)


def encapsulated_pixel_start(data: bytes) -> int:
    """Offset of the first item tag inside undefined-length Pixel Data."""
    pos = data.rfind(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    assert pos > 0
    return pos + 12
