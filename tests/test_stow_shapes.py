"""Every STOW body shape: one instance as the whole body, metadata + bulk data
(PS3.18 10.5.1.2.2), and the multipart framings real clients send."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from dicomweb.dicom import analyze as az
from dicomweb.dicom.dicomxml import to_xml
from tests import badfiles, dicomgen
from tests.httpclient import failed, json_of, referenced, split_multipart

ACCEPT = {"Accept": "application/dicom+json"}
PIXEL = "7FE00010"


def _post(url: str, body: bytes, content_type: str, path: str = "/studies") -> requests.Response:
    return requests.post(url + path, data=body, headers={"Content-Type": content_type, **ACCEPT}, timeout=60)


def _instance_url(url: str, data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _retrieve(url: str, data: bytes) -> bytes:
    response = requests.get(_instance_url(url, data),
                            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert response.status_code == 200, response.text
    (_, body), = split_multipart(response)
    return body


def _frame(url: str, data: bytes, number: int = 1) -> bytes:
    response = requests.get(f"{_instance_url(url, data)}/frames/{number}",
                            headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert response.status_code == 200, response.text
    (_, body), = split_multipart(response)
    return body


# -- application/dicom: the whole body is one instance ------------------------------


def test_a_single_instance_body_is_stored_and_served_back(url: str) -> None:
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    response = _post(url, data, "application/dicom")
    assert response.status_code == 200, response.text
    assert len(referenced(json_of(response))) == 1
    assert _retrieve(url, data) == data


def test_a_single_instance_body_to_another_study_fails_with_a_reason(url: str) -> None:
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    response = _post(url, data, "application/dicom", f"/studies/{generate_uid()}")
    assert response.status_code == 409
    assert failed(json_of(response))[0][1] == az.DATASET_DOES_NOT_MATCH


def test_a_damaged_single_instance_body_fails_with_a_reason(url: str) -> None:
    response = _post(url, dicomgen.ct_instance(generate_uid(), generate_uid(), 1)[:-100], "application/dicom")
    assert response.status_code == 409
    item = json_of(response)["00081198"]["Value"][0]
    assert "longer than" in item["00091001"]["Value"][0]


# -- metadata + bulk data --------------------------------------------------------------


def _json_body(metadata: list[dict[str, Any]], bulk: list[tuple[str, str, bytes]],
               boundary: str | None = None) -> tuple[bytes, str]:
    boundary = boundary or uuid.uuid4().hex
    out = io.BytesIO()
    out.write(f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n".encode())
    out.write(json.dumps(metadata).encode())
    for location, ctype, data in bulk:
        out.write(f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Location: {location}\r\n\r\n".encode())
        out.write(data)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f'multipart/related; type="application/dicom+json"; boundary={boundary}'


def _xml_body(metadata: list[dict[str, Any]], bulk: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """The same body with each data set as a PS3.19 XML part of its own."""
    boundary = uuid.uuid4().hex
    parts = [(b"application/dicom+xml", b"", to_xml(meta)) for meta in metadata]
    parts += [(ctype.encode(), f"Content-Location: {location}\r\n".encode(), data) for location, ctype, data in bulk]
    out = b"".join((b"\r\n" if i else b"") + f"--{boundary}\r\n".encode() + b"Content-Type: " + ctype + b"\r\n"
                   + extra + b"\r\n" + data for i, (ctype, extra, data) in enumerate(parts))
    return out + f"\r\n--{boundary}--\r\n".encode(), \
        f'multipart/related; type="application/dicom+xml"; boundary={boundary}'


def _metadata(data: bytes, base: str) -> tuple[dict[str, Any], bytes]:
    """DICOM JSON of ``data`` with its Pixel Data as a BulkDataURI, and the pixel bytes."""
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = ds.PixelData
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        from pydicom.encaps import generate_frames

        pixels = next(generate_frames(ds.PixelData, number_of_frames=1))
    meta = ds.to_json_dict(bulk_data_threshold=1 << 30)
    meta[PIXEL] = {"vr": "OB" if ds.file_meta.TransferSyntaxUID.is_compressed else "OW",
                   "BulkDataURI": f"{base}/bulk/{ds.SOPInstanceUID}/pixels"}
    return meta, pixels


def test_metadata_and_native_pixel_data_parts_build_a_stored_instance(url: str) -> None:
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    meta, pixels = _metadata(data, "http://client.example")
    body, ctype = _json_body([meta], [(meta[PIXEL]["BulkDataURI"], "application/octet-stream", pixels)])
    response = _post(url, body, ctype)
    assert response.status_code == 200, response.text
    stored = pydicom.dcmread(io.BytesIO(_retrieve(url, data)))
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert stored.PixelData == pixels
    assert stored.PatientName == "Doe^Jane"
    assert _frame(url, data) == pixels


def test_compressed_pixel_data_part_keeps_its_transfer_syntax(url: str) -> None:
    source = open(dicomgen.sample_file("SC_rgb_jpeg_dcmtk.dcm"), "rb").read()
    ds = pydicom.dcmread(io.BytesIO(source))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    data = badfiles.save(ds)
    meta, frame = _metadata(data, "urn:x")
    part_type = f"application/octet-stream; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
    body, ctype = _json_body([meta], [(meta[PIXEL]["BulkDataURI"], part_type, frame)])
    response = _post(url, body, ctype)
    assert response.status_code == 200, response.text
    stored = pydicom.dcmread(io.BytesIO(_retrieve(url, data)))
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert _frame(url, data) == frame


def test_metadata_only_instances_are_stored(url: str) -> None:
    study = generate_uid()
    sr = {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.11"]},
          "00080018": {"vr": "UI", "Value": [generate_uid()]},
          "0020000D": {"vr": "UI", "Value": [study]},
          "0020000E": {"vr": "UI", "Value": [generate_uid()]},
          "00080060": {"vr": "CS", "Value": ["SR"]},
          "0040A040": {"vr": "CS", "Value": ["CONTAINER"]}}
    body, ctype = _json_body([sr], [])
    response = _post(url, body, ctype)
    assert response.status_code == 200, response.text
    found = requests.get(f"{url}/studies/{study}/instances", headers=ACCEPT).json()
    assert [i["00080018"]["Value"][0] for i in found] == sr["00080018"]["Value"]


def test_bad_combinations_fail_the_instance_with_a_reason(url: str) -> None:
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    meta, _pixels = _metadata(data, "urn:a")
    good = dicomgen.ct_instance(generate_uid(), generate_uid(), 2)
    good_meta, good_pixels = _metadata(good, "urn:b")
    conflicting = dict(good_meta)
    conflicting["00080018"] = {"vr": "UI", "Value": [generate_uid()]}
    conflicting["00020010"] = {"vr": "UI", "Value": ["1.2.840.10008.1.2.4.50"]}
    body, ctype = _json_body([meta, good_meta, conflicting], [
        (good_meta[PIXEL]["BulkDataURI"], "application/octet-stream", good_pixels),
        ("urn:nobody", "application/octet-stream", b"\0" * 10),
    ])
    response = _post(url, body, ctype)
    assert response.status_code == 202, response.text
    result = json_of(response)
    reasons = sorted(i["00091001"]["Value"][0] for i in result["00081198"]["Value"])
    assert any("no part answers the BulkDataURI" in r for r in reasons)
    assert any("no instance references" in r for r in reasons)
    assert any("conflicts" in r for r in reasons)
    assert len(referenced(result)) == 1


# -- multipart framing ------------------------------------------------------------------


@pytest.mark.parametrize("boundary_len", [73, 200])
def test_boundaries_longer_than_70_characters_are_read(url: str, boundary_len: int) -> None:
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    boundary = ("x" * boundary_len)
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    response = _post(url, body, f'multipart/related; type="application/dicom"; boundary="{boundary}"')
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("ctype", [
    'multipart/related; type="application/dicom"; boundary="{b}"',
    "multipart/related; type=application/dicom; boundary={b}",
    'Multipart/Related; boundary={b}; type="application/dicom"',
])
def test_quoted_and_unquoted_parameters_and_no_crlf_after_close(url: str, ctype: str) -> None:
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    b = uuid.uuid4().hex
    body = f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{b}--".encode()
    response = _post(url, body, ctype.format(b=b))
    assert response.status_code == 200, response.text
    assert _retrieve(url, data) == data


def _with_private_text(data: bytes, text: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.add_new(0x00091010, "LO", "dicomweb tests")
    ds.add_new(0x00091011, "OB", text)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_chunked_parts_with_their_own_content_length_are_read_by_it(url: str) -> None:
    """A part's Content-Length frames it exactly: the boundary appearing inside
    the instance's bytes does not cut it short (without the header it would)."""
    b = uuid.uuid4().hex
    study = generate_uid()
    data = [_with_private_text(dicomgen.ct_instance(study, generate_uid(), n), f"x\r\n--{b}\r\nx".encode())
            for n in (1, 2)]
    body = b"".join((b"\r\n" if i else b"") + f"--{b}\r\nContent-Type: application/dicom\r\n".encode()
                    + f"Content-Length: {len(d)}\r\n\r\n".encode() + d for i, d in enumerate(data))
    body += f"\r\n--{b}--\r\n".encode()

    def chunks() -> Any:  # requests sends a generator with Transfer-Encoding: chunked
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]
    response = requests.post(url + "/studies", data=chunks(), timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={b}', **ACCEPT})
    assert response.status_code == 200, response.text
    assert len(referenced(json_of(response))) == 2
    assert [_retrieve(url, d) for d in data] == data


def test_a_part_content_length_that_contradicts_the_body_is_a_clear_400(url: str) -> None:
    b = uuid.uuid4().hex
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    body = (f"--{b}\r\nContent-Type: application/dicom\r\nContent-Length: {len(data) - 1}\r\n\r\n".encode()
            + data + f"\r\n--{b}--\r\n".encode())
    response = _post(url, body, f'multipart/related; type="application/dicom"; boundary={b}')
    assert response.status_code == 400
    assert "Content-Length" in response.text


def test_xml_metadata_and_bulk_data_parts_build_the_same_instance(url: str) -> None:
    """PS3.18 10.5.1.2.2 with application/dicom+xml: every attribute, sequences,
    person names and numbers included, comes back as it was."""
    source = open(dicomgen.sample_file("CT_small.dcm"), "rb").read()
    ds = pydicom.dcmread(io.BytesIO(source))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.add_new(0x00081115, "SQ", [pydicom.Dataset()])
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
    data = badfiles.save(ds)
    meta, pixels = _metadata(data, "urn:xml")
    body, ctype = _xml_body([meta], [(meta[PIXEL]["BulkDataURI"], "application/octet-stream", pixels)])
    response = _post(url, body, ctype)
    assert response.status_code == 200, response.text
    stored = pydicom.dcmread(io.BytesIO(_retrieve(url, data)))
    for element in ds:
        assert stored[element.tag].value == element.value, element.keyword
    assert _frame(url, data) == pixels


@pytest.mark.parametrize(("xml", "reason"), [
    (b"<NativeDicomModel><DicomAttribute", "not well-formed"),
    (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><NativeDicomModel>&a;</NativeDicomModel>',
     "declares entities"),
    (b"<Other/>", "not a NativeDicomModel"),
    (b'<NativeDicomModel><DicomAttribute tag="0008001" vr="UI"/></NativeDicomModel>', "no valid tag"),
    (b'<NativeDicomModel><DicomAttribute tag="00280010" vr="US"><Value number="1">x</Value>'
     b"</DicomAttribute></NativeDicomModel>", "not a number"),
])
def test_bad_xml_metadata_fails_with_a_reason_and_spares_the_others(url: str, xml: bytes, reason: str) -> None:
    good = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    meta, pixels = _metadata(good, "urn:good")
    body, ctype = _xml_body([meta], [(meta[PIXEL]["BulkDataURI"], "application/octet-stream", pixels)])
    boundary = ctype.rpartition("=")[2]
    bad_part = f"--{boundary}\r\nContent-Type: application/dicom+xml\r\n\r\n".encode() + xml + b"\r\n"
    response = _post(url, bad_part + body, ctype)
    assert response.status_code == 202, response.text
    result = json_of(response)
    assert len(referenced(result)) == 1
    (failure,) = result["00081198"]["Value"]
    assert reason in failure["00091001"]["Value"][0]
