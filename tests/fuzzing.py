"""Seeded mutations of valid Part 10 objects, for the store-time fuzz tests.

``FUZZ_ITERATIONS`` (environment) or ``--fuzz-iterations`` (pytest option)
sets how many mutants the in-process analysis fuzz tries (default small, for
CI); ``FUZZ_SEED`` picks another seed. A mutant that breaks the invariant is
written to ``tests/fuzz_cases/`` and replayed by every later run.
"""

from __future__ import annotations

import io
import os
import random
import struct
from collections.abc import Callable

import pydicom
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from tests import badfiles, dicomgen

CASES_DIR = os.path.join(os.path.dirname(__file__), "fuzz_cases")
SAMPLES = ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "emri_small.dcm", "MR_small.dcm",
           "SC_rgb_rle_2frame.dcm", "rtplan.dcm", "liver.dcm", "image_dfl.dcm", "CT_small.dcm", "MR_small_bigendian.dcm"]


def implicit_ct() -> bytes:
    ds = badfiles.dataset(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, size=16))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=True)
    return out.getvalue()


def seeds() -> list[bytes]:
    """Valid objects of several encodings: native, implicit, JPEG, JPEG 2000,
    RLE, multi-frame, nested and long sequences, odd lengths."""
    out = [dicomgen.ct_instance(generate_uid(), generate_uid(), 1, size=16), implicit_ct(),
           badfiles.jpeg_multiframe(3), badfiles.jpeg_multiframe(2, 2), badfiles.nested(6),
           badfiles.rtstruct_like(8 * 1024), badfiles.modified(dicomgen.ct_instance(
               generate_uid(), generate_uid(), 1, size=8), Rows=7, Columns=7, StudyDescription="odd")]
    for name in SAMPLES:
        try:
            with open(dicomgen.sample_file(name), "rb") as f:
                out.append(f.read())
        except FileNotFoundError:
            pass
    return out


def _element_starts(data: bytes) -> list[int]:
    """Likely element header positions (a group number seen at an even offset)."""
    found: list[int] = []
    for group in (b"\x08\x00", b"\x10\x00", b"\x20\x00", b"\x28\x00", b"\xe0\x7f", b"\xfe\xff", b"\x02\x00"):
        pos = data.find(group, 132)
        while 0 <= pos < len(data) and len(found) < 400:
            found.append(pos)
            pos = data.find(group, pos + 2)
    return found or [132]


def truncate(rng: random.Random, data: bytes, _other: bytes) -> bytes:
    return data[:rng.randrange(len(data))]


def flip_length(rng: random.Random, data: bytes, _other: bytes) -> bytes:
    pos = rng.choice(_element_starts(data))
    if rng.random() < 0.5:
        at, value = pos + 6, struct.pack("<H", rng.choice([0, 1, 0xFFFF, rng.randrange(0x10000)]))
    else:
        at, value = pos + 8, struct.pack("<L", rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 20)]))
    return data[:at] + value + data[at + len(value):]


def swap_tag(rng: random.Random, data: bytes, _other: bytes) -> bytes:
    starts = _element_starts(data)
    a, b = rng.choice(starts), rng.choice(starts)
    return data[:a] + data[b:b + 4] + data[a + 4:]


def swap_vr(rng: random.Random, data: bytes, _other: bytes) -> bytes:
    pos = rng.choice(_element_starts(data)) + 4
    vr = rng.choice([b"SQ", b"OB", b"UN", b"US", b"UI", b"ZZ", b"\x00\x00", b"UT", b"OW"])
    return data[:pos] + vr + data[pos + 2:]


def corrupt_meta(rng: random.Random, data: bytes, _other: bytes) -> bytes:
    pos = rng.randrange(128, min(len(data), 340))
    return data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1:]


def splice(rng: random.Random, data: bytes, other: bytes) -> bytes:
    return data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):]


def flip_bytes(rng: random.Random, data: bytes, _other: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(132, len(out))] = rng.randrange(256)
    return bytes(out)


MUTATIONS: list[Callable[[random.Random, bytes, bytes], bytes]] = [
    truncate, flip_length, swap_tag, swap_vr, corrupt_meta, splice, flip_bytes]


def mutate(rng: random.Random, pool: list[bytes]) -> bytes:
    data = rng.choice(pool)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = rng.choice(MUTATIONS)(rng, data, rng.choice(pool))
        if len(data) < 140:
            break
    return data


def fresh_uids(data: bytes) -> bytes:
    """``data`` with new study/series/instance UIDs (for HTTP round trips)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def iterations(default: int) -> int:
    return int(os.environ.get("FUZZ_ITERATIONS", default))


def seed() -> int:
    return int(os.environ.get("FUZZ_SEED", "1729"))


def keep(data: bytes, label: str) -> str:
    """Write a failing input as a regression case; returns its path."""
    import hashlib

    os.makedirs(CASES_DIR, exist_ok=True)
    path = os.path.join(CASES_DIR, f"{label}-{hashlib.sha1(data).hexdigest()[:12]}.dcm")
    with open(path, "wb") as f:
        f.write(data)
    return path
