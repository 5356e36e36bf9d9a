"""Store-time header parsing without pydicom, for the common encodings.

pydicom spends about a millisecond per instance building objects that STOW
only turns into DICOM JSON. This module walks the raw bytes of a Part 10
header once and emits the same DICOM JSON, bulk ranges and identifying
values that :mod:`analyze`'s pydicom path produces. It handles Explicit and
Implicit VR Little Endian (and the compressed syntaxes, which are Explicit VR
Little Endian), the default character repertoire, ISO_IR 100 and ISO_IR 192,
and sequences of defined or undefined length.

Anything else, or anything odd (a value pydicom would repair, warn about or
refuse, an unknown VR, a truncated element, a non-default pydicom setting),
makes :func:`parse` return None, and the caller uses pydicom. The rules below
mirror pydicom 3's readers and converters; ``tests/test_fastparse.py`` runs
both paths over every sample file and a set of crafted values and asserts
identical output, so a difference is caught, not guessed.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass
from typing import Any

from pydicom import config as pconfig
from pydicom import hooks as phooks
from pydicom.datadict import dictionary_VR, private_dictionary_VR

from .structure import MAX_DEPTH

Range = tuple[int, int]

#: The pydicom path's thresholds (kept equal by analyze.py importing these).
BULK_THRESHOLD = 1024
DEFER_SIZE = 64 * 1024
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: (0008,0005) values handled, and pydicom's Python codec for each.
CHARSETS = {"": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1", "ISO_IR 192": "UTF8"}
DEFAULT_CODEC = "iso8859"

_KNOWN_VRS = frozenset(
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split())
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}
_NUMBER_SIZES = {vr: struct.calcsize("=" + fmt) for vr, fmt in _NUMBER_FORMATS.items()}
_MULTI_STRING_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})
_TEXT_MULTI_VRS = frozenset({"SH", "LO", "UC"})
_TEXT_SINGLE_VRS = frozenset({"ST", "LT", "UT"})
#: pydicom adds 65536 to a negative first value of these (hooks.raw_element_value):
#: only the plain US form is handled here.
_LUT_DESCRIPTOR_TAGS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})

_IS_ITEM = re.compile(r" *[+-]?[0-9]+ *\Z")
_DS_ITEM = re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *\Z")

_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD

_explicit_head = struct.Struct("<HH2sH").unpack_from
_implicit_head = struct.Struct("<HHL").unpack_from
_u32 = struct.Struct("<L").unpack_from
_tag_of = struct.Struct("<HH").unpack_from


class Decline(Exception):
    """Not handled here: the caller uses pydicom."""


@dataclass
class Parsed:
    """What analyze.py needs from a header: pydicom-path equivalents."""

    transfer_syntax: Any  # the converted (0002,0010) value, or None
    media_sop_class: Any  # the converted (0002,0002) value, or None
    metadata: dict[str, Any]
    #: Element dicts whose "BulkDataURI" is filled in once the UIDs are known.
    bulk_refs: list[tuple[dict[str, Any], str]]
    bulk: dict[str, Range]
    pixel_pos: int
    implicit: bool
    #: Range of the top-level Extended Offset Table (7FE0,0001), if any.
    eot: Range | None = None

    def get(self, keyword_tag: int, default: Any = None) -> Any:
        """The value pydicom's ``ds.get`` gives for a top-level element, as
        far as analyze.py uses it (single values; lists when multi-valued)."""
        elem = self.metadata.get(f"{keyword_tag:08X}")
        if elem is None:
            return default
        values = elem.get("Value")
        if not values:
            return "" if elem["vr"] in ("UI", "CS", "IS") else None
        return values[0] if len(values) == 1 else list(values)


def pydicom_defaults() -> bool:
    """Whether pydicom reads with the settings these rules mirror."""
    return (
        not pconfig.datetime_conversion
        and not pconfig.use_DS_decimal
        and not pconfig.use_DS_numpy
        and not pconfig.use_IS_numpy
        and not pconfig.use_none_as_empty_text_VR_value
        and pconfig.replace_un_with_known_vr
        and pconfig.settings.reading_validation_mode != pconfig.RAISE
        and pconfig.data_element_callback is None
        and pconfig.assume_implicit_vr_switch
        and not phooks.hooks.raw_element_kwargs
        and phooks.hooks.raw_element_vr is phooks.raw_element_vr
        and phooks.hooks.raw_element_value is phooks.raw_element_value
    )


def parse(buf: Any, base: int, size: int) -> Parsed | None:
    """Parse the Part 10 object at ``buf[base:base + size]`` (bytes or mmap).

    Returns None when this module does not handle the object exactly like
    pydicom would; offsets in the result are relative to ``base``.
    """
    if size < 140 or not pydicom_defaults():
        return None
    try:
        return _Reader(buf, base, size).run()
    except (Decline, struct.error, IndexError):
        return None


class _Reader:
    def __init__(self, buf: Any, base: int, size: int) -> None:
        self.buf = buf
        self.base = base
        self.end = base + size
        self.codec = DEFAULT_CODEC
        self.text_decoded = False  # the charset must precede any decoded text
        self.bulk: dict[str, Range] = {}
        self.bulk_refs: list[tuple[dict[str, Any], str]] = []
        self.implicit = False
        self.pixel_pos = size
        self.eot: Range | None = None
        self._vr_cache: dict[int, str | None] = {}

    # -- file meta -----------------------------------------------------------

    def run(self) -> Parsed:
        buf, base = self.buf, self.base
        if buf[base + 128:base + 132] != b"DICM":
            raise Decline
        pos = base + 132
        meta: dict[int, Any] = {}
        first = True
        while pos + 8 <= self.end:
            group, elem, vr_b, length = _explicit_head(buf, pos)
            if group != 2:
                break
            vr = vr_b.decode("latin-1")
            if vr not in _KNOWN_VRS or vr == "SQ" or (first and not _looks_explicit(vr_b)):
                raise Decline
            first = False
            start = pos + 8
            if vr in _LONG_VRS:
                length = _u32(buf, pos + 8)[0]
                start += 4
            if length == 0xFFFFFFFF or start + length > self.end:
                raise Decline
            tag = 0x00020000 | elem
            if tag in meta:
                raise Decline
            meta[tag] = (vr, start, length)
            pos = start + length
        ts = self._meta_uid(meta, 0x00020010)
        sop_class = self._meta_uid(meta, 0x00020002)
        if ts is None or ts in (EXPLICIT_BE, DEFLATED) or pconfig.settings is None:
            raise Decline
        from pydicom.uid import PrivateTransferSyntaxes

        if PrivateTransferSyntaxes:
            raise Decline
        if pos + 8 > self.end:
            raise Decline  # no data set: let pydicom say what is wrong
        group, _elem = _tag_of(buf, pos)
        if group in (0, 2):
            raise Decline  # command set elements or misplaced meta
        self.implicit = ts == IMPLICIT_LE
        # pydicom checks the first element's VR bytes and reads with what it finds.
        if _looks_explicit(buf[pos + 4:pos + 6]) == self.implicit:
            raise Decline
        metadata, _ = self.dataset(pos, None, top=True, path=())
        if not metadata:
            raise Decline
        return Parsed(ts, sop_class, metadata, self.bulk_refs, self.bulk, self.pixel_pos, self.implicit, self.eot)

    def _meta_uid(self, meta: dict[int, Any], tag: int) -> Any:
        found = meta.get(tag)
        if found is None:
            return None
        vr, start, length = found
        if vr != "UI":
            raise Decline
        if length == 0:
            return ""
        value = _multi_string(bytes(self.buf[start:start + length]).decode(DEFAULT_CODEC).rstrip("\0 "))
        if isinstance(value, list):
            raise Decline
        return value

    # -- data sets -------------------------------------------------------------

    def dataset(self, pos: int, stop: int | None, top: bool, path: tuple[str, ...]) -> tuple[dict[str, Any], int]:
        """Read elements from ``pos`` to ``stop`` (None: to an item delimiter,
        or at top level to the pixel data or the end). Returns (JSON, end)."""
        buf, end, implicit = self.buf, self.end, self.implicit
        out: dict[str, Any] = {}
        creators: dict[int, Any] = {}  # private block -> creator value (implicit VR)
        used_blocks: set[int] = set()
        limit = end if stop is None else stop
        while True:
            if stop is not None and pos == stop:
                return out, pos
            if pos + 8 > limit:
                if top and stop is None and pos <= end:
                    # pydicom ends the data set at a short read (trailing bytes).
                    self.pixel_pos = end - self.base
                    return out, end
                raise Decline
            group, elem = _tag_of(buf, pos)
            tag = group << 16 | elem
            if tag == _ITEM_DELIM:
                if stop is not None or top or _u32(buf, pos + 4)[0] != 0:
                    raise Decline
                return out, pos + 8
            vr: str | None
            if implicit:
                length = _u32(buf, pos + 4)[0]
                vr = None
                start = pos + 8
            else:
                _g, _e, vr_b, length = _explicit_head(buf, pos)
                vr = vr_b.decode("latin-1")
                if vr not in _KNOWN_VRS:
                    raise Decline
                start = pos + 8
                if vr in _LONG_VRS:
                    length = _u32(buf, pos + 8)[0]
                    start += 4
            if top and tag in PIXEL_TAGS:
                self.pixel_pos = pos - self.base
                return out, pos
            if group in (0xFFFE, 0x0002) or (group == 0x0008 and elem == 0x0005 and not top):
                raise Decline
            key = f"{tag:08X}"
            if key in out:
                raise Decline
            if group & 1 and elem >= 0x0100:
                used_blocks.add(group << 16 | elem >> 8)
            if length == 0xFFFFFFFF:
                if implicit:
                    vr = self._implicit_sq_vr(tag, start)
                if vr != "SQ":
                    raise Decline
                items, pos = self.sequence(start, None, [*path, key])
                out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                continue
            value_end = start + length
            if value_end > limit:
                raise Decline
            pos = value_end
            if elem == 0:
                continue  # group lengths are not part of DICOM JSON
            if top and tag == 0x7FE00001:
                self.eot = (start - self.base, length)
            if implicit:
                raw_vr = self._raw_vr(tag)  # what analyze._vr_of sees
                if raw_vr == "SQ":
                    vr = "SQ"
            else:
                assert vr is not None  # explicit VR: read from the element header
                raw_vr = vr
            if vr == "SQ":
                if top and length > DEFER_SIZE:
                    raise Decline  # pydicom defers it and cannot read it back
                items, after = self.sequence(start, value_end, [*path, key]) if length else ([], value_end)
                if after != value_end:
                    raise Decline
                out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                continue
            if raw_vr in BINARY_VRS and length > BULK_THRESHOLD:
                where = "/".join([*path, key])
                self.bulk[where] = (start - self.base, length)
                element: dict[str, Any] = {"vr": raw_vr}
                self.bulk_refs.append((element, where))
                out[key] = element
                continue
            if implicit:
                vr = self._implicit_vr(tag, creators)
            if vr == "UN" and not implicit:
                raise Decline  # pydicom may replace UN with the dictionary VR
            value = bytes(buf[start:value_end])
            assert vr is not None  # explicit: from the header; implicit: from the dictionary
            out[key] = self.convert(tag, vr, value)
            if group & 1 and 0x0010 <= elem <= 0x00FF:
                block = group << 16 | elem
                if block in used_blocks:
                    raise Decline  # creator after its elements
                creators[block] = out[key].get("Value")
            elif top and tag == 0x00080005:
                self._set_charset(out[key])

    def sequence(self, pos: int, stop: int | None, path: list[str]) -> tuple[list[dict[str, Any]], int]:
        if (len(path) + 1) // 2 > MAX_DEPTH:
            raise Decline  # the pydicom path refuses it, saying why
        buf = self.buf
        items: list[dict[str, Any]] = []
        while True:
            if stop is not None and pos == stop:
                return items, pos
            limit = self.end if stop is None else stop
            if pos + 8 > limit:
                raise Decline
            group, elem, length = _implicit_head(buf, pos)
            tag = group << 16 | elem
            pos += 8
            if tag == _SEQ_DELIM:
                if stop is not None or length != 0:
                    raise Decline
                return items, pos
            if tag != _ITEM:
                raise Decline
            item_path = (*path, str(len(items)))
            if length == 0xFFFFFFFF:
                self._check_item_encoding(pos)
                item, pos = self.dataset(pos, None, top=False, path=item_path)
            else:
                if pos + length > limit:
                    raise Decline
                if length:
                    self._check_item_encoding(pos)
                item, pos = self.dataset(pos, pos + length, top=False, path=item_path)
            items.append(item)

    def _check_item_encoding(self, pos: int) -> None:
        """pydicom reads an item of an Explicit VR data set as implicit VR when
        its first element looks implicit; that case is left to pydicom."""
        if self.implicit or pos + 8 > self.end or _tag_of(self.buf, pos) == (0xFFFE, 0xE00D):
            return
        if not _looks_explicit(self.buf[pos + 4:pos + 6]):
            raise Decline

    # -- VRs of implicit VR elements -------------------------------------------

    def _raw_vr(self, tag: int) -> str:
        """analyze._vr_of for a raw implicit element: the dictionary VR,
        ambiguous ones mapped, "UN" when unknown."""
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            return "UN"
        if vr in ("OB or OW", "US or OW", "US or SS or OW", "US or SS"):
            return "OW" if "OW" in vr else "US"
        return vr

    def _implicit_vr(self, tag: int, creators: dict[int, Any]) -> str:
        """The VR pydicom's raw_element_vr hook gives an implicit element."""
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            group, elem = tag >> 16, tag & 0xFFFF
            if not group & 1:
                return "UN"  # pydicom warns and uses UN (group lengths are skipped)
            if 0x0010 <= elem <= 0x00FF:
                return "LO"  # private creator
            if elem & 0xFF00:
                creator = creators.get(group << 16 | elem >> 8)
                if creator:
                    if len(creator) != 1:
                        raise Decline from None
                    try:
                        vr = str(private_dictionary_VR(tag, creator[0]))
                    except KeyError:
                        return "UN"
                    if " or " in vr or vr not in _KNOWN_VRS or vr == "SQ":
                        raise Decline from None
                    return vr
            return "UN"
        if " or " in vr or vr not in _KNOWN_VRS:
            raise Decline  # ambiguous: pydicom resolves it from other elements
        return vr

    def _implicit_sq_vr(self, tag: int, start: int) -> str | None:
        """Undefined length in implicit VR: pydicom reads a sequence when the
        dictionary says SQ, or when the tag is unknown and an item follows."""
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            if start + 4 <= self.end and _tag_of(self.buf, start) == (0xFFFE, 0xE000):
                return "SQ"
            return None

    # -- values ------------------------------------------------------------------

    def _set_charset(self, element: dict[str, Any]) -> None:
        values = element.get("Value") or [""]
        if len(values) != 1 or values[0] not in CHARSETS or self.text_decoded:
            raise Decline
        self.codec = CHARSETS[values[0]]

    def _decode(self, value: bytes) -> str:
        if b"\x1b" in value:
            raise Decline  # ISO 2022 escape sequences
        self.text_decoded = True
        try:
            return value.decode(self.codec)
        except UnicodeDecodeError:
            return value.decode(self.codec, errors="replace")  # as pydicom does (with a warning)

    def convert(self, tag: int, vr: str, value: bytes) -> dict[str, Any]:
        """DICOM JSON of one non-sequence element, as pydicom's to_json_dict."""
        element: dict[str, Any] = {"vr": vr}
        if not value:
            return element
        if tag in _LUT_DESCRIPTOR_TAGS and vr != "US":
            raise Decline
        if vr in _NUMBER_FORMATS:
            size = _NUMBER_SIZES[vr]
            if len(value) % size:
                raise Decline
            numbers = list(struct.unpack(f"<{len(value) // size}{_NUMBER_FORMATS[vr]}", value))
            element["Value"] = numbers
            return element
        if vr in BINARY_VRS:
            element["InlineBinary"] = base64.b64encode(value).decode("utf-8")
            return element
        if vr == "AT":
            if len(value) % 4:
                raise Decline
            pairs = struct.unpack(f"<{len(value) // 2}H", value)
            element["Value"] = [f"{pairs[i] << 16 | pairs[i + 1]:08X}" for i in range(0, len(pairs), 2)]
            return element
        items: list[Any]
        if vr in _MULTI_STRING_VRS:
            items = _split(value.decode(DEFAULT_CODEC).rstrip(" \x00"))
        elif vr == "UI":
            items = _split(value.decode(DEFAULT_CODEC).rstrip("\0 ").rstrip(" \x00"))
        elif vr == "AE":
            items = [s.strip() for s in value.decode(DEFAULT_CODEC).split("\\")]
        elif vr in _TEXT_MULTI_VRS:
            items = [s.rstrip("\0 ") for s in self._decode(value).split("\\")]
        elif vr in _TEXT_SINGLE_VRS:
            items = [self._decode(value).rstrip("\0 ")]
        elif vr == "UR":
            items = [value.decode(DEFAULT_CODEC).rstrip()]
        elif vr == "PN":
            return self._person_name(element, value)
        elif vr == "IS":
            items = _split(value.decode(DEFAULT_CODEC).rstrip(" \x00"))
            if len(items) == 1 and not items[0]:
                return element
            if not all(_IS_ITEM.match(s) for s in items):
                raise Decline
            element["Value"] = [int(s) for s in items]
            return element
        elif vr == "DS":
            items = _split(value.decode(DEFAULT_CODEC).strip().rstrip(" \x00"))
            if len(items) == 1 and not items[0]:
                return element
            if not all(_DS_ITEM.match(s) for s in items):
                raise Decline
            numbers = [float(s) for s in items]
            if any(n in (float("inf"), float("-inf")) for n in numbers):
                raise Decline
            element["Value"] = numbers
            return element
        else:
            raise Decline
        if len(items) == 1 and not items[0]:
            return element  # a single empty value: VM 0
        element["Value"] = items
        return element

    def _person_name(self, element: dict[str, Any], value: bytes) -> dict[str, Any]:
        text = self._decode(value.rstrip(b"\x00 "))
        names = []
        for item in text.split("\\"):
            groups = item.split("=")
            while groups and not groups[-1]:
                groups.pop()
            names.append(groups)
        if len(names) == 1:
            if not names[0]:
                return element  # empty name: VM 0
        elif not all(names):
            raise Decline  # pydicom fails on an empty name among several
        out = []
        for groups in names:
            name = {"Alphabetic": groups[0]}
            if len(groups) > 1:
                name["Ideographic"] = groups[1]
            if len(groups) > 2:
                name["Phonetic"] = groups[2]
            out.append(name)
        element["Value"] = out
        return element


def _looks_explicit(vr: bytes) -> bool:
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _split(text: str) -> list[str]:
    return text.split("\\")


def _multi_string(text: str) -> str | list[str]:
    items = text.rstrip(" \x00").split("\\")
    return items[0] if len(items) == 1 else items
