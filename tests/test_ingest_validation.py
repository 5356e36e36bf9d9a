"""Store-time validation: what cannot be served back is refused with a reason
and leaves nothing stored; every valid shape (e.g. a long RTSTRUCT sequence) is stored."""

from __future__ import annotations

import io
import struct

import pytest
import requests
from pydicom.uid import generate_uid

from dicomweb.dicom import analyze as az
from dicomweb.dicom.structure import MAX_DEPTH
from tests import badfiles, dicomgen
from tests.httpclient import failed, json_of, referenced, stow


def _analyze(data: bytes) -> az.InstanceInfo:
    return az.analyze(io.BytesIO(data), 0, len(data))


def _refused(data: bytes) -> az.InvalidInstance:
    with pytest.raises(az.InvalidInstance) as info:
        _analyze(data)
    return info.value


def _ct() -> bytes:
    return dicomgen.ct_instance(generate_uid(), generate_uid(), 1)


# -- element lengths and delimiters ------------------------------------------------


@pytest.mark.parametrize("cut", [10, 1000, 4000, 8191])
def test_pixel_data_cut_short_is_refused(cut: int) -> None:
    data = _ct()
    exc = _refused(data[:-cut])
    assert exc.failure == az.CANNOT_UNDERSTAND
    assert "longer than the data" in exc.reason
    assert exc.sop_uid  # the failure item names the instance


def test_a_pixel_length_promising_gigabytes_is_refused() -> None:
    exc = _refused(badfiles.with_pixel_length(_ct(), 0x7FFFFFF0))
    assert "longer than the data" in exc.reason


def test_a_header_element_longer_than_the_file_is_refused() -> None:
    data = _ct()
    at = data.find(b"\x10\x00\x10\x00PN")  # PatientName, short VR: 2-byte length
    broken = data[:at + 6] + struct.pack("<H", 0xFFF0) + data[at + 8:]
    broken = broken[:at + 300]
    assert "longer than" in _refused(broken).reason


def test_an_unclosed_sequence_is_refused() -> None:
    data = badfiles.nested(3)
    # undefined-length sequences: cut before the delimiters of the outer ones
    at = data.rfind(b"\xfe\xff\xdd\xe0")
    exc = _refused(data[:at - 16] + b"\x00" * 0)
    assert exc.failure == az.CANNOT_UNDERSTAND


def test_encapsulated_pixel_data_without_delimiter_is_refused() -> None:
    data = badfiles.jpeg_multiframe()
    assert data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    assert "not closed" in _refused(data[:-8]).reason


def test_trailing_elements_after_pixel_data_must_fit() -> None:
    data = _ct() + b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<L", 1000) + b"\x00" * 10
    assert "longer than" in _refused(data).reason


# -- transfer syntax -----------------------------------------------------------------


def test_an_unknown_transfer_syntax_is_refused() -> None:
    exc = _refused(badfiles.with_transfer_syntax(_ct(), "1.2.840.10008.9.9.9"))
    assert exc.failure == az.TRANSFER_SYNTAX_NOT_SUPPORTED
    assert "transfer syntax" in exc.reason


# -- pixel data size and layout ---------------------------------------------------------


def test_native_pixel_data_shorter_than_its_frames_is_refused() -> None:
    data = badfiles.modified(_ct(), NumberOfFrames=3)
    exc = _refused(data)
    assert "its frames need" in exc.reason


def test_native_pixel_data_with_a_pad_byte_is_stored() -> None:
    data = badfiles.modified(_ct(), Rows=63, Columns=65)  # 8190 bytes needed, 8192 held
    info = _analyze(data)
    assert info.frames and info.frames[0][0][1] == 63 * 65 * 2


def test_pixel_data_without_rows_is_refused() -> None:
    assert "Rows" in _refused(badfiles.modified(_ct(), Rows=None)).reason


def test_fewer_fragments_than_frames_is_refused() -> None:
    data = badfiles.modified(badfiles.jpeg_multiframe(3), NumberOfFrames=5)
    assert "fragments for 5 frames" in _refused(data).reason


def test_a_basic_offset_table_pointing_outside_is_refused() -> None:
    data = badfiles.jpeg_multiframe(3)
    start = badfiles.encapsulated_pixel_start(data)
    bot_value = start + 8
    broken = data[:bot_value + 8] + struct.pack("<L", 0x10000) + data[bot_value + 12:]
    assert "offset table" in _refused(broken).reason


def test_valid_multiframe_jpeg_maps_every_frame() -> None:
    for fragments in (1, 2):
        info = _analyze(badfiles.jpeg_multiframe(3, fragments))
        assert info.frames is not None and len(info.frames) == 3


# -- nesting and long sequences ------------------------------------------------------------


def test_nesting_up_to_the_limit_is_stored_and_deeper_is_refused() -> None:
    info = _analyze(badfiles.nested(MAX_DEPTH))
    assert "0040A043" in info.metadata
    exc = _refused(badfiles.nested(MAX_DEPTH + 1))
    assert f"deeper than {MAX_DEPTH}" in exc.reason
    exc = _refused(badfiles.nested(400))
    assert f"deeper than {MAX_DEPTH}" in exc.reason


def test_a_defined_length_sequence_over_64_kib_is_stored() -> None:
    data = badfiles.rtstruct_like()
    info = _analyze(data)
    items = info.metadata["30060039"]["Value"]
    assert len(items) > 4
    assert items[0]["30060084"]["Value"] == [0]


# -- the ingest path: one failure item per bad part, never an error for the request ---------


def test_an_unexpected_error_in_analysis_becomes_a_failure_item(monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomweb import ingest

    def boom(*_args: object) -> az.InstanceInfo:
        raise RecursionError("deep")

    monkeypatch.setattr(az, "analyze", boom)
    item = ingest.IngestItem("application/dicom", io.BytesIO(_ct()), 0, 10)
    result = ingest._analyze_one(item)
    assert getattr(result, "failure", None) == az.PROCESSING_FAILURE


def test_over_http_bad_parts_fail_and_good_parts_are_stored(url: str) -> None:
    study = generate_uid()
    good = [dicomgen.ct_instance(study, generate_uid(), n) for n in (1, 2)]
    bad = [
        badfiles.with_pixel_length(dicomgen.ct_instance(study, generate_uid(), 3), 0x7FFFFFF0),
        dicomgen.ct_instance(study, generate_uid(), 4)[:-500],
        badfiles.with_transfer_syntax(dicomgen.ct_instance(study, generate_uid(), 5), "1.2.840.10008.9.9.9"),
        badfiles.nested(400),
    ]
    rtstruct = badfiles.rtstruct_like()
    response = stow(url, [good[0], *bad, rtstruct, good[1]])
    assert response.status_code == 202, response.text
    body = json_of(response)
    codes = sorted(code for _uid, code in failed(body))
    assert codes == sorted([az.CANNOT_UNDERSTAND, az.CANNOT_UNDERSTAND, az.TRANSFER_SYNTAX_NOT_SUPPORTED,
                            az.CANNOT_UNDERSTAND])
    assert len(referenced(body)) == 3
    # every failure item says why, in a few words; the refused instances are absent
    reasons = sorted(item["00091001"]["Value"][0] for item in body["00081198"]["Value"])
    assert all(item["00090010"]["Value"] == ["DICOMWEB"] for item in body["00081198"]["Value"])
    assert any("deeper than" in r for r in reasons) and any("transfer syntax" in r for r in reasons)
    assert sum("longer than the data" in r for r in reasons) == 2
    found = requests.get(f"{url}/studies/{study}/instances", headers={"Accept": "application/dicom+json"})
    assert len(found.json()) == 2
    rt = badfiles.dataset(rtstruct)
    back = requests.get(f"{url}/studies/{rt.StudyInstanceUID}/series/{rt.SeriesInstanceUID}/instances/"
                        f"{rt.SOPInstanceUID}", headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert back.status_code == 200
    assert rtstruct in back.content


def test_every_accepted_sample_is_accepted_again_with_defined_length_sequences() -> None:
    """pydicom's and pydicom-data's files, re-written with every sequence and
    item of defined length (as many writers do), are still accepted."""
    import os
    import warnings

    from tests.test_fastparse import _sample_files

    rewritten = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in _sample_files():
            with open(path, "rb") as f:
                data = f.read()
            try:
                _analyze(data)
                again = badfiles.defined_length_sequences(data)
            except Exception:
                continue  # refused as received, or not writable by pydicom
            try:
                _analyze(again)
            except az.InvalidInstance as exc:
                raise AssertionError(f"{os.path.basename(path)}: {exc.reason}") from None
            rewritten += 1
    assert rewritten >= 150


def test_big_endian_ow_values_are_little_endian_in_inline_binary() -> None:
    """PS3.18 F.2.7: InlineBinary of OW/OL/OF/OD/OV is little endian."""
    import base64

    import pydicom

    ds = pydicom.dcmread(dicomgen.sample_file("MR_small_bigendian.dcm"))
    ds.add_new(0x00281201, "OW", struct.pack(">3H", 1, 2, 0x0304))  # written as given: big endian
    out = io.BytesIO()
    ds.save_as(out)
    info = _analyze(out.getvalue())
    assert base64.b64decode(info.metadata["00281201"]["InlineBinary"]) == struct.pack("<3H", 1, 2, 0x0304)
