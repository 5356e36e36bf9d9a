"""Structural checks of a Part 10 object, made before it is acknowledged.

pydicom reads leniently: a value length that runs past the end of the file,
an undefined-length sequence never closed, or a data set nested hundreds of
levels deep are read as far as they go (or exhaust the interpreter's stack).
A server that stored such an object could not serve it back, so STOW refuses
it. This module walks the element headers of the encoded data set (PS3.5
7.1 and 7.5) without decoding any value, and raises :class:`Malformed` with a
short reason (no patient data) at the first element that does not fit.

The fast header parser (:mod:`fastparse`) checks the same rules while it
reads, and declines (leaving the object to the pydicom path, which runs this
walk first) whenever an element does not fit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pydicom.datadict import dictionary_VR

#: Deepest sequence nesting accepted (a sequence at the top level is depth 1).
#: Real objects nest far less (SR content trees, the deepest, rarely pass 10);
#: the bound keeps every recursive reader (this walk, pydicom, DICOM JSON)
#: well inside the interpreter's stack.
MAX_DEPTH = 64

#: Reads (offset, length) of the object; short at its end.
Reader = Callable[[int, int], bytes]

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIM = 0xFFFEE00D
SEQ_DELIM = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
DEFLATED_EXPLICIT = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_KNOWN_VRS = frozenset(v.encode() for v in (
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV").split())
#: VRs that may have an undefined length (PS3.5 7.1.3): SQ, UN, and the
#: encapsulated (OB/OW) Pixel Data.
_UNDEFINED_OK = frozenset({b"SQ", b"UN", b"OB", b"OW"})


class Malformed(ValueError):
    """The object's encoding is broken; ``reason`` says where, briefly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def looks_explicit(vr: bytes) -> bool:
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class Walker:
    """Walks the elements of one encoded data set; see :func:`check_dataset`."""

    def __init__(self, read: Reader, little: bool) -> None:
        self.read = read
        self.end = "<" if little else ">"
        self._head = struct.Struct(self.end + "HHL").unpack
        self._tag = struct.Struct(self.end + "HH").unpack
        self._short = struct.Struct(self.end + "H").unpack
        self._long = struct.Struct(self.end + "L").unpack

    def dataset(self, pos: int, limit: int, implicit: bool, depth: int, delimited: bool) -> int:
        """Walk elements from ``pos``: to an item delimiter (``delimited``),
        else exactly to ``limit``. Returns the position after the data set."""
        top = depth == 0 and not delimited
        while True:
            if not delimited and pos == limit:
                return pos
            if pos + 8 > limit:
                if top:
                    return limit  # a few trailing pad bytes, as readers tolerate
                if delimited:
                    raise Malformed("an item of undefined length is not closed before the end of the data")
                raise Malformed("an element header runs past the end of its item")
            head = self.read(pos, 12)
            if len(head) < 8:
                raise Malformed("the data ends inside an element header")
            group, elem, length = self._head(head[:8])
            tag = group << 16 | elem
            if tag == ITEM_DELIM:
                if not delimited:
                    raise Malformed("an item delimiter outside an item of undefined length")
                return pos + 8
            if tag in (ITEM, SEQ_DELIM):
                raise Malformed(f"a misplaced item tag {_tag_text(tag)} in a data set")
            vr: bytes | None = None
            start = pos + 8
            element_implicit = implicit or not (b"AA" <= head[4:6] <= b"ZZ")
            if not element_implicit:
                # Readers take VR bytes outside "AA".."ZZ" (compared as byte
                # strings) for an implicit VR element and read on.
                vr = head[4:6]
                if vr not in _KNOWN_VRS:
                    raise Malformed(f"element {_tag_text(tag)} has an unknown VR")
                if vr in _LONG_VRS:
                    if len(head) < 12:
                        raise Malformed("the data ends inside an element header")
                    (length,) = self._long(head[8:12])
                    start = pos + 12
                else:
                    (length,) = self._short(head[6:8])
            if length == UNDEFINED:
                if vr is not None and vr not in _UNDEFINED_OK:
                    raise Malformed(f"element {_tag_text(tag)} has an undefined length")
                if tag == PIXEL_DATA and depth == 0 and vr != b"SQ":
                    pos = self.fragments(start, limit)
                else:
                    # UN of undefined length holds implicit VR data (PS3.5 6.2.2).
                    pos = self.sequence(start, limit, implicit or vr == b"UN", depth + 1, True)
                continue
            value_end = start + length
            if value_end > limit:
                raise Malformed(f"element {_tag_text(tag)} is longer than the data that holds it")
            if length and (vr == b"SQ" or (element_implicit and _implicit_sq(tag))):
                self.sequence(start, value_end, implicit, depth + 1, False)
            pos = value_end

    def sequence(self, pos: int, limit: int, implicit: bool, depth: int, delimited: bool) -> int:
        if depth > MAX_DEPTH:
            raise Malformed(f"sequences are nested deeper than {MAX_DEPTH} levels")
        while True:
            if not delimited and pos == limit:
                return pos
            if pos + 8 > limit:
                if delimited:
                    raise Malformed("a sequence of undefined length is not closed before the end of the data")
                raise Malformed("an item header runs past the end of its sequence")
            group, elem, length = self._head(self.read(pos, 8))
            tag = group << 16 | elem
            pos += 8
            if tag == SEQ_DELIM:
                if not delimited:
                    raise Malformed("a sequence delimiter in a sequence of defined length")
                return pos
            if tag != ITEM:
                raise Malformed(f"a sequence holds {_tag_text(tag)} where an item belongs")
            item_implicit = implicit or not self._first_looks_explicit(pos)
            if length == UNDEFINED:
                pos = self.dataset(pos, limit, item_implicit, depth, True)
                continue
            if pos + length > limit:
                raise Malformed("a sequence item is longer than its sequence")
            self.dataset(pos, pos + length, item_implicit, depth, False)
            pos += length

    def _first_looks_explicit(self, pos: int) -> bool:
        """Readers decode an item of an explicit VR data set as implicit VR
        when its first element's VR bytes are not letters."""
        head = self.read(pos, 6)
        if len(head) < 6 or self._tag(head[:4]) == (0xFFFE, 0xE00D):
            return True
        return looks_explicit(head[4:6])

    def fragments(self, pos: int, limit: int) -> int:
        """Items of encapsulated Pixel Data (PS3.5 A.4), to the sequence delimiter."""
        while True:
            if pos + 8 > limit:
                raise Malformed("encapsulated pixel data is not closed by a sequence delimiter")
            group, elem, length = self._head(self.read(pos, 8))
            tag = group << 16 | elem
            pos += 8
            if tag == SEQ_DELIM:
                return pos
            if tag != ITEM or length == UNDEFINED:
                raise Malformed("encapsulated pixel data has a malformed item")
            if pos + length > limit:
                raise Malformed("a pixel data fragment is longer than the data that holds it")
            pos += length


def _implicit_sq(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def check_dataset(read: Reader, pos: int, size: int, implicit: bool, little: bool) -> None:
    """Check the top-level data set from ``pos`` to ``size``; raise Malformed."""
    try:
        Walker(read, little).dataset(pos, size, implicit, 0, False)
    except struct.error:
        raise Malformed("the data ends inside an element header") from None


def check_tail(read: Reader, pos: int, size: int, implicit: bool, little: bool) -> None:
    """Check the top-level elements after the Pixel Data (usually none)."""
    if pos < size:
        check_dataset(read, pos, size, implicit, little)


def read_file_meta(read: Reader, size: int) -> tuple[str, int]:
    """(Transfer Syntax UID, position of the data set) of a Part 10 object,
    or Malformed. The File Meta Information (PS3.10 7.1) is explicit VR
    little endian; an implicit one is tolerated, as readers do."""
    if size < 132 or read(128, 4) != b"DICM":
        raise Malformed("not a DICOM Part 10 object (no DICM prefix)")
    pos = 132
    tsuid = ""
    walker = Walker(read, True)
    while pos + 8 <= size:
        head = read(pos, 12)
        group, elem, length = walker._head(head[:8])
        if group != 2:
            break
        start = pos + 8
        if looks_explicit(head[4:6]):
            if head[4:6] in _LONG_VRS:
                (length,) = walker._long(head[8:12])
                start = pos + 12
            else:
                (length,) = walker._short(head[6:8])
        if length == UNDEFINED or start + length > size:
            raise Malformed(f"file meta element {_tag_text(group << 16 | elem)} is longer than the file")
        if elem == 0x0010:
            tsuid = read(start, length).decode("latin-1").rstrip("\0 ")
        pos = start + length
    return tsuid, pos


def check_part10(read: Reader, size: int) -> str:
    """Check a whole Part 10 object's structure; returns its Transfer Syntax
    UID. A deflated data set is left to the reader that inflates it."""
    try:
        tsuid, pos = read_file_meta(read, size)
    except struct.error:
        raise Malformed("the file meta information ends inside an element header") from None
    if tsuid in DEFLATED_EXPLICIT or pos >= size:
        return tsuid
    little = tsuid != EXPLICIT_BE
    # Readers check the first element's VR bytes and decode with what they find.
    implicit = not looks_explicit(read(pos + 4, 2))
    check_dataset(read, pos, size, implicit, little)
    return tsuid


__all__ = ["MAX_DEPTH", "Malformed", "Walker", "check_dataset", "check_part10", "check_tail", "read_file_meta"]
