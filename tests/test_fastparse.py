"""The fast header path gives exactly what the pydicom path gives, or declines.

Every sample file (pydicom's, pydicom-data's, deid-data's if installed), the
generated studies, and crafted elements with awkward values go through both
paths of ``analyze``; the results must be equal field by field, JSON bytes
included (key order matters: it is what the metadata answers contain).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from typing import Any

import pytest
from pydicom.uid import generate_uid

from dicomweb.dicom import analyze as az
from dicomweb.dicom.dicomjson import dumps
from tests import dicomgen

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def _outcome(call: Any) -> Any:
    try:
        info = call()
    except az.InvalidInstance as exc:
        return ("invalid", exc.reason, exc.failure, exc.sop_class_uid, exc.sop_uid)
    if info is None:
        return None
    return (dumps(info.metadata), info.bulk, info.frames, info.warnings, info.study_uid, info.series_uid,
            info.sop_uid, info.sop_class_uid, info.transfer_syntax_uid, info.size, info.encapsulated,
            dumps(info.study), dumps(info.series), dumps(info.instance))


def both(data: bytes, lead: bytes = b"--\r\n") -> tuple[Any, Any]:
    """(pydicom result, fast result or None) for ``data`` inside a larger body."""
    body = io.BytesIO(lead + data + b"\r\n--")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slow = _outcome(lambda: az.analyze_pydicom(body, len(lead), len(data)))
        except Exception as exc:  # compared with the fast result, not hidden
            slow = ("error", type(exc).__name__)
        fast = _outcome(lambda: az.analyze_fast(body, len(lead), len(data)))
    return slow, fast


def _sample_files() -> list[str]:
    from pydicom.data import get_testdata_files

    files = {f for f in get_testdata_files() if os.path.isfile(f)}
    files.update(dicomgen.sample_files("*"))
    try:
        import deid_data

        root = os.path.dirname(deid_data.__file__)
        for folder, _dirs, names in os.walk(root):
            files.update(os.path.join(folder, n) for n in names if n.endswith(".dcm"))
    except ImportError:
        pass
    return sorted(f for f in files if os.path.isfile(f) and os.path.getsize(f) < 64 << 20)


def test_sample_files_are_identical_or_declined() -> None:
    handled = 0
    diffs = []
    for path in _sample_files():
        with open(path, "rb") as f:
            data = f.read()
        slow, fast = both(data)
        if fast is None:
            continue
        handled += 1
        if fast != slow:
            diffs.append(os.path.basename(path))
    assert not diffs
    assert handled >= 150  # the fast path is not vacuous


def test_generated_studies_take_the_fast_path() -> None:
    study = generate_uid()
    for data in [*dicomgen.ct_series(5, study_uid=study, size=64),
                 dicomgen.ct_instance(study, generate_uid(), 1, patient_name="Müller^Jürgen=山田^太郎=やまだ^たろう")]:
        slow, fast = both(data)
        assert fast is not None
        assert fast == slow


def test_file_mapped_body_gives_the_same() -> None:
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1)
    import tempfile

    with tempfile.TemporaryFile() as body:
        body.write(b"x" * 100 + data + b"y" * 10)
        body.flush()
        fast = _outcome(lambda: az.analyze_fast(body, 100, len(data)))
        slow = _outcome(lambda: az.analyze_pydicom(body, 100, len(data)))
    assert fast is not None and fast == slow


# -- crafted elements ------------------------------------------------------------

_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def el(tag: int, vr: str, value: bytes, explicit: bool = True, undefined: bool = False) -> bytes:
    if len(value) % 2 and not undefined:
        value += b" " if vr not in ("OB", "UI", "UN") else b"\0"
    length = 0xFFFFFFFF if undefined else len(value)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head + struct.pack("<L", length) + value
    if vr in _LONG:
        return head + vr.encode() + b"\0\0" + struct.pack("<L", length) + value
    return head + vr.encode() + struct.pack("<H", length) + value


def item(content: bytes, undefined: bool = False) -> bytes:
    if undefined:
        return struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + content + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(content)) + content


SEQ_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def part10(elements: list[tuple[int, str, bytes]], ts: str = EXPLICIT, raw: bytes = b"",
           charset: bytes | None = None) -> bytes:
    explicit = ts != IMPLICIT
    meta = el(0x00020001, "OB", b"\0\1") + el(0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.7\0") + \
        el(0x00020003, "UI", b"1.2.3.4\0") + el(0x00020010, "UI", ts.encode() + (b"\0" if len(ts) % 2 else b""))
    meta = el(0x00020000, "UL", struct.pack("<L", len(meta))) + meta
    ident = [(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\0"), (0x00080018, "UI", b"1.2.3.4\0"),
             (0x0020000D, "UI", b"1.2.3\0"), (0x0020000E, "UI", b"1.2.3.5\0")]
    if charset is not None:
        ident.append((0x00080005, "CS", charset))
    items = sorted(ident + elements, key=lambda e: e[0])
    body = b"".join(el(t, vr, v, explicit) for t, vr, v in items)
    return b"\0" * 128 + b"DICM" + meta + body + raw


VALUES: list[tuple[int, str, bytes]] = [
    (0x00080060, "CS", b"CT"), (0x00080060, "CS", b" CT \\MR "), (0x00080060, "CS", b""),
    (0x00080060, "CS", b"  "), (0x00080060, "CS", b"A\\\\B\0"), (0x00080060, "CS", b"\\"),
    (0x00080020, "DA", b"20240102"), (0x00080020, "DA", b"2024\\ "), (0x00080030, "TM", b"101500.123 "),
    (0x0008002A, "DT", b"20240102101500"), (0x00101010, "AS", b"045Y"),
    (0x00080054, "AE", b" AE1 \\ AE2"), (0x00080054, "AE", b"   "),
    (0x00081150, "UI", b"1.2.3\0"), (0x00081150, "UI", b"1.2\\1.3 "), (0x00081150, "UI", b"\0"),
    (0x00201041, "DS", b"-3.0"), (0x00200032, "DS", b" 1 \\ -2.5e3\\.5 "), (0x00201041, "DS", b"  "),
    (0x00201041, "DS", b"1,5"), (0x00201041, "DS", b"nan"), (0x00201041, "DS", b"1e999"),
    (0x00200032, "DS", b"1\\\\2"), (0x00201041, "DS", b"+1."),
    (0x00200013, "IS", b"12"), (0x00200013, "IS", b" -7 "), (0x00200013, "IS", b"1\\2\\3"),
    (0x00200013, "IS", b"1.0"), (0x00200013, "IS", b"1\\\\3"), (0x00200013, "IS", b" "),
    (0x00081030, "LO", b"Study \\ two\0"), (0x00081030, "LO", b"  "), (0x00081030, "LO", b"a\\"),
    (0x00081030, "LO", "Hôpital".encode("latin-1")), (0x00081030, "LO", b"bad \xff\xfe utf8"),
    (0x00081030, "LO", b"\x1b$B"), (0x00200010, "SH", b" 12 "),
    (0x00204000, "LT", b"line\\with backslash \r\n "), (0x00081030, "UC", b"x\\y"),
    (0x00180015, "ST", b""), (0x00081190, "UR", b"http://x/y  "),
    (0x00100010, "PN", b"Doe^John"), (0x00100010, "PN", b"Doe^John==\0"), (0x00100010, "PN", b"=Yamada"),
    (0x00100010, "PN", b"A^B=C^D=E^F=G"), (0x00100010, "PN", b"="), (0x00100010, "PN", b"  "),
    (0x00101001, "PN", b"A\\B=C"), (0x00101001, "PN", b"A\\"), (0x00101001, "PN", b"A^B \\C"),
    (0x00280010, "US", struct.pack("<H", 512)), (0x00280010, "US", struct.pack("<2H", 1, 2)),
    (0x00280010, "US", b"\1\2\3"), (0x00281052, "SS", struct.pack("<h", -5)),
    (0x00181063, "FL", struct.pack("<f", 0.1)), (0x00181063, "FD", struct.pack("<2d", 1.5, -2.25)),
    (0x00181063, "FD", struct.pack("<d", float("nan"))), (0x00200020, "UL", struct.pack("<L", 70000)),
    (0x00200020, "SL", struct.pack("<l", -70000)), (0x00200020, "SV", struct.pack("<q", -(1 << 40))),
    (0x00200020, "UV", struct.pack("<Q", 1 << 63)),
    (0x00209165, "AT", struct.pack("<HH", 0x0020, 0x9056)), (0x00209165, "AT", struct.pack("<4H", 0x0010, 0x0010, 0x0028, 0x0010)),
    (0x00189219, "OB", b"\1\2\3"), (0x00189219, "OB", b""), (0x00189219, "OB", b"\7" * 1025),
    (0x00189219, "OW", b"\7\0" * 600), (0x00189219, "UN", b"\1\2"), (0x00189219, "UN", b"\1" * 2000),
    (0x00291010, "OB", b"\1" * 100), (0x00290010, "LO", b"SIEMENS CSA HEADER"),
    (0x00283002, "US", struct.pack("<3H", 256, 0, 16)), (0x00283002, "SS", struct.pack("<3h", -256, 0, 16)),
    (0x00281101, "SS", struct.pack("<3h", 256, 0, 16)),
    (0x00280008, "IS", b"2"), (0x00280008, "IS", b"1\\2"), (0x00280004, "CS", b"YBR_FULL_422"),
    (0x00080016, "UI", b"1.2\\1.3"), (0x00080016, "LO", b"1.2.840.10008.5.1.4.1.1.7"),
    (0x00080018, "UI", b""), (0x0020000D, "UI", b"1.2.x"),
    (0x00091001, "XX", b"ab"),
]


@pytest.mark.parametrize("ts", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize("charset", [None, b"ISO_IR 100", b"ISO_IR 192", b"", b"ISO_IR 144", b"ISO 2022 IR 6\\ISO 2022 IR 87"])
def test_crafted_values(ts: str, charset: bytes | None) -> None:
    handled = 0
    for case in VALUES:
        if ts == IMPLICIT and case[1] == "XX":
            continue
        elements = [e for e in [case] if e[0] not in (0x00080016, 0x00080018, 0x0020000D)]
        data = part10(elements, ts, charset=charset)
        if case[0] in (0x00080016, 0x00080018, 0x0020000D):
            data = part10([], ts, charset=charset).replace(el(case[0], "UI", {
                0x00080016: b"1.2.840.10008.5.1.4.1.1.7\0", 0x00080018: b"1.2.3.4\0", 0x0020000D: b"1.2.3\0"}[case[0]],
                ts != IMPLICIT), el(case[0], case[1], case[2], ts != IMPLICIT))
        slow, fast = both(data)
        if fast is not None:
            handled += 1
            assert fast == slow, case
    if charset in (None, b"", b"ISO_IR 100", b"ISO_IR 192"):
        assert handled > len(VALUES) // 2
    else:
        assert handled == 0  # other character sets are left to pydicom


def _sq(explicit: bool, undefined_seq: bool, undefined_items: bool, inner: bytes) -> bytes:
    items = item(inner, undefined_items) + item(b"", undefined_items) + item(inner, undefined_items)
    value = items + (SEQ_END if undefined_seq else b"")
    return el(0x00081140, "SQ", value, explicit, undefined=undefined_seq)


@pytest.mark.parametrize("ts", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize("undefined_seq", [False, True])
@pytest.mark.parametrize("undefined_items", [False, True])
def test_sequences(ts: str, undefined_seq: bool, undefined_items: bool) -> None:
    explicit = ts != IMPLICIT
    nested = el(0x00081155, "UI", b"1.2.9\0", explicit) + el(0x00189219, "OB", b"\5" * 2000, explicit) + \
        _sq(explicit, not undefined_seq, undefined_items, el(0x00081150, "UI", b"1.2\0", explicit))
    seq = _sq(explicit, undefined_seq, undefined_items, nested)
    pixels = el(0x7FE00010, "OW", b"\1\0" * 32, explicit)
    data = part10([(0x00280010, "US", struct.pack("<H", 4)), (0x00280011, "US", struct.pack("<H", 8)),
                   (0x00280100, "US", struct.pack("<H", 16))], ts, raw=b"")
    # The sequence (0008,1140) sorts before the image attributes: splice it in.
    marker = el(0x0020000D, "UI", b"1.2.3\0", explicit)
    data = data.replace(marker, seq + marker) + pixels
    slow, fast = both(data)
    assert fast is not None
    assert fast == slow
    bulk = dict(fast[1])
    start = len(b"--\r\n")
    body = b"--\r\n" + data
    for _where, (offset, length) in bulk.items():
        assert length in (2000, 64)
        assert body[start + offset:start + offset + length] in (b"\5" * 2000, b"\1\0" * 32)


def test_trailing_and_odd_endings() -> None:
    base = part10([(0x00280010, "US", struct.pack("<H", 4))])
    for data in (base, base + b"\0\0\0", base + el(0x7FE00010, "OB", b"\1" * 4)[:6],
                 base + el(0x7FE00010, "OB", b"\1" * 4) + el(0xFFFCFFFC, "OB", b"\0" * 8)):
        slow, fast = both(data)
        assert fast is None or fast == slow
    for data in (base[:200], base[:-3], b"\0" * 132, b"not dicom at all" * 20):
        slow, fast = both(data)
        assert fast is None or fast == slow
