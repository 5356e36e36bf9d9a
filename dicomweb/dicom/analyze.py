"""Everything about one instance that retrieval needs, computed once at STOW.

``analyze`` reads a Part 10 object's header with pydicom (never its pixel
data) and returns an :class:`InstanceInfo`: the identifying UIDs, the
instance's DICOM JSON metadata (bulk values as BulkDataURIs), the attributes
of each QIDO level, and the byte ranges of every frame and bulk value inside
the file, so that WADO can serve them by offset without parsing again.

Most objects take the fast path (:mod:`fastparse`: the raw header bytes walked
once, no pydicom objects); what it does not handle exactly like pydicom goes
through pydicom. Both give the same result (``tests/test_fastparse.py``).
"""

from __future__ import annotations

import base64
import io
import logging
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

import pydicom
from pydicom._uid_dict import UID_dictionary  # PS3.6 Table A-1, as pydicom ships it
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import PrivateTransferSyntaxes

from ..io.files import FileWindow, read_at
from . import fastparse, levels, structure
from .dicomjson import dumps
from .uids import clean_uid, is_valid_uid

log = logging.getLogger(__name__)

#: Binary VRs whose values become BulkDataURIs when larger than the threshold.
BINARY_VRS = fastparse.BINARY_VRS
BULK_THRESHOLD = fastparse.BULK_THRESHOLD
#: Values above this are not read into memory while parsing the header.
DEFER_SIZE = fastparse.DEFER_SIZE
PIXEL_TAGS = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}

# STOW failure reasons (PS3.18 Table 10.5.3-2 / PS3.4 Annex B).
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

DEFLATED = "1.2.840.10008.1.2.1.99"
_ITEM = 0xFFFEE000
_SEQ_DELIM = 0xFFFEE0DD
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}

#: Reads (offset, length) of the object: short at its end, like a file.
Reader = Callable[[int, int], bytes]
#: ``ds.get(keyword, default)`` of the top-level data set.
Getter = Callable[[str, Any], Any]


class InvalidInstance(ValueError):
    """The object cannot be stored; ``failure`` is the DICOM failure reason."""

    def __init__(self, reason: str, failure: int = CANNOT_UNDERSTAND, sop_class_uid: str = "", sop_uid: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure = failure
        self.sop_class_uid = sop_class_uid
        self.sop_uid = sop_uid


Range = tuple[int, int]  # (offset, length) inside the stored file


@dataclass
class InstanceInfo:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    #: DICOM JSON of the whole instance; BulkDataURI values are relative to the
    #: service root ("studies/.../bulk/7FE00010") and made absolute on output.
    metadata: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    #: Per frame, the (offset, length) of each of its fragments (native: one).
    #: None when frames cannot be addressed by byte range (deflated, 1-bit).
    frames: list[list[Range]] | None
    #: Bulk value path ("7FE00010", "00540016/0/00181072") -> range.
    bulk: dict[str, Range] = field(default_factory=dict)
    encapsulated: bool = False
    warnings: list[str] = field(default_factory=list)

    def metadata_bytes(self) -> bytes:
        return dumps(self.metadata)


def _uid(get: Getter, keyword: str, required: bool = True) -> str:
    value = get(keyword, None)
    text = clean_uid(str(value)) if value is not None else ""
    if required and not text:
        raise InvalidInstance(f"{keyword} is missing")
    if text and not is_valid_uid(text):
        raise InvalidInstance(f"{keyword} is not a valid UID")
    return text


def analyze(fp: IO[bytes], offset: int = 0, length: int | None = None) -> InstanceInfo:
    """Analyse the Part 10 object at ``offset`` (``length`` bytes) of ``fp``."""
    if length is None:
        fp.seek(0, io.SEEK_END)
        length = fp.tell() - offset
    info = analyze_fast(fp, offset, length)
    if info is not None:
        return info
    return analyze_pydicom(fp, offset, length)


def analyze_pydicom(fp: IO[bytes], offset: int, length: int) -> InstanceInfo:
    """The pydicom path: any encoding pydicom reads, once its structure is
    checked (pydicom reads a broken one as far as it goes)."""

    def read_raw(pos: int, size: int) -> bytes:
        size = min(size, length - pos)
        return read_at(fp, offset + pos, size) if size > 0 and pos >= 0 else b""

    window = io.BufferedReader(FileWindow(fp, offset, length), 64 * 1024)
    try:
        tsuid = structure.check_part10(read_raw, length)
    except structure.Malformed as exc:
        raise InvalidInstance(exc.reason, CANNOT_UNDERSTAND, *_uids_of_broken(window)) from None
    _check_transfer_syntax(tsuid)
    try:
        ds = pydicom.dcmread(window, defer_size=DEFER_SIZE, stop_before_pixels=True)
        pixel_pos = window.tell()
    except InvalidDicomError:
        raise InvalidInstance("not a DICOM Part 10 object (no DICM prefix)") from None
    except Exception as exc:  # pydicom raises many types on damaged input
        raise InvalidInstance(f"cannot parse the DICOM header ({type(exc).__name__})") from None

    def read(pos: int, size: int) -> bytes:
        window.seek(pos)
        return window.read(size)

    try:
        tsuid, study_uid, series_uid, sop_uid, sop_class = _identify(ds.get, ds.file_meta.get)
    except InvalidInstance:
        raise
    except Exception as exc:  # an identifying value pydicom cannot decode
        raise InvalidInstance(f"cannot decode the identifying attributes ({type(exc).__name__})") from None
    try:
        prefix = _prefix(study_uid, series_uid, sop_uid)
        bulk: dict[str, Range] = {}
        warnings: list[str] = []
        implicit, little = ds.original_encoding
        if implicit is None or little is None:
            implicit, little = tsuid == "1.2.840.10008.1.2", tsuid != "1.2.840.10008.1.2.2"
        metadata = dataset_to_json(ds, window, prefix, bulk, [], warnings, little=bool(little))
        if tsuid == DEFLATED:
            _deflated_bulk(metadata, bulk, window, prefix)
        eot = ds.get_item(0x7FE00001, keep_deferred=True)
        return _build(metadata, bulk, warnings, ds.get, read, lambda: _read_offsets(window, eot, "<Q"),
                      pixel_pos, length, tsuid, study_uid, series_uid, sop_uid, sop_class, prefix,
                      bool(implicit), bool(little))
    except InvalidInstance as exc:
        exc.sop_class_uid, exc.sop_uid = sop_class, sop_uid
        raise
    except Exception as exc:  # pydicom raises many types on values it cannot decode
        raise InvalidInstance(f"cannot decode the data set ({type(exc).__name__})", CANNOT_UNDERSTAND,
                              sop_class, sop_uid) from None


def _deflated_bulk(metadata: dict[str, Any], bulk: dict[str, Range], window: BinaryIO, prefix: str) -> None:
    """Bulk data of a deflated object has no byte range in the stored file
    (the data set is compressed as a whole, PS3.5 A.5): its BulkDataURIs stay
    and are answered by inflating the object on request. Pixel Data, which the
    header read stopped before, gets its URI here."""
    bulk.clear()
    window.seek(0)
    ds = pydicom.dcmread(window, specific_tags=list(PIXEL_TAGS))
    for tag in PIXEL_TAGS:
        element = ds.get(tag)
        if element is not None:
            key = f"{tag:08X}"
            metadata[key] = {"vr": str(element.VR).split()[0], "BulkDataURI": prefix + key}


def _uids_of_broken(window: BinaryIO) -> tuple[str, str]:
    """(SOP Class, SOP Instance UID) of a refused object, for its failure
    item, when its header can be read; else empty strings."""
    try:
        window.seek(0)
        ds = pydicom.dcmread(window, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        sop_class, sop_uid = clean_uid(str(ds.get("SOPClassUID", ""))), clean_uid(str(ds.get("SOPInstanceUID", "")))
    except Exception:  # the object is already refused; its UIDs are a courtesy
        return "", ""
    if not is_valid_uid(sop_class) or not is_valid_uid(sop_uid):
        return "", ""
    return sop_class, sop_uid


#: Top-level values analyze() reads, and the VR they must have for the fast
#: path's values to equal pydicom's (anything else goes through pydicom).
_FAST_FIELDS = {
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "NumberOfFrames": (0x00280008, "IS"),
    "SamplesPerPixel": (0x00280002, "US"),
    "PhotometricInterpretation": (0x00280004, "CS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "BitsAllocated": (0x00280100, "US"),
}
_FAST_SINGLE = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PhotometricInterpretation")


def analyze_fast(fp: IO[bytes], offset: int, length: int) -> InstanceInfo | None:
    """The fast path, or None when it does not handle this object."""
    view = _open_view(fp)
    if view is None:
        return None
    buf, close = view
    try:
        parsed = fastparse.parse(buf, offset, length)
        if parsed is None:
            return None
        for keyword, (tag, vr) in _FAST_FIELDS.items():
            elem = parsed.metadata.get(f"{tag:08X}")
            if elem is not None and (elem["vr"] != vr or (keyword in _FAST_SINGLE and len(elem.get("Value", ())) > 1)):
                return None

        def get(keyword: str, default: Any) -> Any:
            return parsed.get(_FAST_FIELDS[keyword][0], default)

        def meta_get(keyword: str, default: Any) -> Any:
            value = parsed.transfer_syntax if keyword == "TransferSyntaxUID" else parsed.media_sop_class
            return default if value is None else value

        end = offset + length

        def read(pos: int, size: int) -> bytes:
            start = offset + max(0, pos)
            return bytes(buf[start:min(start + max(0, size), end)])

        tsuid, study_uid, series_uid, sop_uid, sop_class = _identify(get, meta_get)
        try:
            prefix = _prefix(study_uid, series_uid, sop_uid)
            for element, where in parsed.bulk_refs:
                element["BulkDataURI"] = prefix + where

            def eot() -> list[int]:
                if parsed.eot is None:
                    return []
                data = read(*parsed.eot)
                return [v for (v,) in struct.iter_unpack("<Q", data[: len(data) // 8 * 8])]

            return _build(parsed.metadata, parsed.bulk, [], get, read, eot, parsed.pixel_pos, length,
                          tsuid, study_uid, series_uid, sop_uid, sop_class, prefix, parsed.implicit, True)
        except InvalidInstance as exc:
            exc.sop_class_uid, exc.sop_uid = sop_class, sop_uid
            raise
    finally:
        close()


def _open_view(fp: IO[bytes]) -> tuple[Any, Callable[[], None]] | None:
    """The whole body as a buffer read in place (no copy): a memory map of
    the spooled file, or an in-memory body's own buffer."""
    if isinstance(fp, io.BytesIO):
        view = fp.getbuffer()
        return view, view.release
    try:
        mapped = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    return mapped, mapped.close


def _identify(get: Getter, meta_get: Getter) -> tuple[str, str, str, str, str]:
    """(transfer syntax, study, series, SOP instance, SOP class UIDs), or the
    InvalidInstance that says which one is wrong."""
    tsuid = clean_uid(str(meta_get("TransferSyntaxUID", "")))
    _check_transfer_syntax(tsuid)
    sop_class = _uid(get, "SOPClassUID", required=False) or clean_uid(str(meta_get("MediaStorageSOPClassUID", "")))
    sop_uid = _uid(get, "SOPInstanceUID", required=False)
    try:
        if not sop_class or not is_valid_uid(sop_class):
            raise InvalidInstance("SOPClassUID is missing or not a valid UID")
        if not sop_uid:
            raise InvalidInstance("SOPInstanceUID is missing")
        study_uid = _uid(get, "StudyInstanceUID")
        series_uid = _uid(get, "SeriesInstanceUID")
    except InvalidInstance as exc:
        exc.sop_class_uid, exc.sop_uid = sop_class if is_valid_uid(sop_class) else "", sop_uid
        raise
    return tsuid, study_uid, series_uid, sop_uid, sop_class


def _check_transfer_syntax(tsuid: str) -> None:
    """Refuse a transfer syntax the server cannot parse: one neither in
    PS3.6's registry (as pydicom knows it) nor registered with pydicom."""
    if not tsuid or not is_valid_uid(tsuid):
        raise InvalidInstance("file meta has no valid TransferSyntaxUID", TRANSFER_SYNTAX_NOT_SUPPORTED)
    entry = UID_dictionary.get(tsuid)
    if (entry is None or entry[1] != "Transfer Syntax") and tsuid not in PrivateTransferSyntaxes:
        raise InvalidInstance("the TransferSyntaxUID names no known transfer syntax", TRANSFER_SYNTAX_NOT_SUPPORTED)


def _prefix(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulk/"


def _build(metadata: dict[str, Any], bulk: dict[str, Range], warnings: list[str], get: Getter,
           read: Reader, eot: Callable[[], list[int]], pixel_pos: int, size: int, tsuid: str,
           study_uid: str, series_uid: str, sop_uid: str, sop_class: str, prefix: str,
           implicit: bool, little: bool) -> InstanceInfo:
    frames: list[list[Range]] | None = None
    encapsulated = False
    if pixel_pos < size and tsuid != DEFLATED:
        pixel = _read_pixel_element(read, pixel_pos, get, implicit, little)
        if pixel is not None:
            tag, vr, value_range, fragments = pixel
            _check_tail(read, sum(value_range), size, implicit, little)
            key = f"{tag:08X}"
            encapsulated = fragments is not None
            if encapsulated:
                vr = "OB"
            metadata[key] = {"vr": vr, "BulkDataURI": prefix + key}
            bulk[key] = value_range
            frames = _frames(get, read, eot, value_range, fragments, warnings)
    elif tsuid == DEFLATED:
        warnings.append("deflated transfer syntax: frames are decoded on request")
    return InstanceInfo(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=tsuid,
        size=size,
        metadata=metadata,
        study=levels.pick(metadata, levels.STUDY_TAGS),
        series=levels.pick(metadata, levels.SERIES_TAGS),
        instance=levels.pick(metadata, levels.INSTANCE_TAGS),
        frames=frames,
        bulk=bulk,
        encapsulated=encapsulated,
        warnings=warnings,
    )


def _vr_of(tag: BaseTag, raw: Any) -> str:
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if vr in ("OB or OW", "US or OW", "US or SS or OW", "US or SS"):
        return "OW" if "OW" in vr else "US"
    return str(vr)


#: Word size of the binary VRs whose InlineBinary is little endian (PS3.18 F.2.7).
_WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def _little_endian_inline(element: dict[str, Any], vr: str) -> None:
    """Swap a big endian InlineBinary value to little endian, in place."""
    size = _WORD_SIZES.get(vr)
    value = element.get("InlineBinary")
    if size is None or not value:
        return
    raw = bytearray(base64.b64decode(value))
    whole = len(raw) // size * size
    for start in range(0, whole, size):
        raw[start:start + size] = raw[start:start + size][::-1]
    element["InlineBinary"] = base64.b64encode(bytes(raw)).decode("ascii")


def dataset_to_json(ds: Dataset, fp: BinaryIO, prefix: str, bulk: dict[str, Range],
                    path: list[str], warnings: list[str], base: int = 0, little: bool = True) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2) of ``ds``; large binary values become BulkDataURIs.

    ``base``: where the bytes ``ds`` was read from start in the object. pydicom
    parses a sequence of defined length from a copy of its value, so the
    positions it records inside are relative to that value's start.
    """
    out: dict[str, Any] = {}
    for tag in ds.keys():
        if tag.element == 0 or (tag in PIXEL_TAGS and not path):
            continue  # group lengths are not part of DICOM JSON
        key = f"{tag:08X}"
        raw = ds.get_item(tag, keep_deferred=True)  # never let pydicom re-open the file
        vr = _vr_of(tag, raw)
        if vr == "SQ":
            if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
                # A defined-length sequence over DEFER_SIZE was deferred; the
                # window has no file name to read it back from, so read it here.
                fp.seek(base + raw.value_tell)
                raw = raw._replace(value=fp.read(raw.length))
                ds._dict[tag] = raw
            inner = base + int(raw.value_tell) if isinstance(raw, RawDataElement) else base
            items = [dataset_to_json(item, fp, prefix, bulk, [*path, key, str(i)], warnings, inner, little)
                     for i, item in enumerate(ds[tag].value or [])]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if isinstance(raw, RawDataElement):
            if vr in BINARY_VRS and raw.length > BULK_THRESHOLD and raw.length != 0xFFFFFFFF:
                where = "/".join([*path, key])
                bulk[where] = (base + int(raw.value_tell), int(raw.length))
                out[key] = {"vr": vr, "BulkDataURI": prefix + where}
                continue
            if raw.value is None and raw.length:
                fp.seek(base + raw.value_tell)
                ds[tag] = pydicom.dataelem.convert_raw_data_element(
                    raw._replace(value=fp.read(raw.length)), encoding=ds._character_set, ds=ds)
        try:
            out[key] = ds[tag].to_json_dict(None, 1 << 62)
            if not little:
                _little_endian_inline(out[key], vr)
        except Exception as exc:  # a malformed value must not lose the instance
            warnings.append(f"{key}: value not representable in JSON ({type(exc).__name__})")
            out[key] = {"vr": vr}
    return out


def _read_pixel_element(read: Reader, pos: int, get: Getter, implicit: bool, little: bool
                        ) -> tuple[int, str, Range, list[Range] | None] | None:
    """Parse the pixel data element header at ``pos``.

    ``implicit``/``little``: how the data set was actually encoded (some
    writers contradict their transfer syntax; pydicom detects it while
    reading). Returns (tag, vr, value range, fragments or None for native data).
    """
    end = "<" if little else ">"
    head = read(pos, 12)
    if len(head) < 8:
        return None
    group, elem = struct.unpack(end + "HH", head[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_TAGS:
        return None
    if not implicit and not structure.looks_explicit(head[4:6]):
        implicit = True  # an implicit VR element in an explicit VR data set, read as readers do
    if implicit:
        (length,) = struct.unpack(end + "L", head[4:8])
        vr = PIXEL_TAGS[tag] if tag != 0x7FE00010 else ("OW" if int(get("BitsAllocated", 16) or 16) > 8 else "OB")
        value_start = pos + 8
    else:
        vr_bytes = head[4:6]
        vr = vr_bytes.decode("ascii", "replace")
        if vr_bytes in _LONG_VRS:
            (length,) = struct.unpack(end + "L", head[8:12])
            value_start = pos + 12
        else:
            (length,) = struct.unpack(end + "H", head[6:8])
            value_start = pos + 8
    if length != 0xFFFFFFFF:
        if len(read(value_start + length - 1, 1)) != 1 and length:
            raise InvalidInstance(f"element ({group:04X},{elem:04X}) is longer than the data that holds it")
        return tag, vr, (value_start, length), None
    fragments, value_end = _read_fragments(read, value_start, end)
    return tag, vr, (value_start, value_end - value_start), fragments


def _read_fragments(read: Reader, pos: int, end: str) -> tuple[list[Range], int]:
    """Fragments of encapsulated pixel data; the first item (Basic Offset Table) is included."""
    items: list[Range] = []
    while True:
        head = read(pos, 8)
        if len(head) < 8:
            raise InvalidInstance("encapsulated pixel data is not closed by a sequence delimiter")
        group, elem, length = struct.unpack(end + "HHL", head)
        tag = (group << 16) | elem
        if tag == _SEQ_DELIM:
            return items, pos + 8
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise InvalidInstance("encapsulated pixel data has a malformed item")
        items.append((pos + 8, length))
        pos += 8 + length


def _check_tail(read: Reader, pos: int, size: int, implicit: bool, little: bool) -> None:
    """The elements after the Pixel Data (digital signatures, padding) must fit too."""
    try:
        structure.check_tail(read, pos, size, implicit, little)
    except structure.Malformed as exc:
        raise InvalidInstance(exc.reason) from None


def _frames(get: Getter, read: Reader, eot: Callable[[], list[int]], value: Range,
            items: list[Range] | None, warnings: list[str]) -> list[list[Range]] | None:
    try:
        nframes = max(1, int(get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        nframes = 1
    if items is None:
        return _native_frames(get, value, nframes, warnings)
    if not items:
        raise InvalidInstance("encapsulated pixel data has no Basic Offset Table item")
    bot, fragments = items[0], items[1:]
    if not fragments:
        raise InvalidInstance("encapsulated pixel data has no fragments")
    if len(fragments) < nframes:
        # PS3.5 A.4: a fragment never holds more than one frame.
        raise InvalidInstance(f"encapsulated pixel data has {len(fragments)} fragments for {nframes} frames")
    _check_offset_tables(read, eot, bot, fragments)
    if nframes == 1:
        return [fragments]
    starts = _frame_starts(read, eot, bot, fragments, nframes)
    if starts is None:
        warnings.append("cannot split fragments into frames; frames are decoded on request")
        return None
    bounds = [*starts, len(fragments)]
    return [fragments[bounds[i]:bounds[i + 1]] for i in range(nframes)]


def _check_offset_tables(read: Reader, eot: Callable[[], list[int]], bot: Range, fragments: list[Range]) -> None:
    """The Basic and Extended Offset Tables (PS3.5 A.4, C.7.6.3.1.8) point
    at item tags inside the fragments: an offset beyond them is refused."""
    span = sum(length for _off, length in fragments) + 8 * len(fragments)
    offsets = eot()
    if not offsets and bot[1]:
        if bot[1] % 4:
            raise InvalidInstance("the Basic Offset Table length is not a multiple of 4")
        raw = read(bot[0], bot[1])
        offsets = list(struct.unpack(f"<{len(raw) // 4}L", raw[: len(raw) // 4 * 4]))
    if any(o >= span for o in offsets):
        raise InvalidInstance("an offset table points outside the pixel data")


def _native_frames(get: Getter, value: Range, nframes: int, warnings: list[str]) -> list[list[Range]] | None:
    try:
        samples = int(get("SamplesPerPixel", 1) or 1)
        if str(get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
            samples = 2  # two chroma samples are shared by each pair of pixels
        bits = int(get("Rows", None)) * int(get("Columns", None)) * samples * int(get("BitsAllocated", None))
    except (AttributeError, TypeError, ValueError):
        raise InvalidInstance("Pixel Data without valid Rows, Columns or BitsAllocated") from None
    offset, length = value
    needed = (bits * nframes + 7) // 8
    if bits <= 0 or needed > length:
        # PS3.5 8.1.1: Rows x Columns x Samples x Bits Allocated x Frames, plus
        # a pad byte to even length (allowed, never required here).
        raise InvalidInstance(f"Pixel Data holds {length} bytes; its frames need {needed}")
    if bits % 8:
        return None  # frames are not byte aligned (1-bit data): decode on request
    frame_len = bits // 8
    return [[(offset + i * frame_len, frame_len)] for i in range(nframes)]


def _frame_starts(read: Reader, eot: Callable[[], list[int]], bot: Range, fragments: list[Range],
                  nframes: int) -> list[int] | None:
    """Index of the first fragment of each frame, or None if it cannot be told."""
    item_pos = [off - 8 - fragments[0][0] + 8 for off, _ in fragments]  # relative to first item tag
    offsets = eot()
    if not offsets and bot[1]:
        raw = read(bot[0], bot[1])
        offsets = list(struct.unpack(f"<{len(raw) // 4}L", raw[: len(raw) // 4 * 4]))
    if len(offsets) == nframes:
        index = {pos: i for i, pos in enumerate(item_pos)}
        starts = [index[o] for o in offsets if o in index]
        if len(starts) == nframes and starts == sorted(starts):
            return starts
    if len(fragments) == nframes:
        return list(range(nframes))
    # Fall back to markers: each JPEG family frame begins with SOI (FFD8) or SOC (FF4F).
    marked: list[int] = []
    for i, (off, _length) in enumerate(fragments):
        if read(off, 2) in (b"\xff\xd8", b"\xff\x4f"):
            marked.append(i)
    if len(marked) == nframes and marked[0] == 0:
        return marked
    return None


def _read_offsets(fp: BinaryIO, elem: Any, fmt: str) -> list[int]:
    if elem is None:
        return []
    if isinstance(elem, RawDataElement):
        if elem.value is not None:
            data = elem.value
        else:
            fp.seek(elem.value_tell)
            data = fp.read(elem.length)
    else:
        data = elem.value or b""
    size = struct.calcsize(fmt)
    return [struct.unpack(fmt, data[i:i + size])[0] for i in range(0, len(data) // size * size, size)]
