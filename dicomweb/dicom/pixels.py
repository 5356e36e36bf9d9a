"""Pixel data: transfer syntax tables, negotiation and frame decoding.

Pure code (no Twisted): the web layer calls these functions in its thread pool
with bytes it has read from the store. Transcoding lives in ``transcode``,
rendering in ``render``; both build on what is here.

Decoding one frame does not need the whole Part 10 file: STOW recorded the
instance's DICOM JSON and each frame's fragment byte ranges, so
:func:`decode_frame` builds a minimal one-frame dataset from the JSON and the
frame's bytes and lets pydicom (with the pylibjpeg plugins) decode it.

Errors: everything raised on purpose is a :class:`PixelError` (a ValueError).
:class:`NotAcceptable` means "cannot produce what was asked" and maps to 406.
:class:`CannotDecode` means the stored pixel data could not be decoded (or the
metadata does not describe it); the web layer decides between a 4xx and a 5xx
(a corrupt stored object is the server's problem: 500 or 422 are both
defensible, but it must never leak a traceback).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID

# --- Transfer syntax UIDs -------------------------------------------------

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
J2K_PART2_LOSSLESS = "1.2.840.10008.1.2.4.92"
J2K_PART2 = "1.2.840.10008.1.2.4.93"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: Native (uncompressed) syntaxes. Frames of all of them are served as
#: Explicit VR Little Endian: PS3.18 8.7.3 forbids implicit and big endian on
#: the web, and implicit frame bytes are already little endian.
NATIVE = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, DEFLATED_LE, EXPLICIT_VR_BE})

#: Syntaxes whose pixel data may have lost information.
LOSSY = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR, J2K, J2K_PART2, HTJ2K})

OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"

#: Bulk data media type of each compressed syntax (PS3.18 Table 8.7.3-5).
FRAME_MEDIA_TYPE: dict[str, str] = {
    JPEG_BASELINE: "image/jpeg",
    JPEG_EXTENDED: "image/jpeg",
    JPEG_LOSSLESS: "image/jpeg",
    JPEG_LOSSLESS_SV1: "image/jpeg",
    JPEG_LS_LOSSLESS: "image/jls",
    JPEG_LS_NEAR: "image/jls",
    J2K_LOSSLESS: "image/jp2",
    J2K: "image/jp2",
    J2K_PART2_LOSSLESS: "image/jpx",
    J2K_PART2: "image/jpx",
    HTJ2K_LOSSLESS: "image/jphc",
    HTJ2K_RPCL: "image/jphc",
    HTJ2K: "image/jphc",
    RLE_LOSSLESS: "image/dicom-rle",
}

#: The RESTful default ("D") syntax of each bulk data media type (Table 8.7.3-5).
MEDIA_TYPE_DEFAULT: dict[str, str] = {
    OCTET_STREAM: EXPLICIT_VR_LE,
    "image/jpeg": JPEG_LOSSLESS_SV1,
    "image/jls": JPEG_LS_LOSSLESS,
    "image/jp2": J2K_LOSSLESS,
    "image/jpx": J2K_PART2_LOSSLESS,
    "image/jphc": HTJ2K_LOSSLESS,
    "image/dicom-rle": RLE_LOSSLESS,
}

#: Older names still sent by clients (PS3.18 before 2019 used the x- forms).
MEDIA_TYPE_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


class PixelError(ValueError):
    """Base of every deliberate error of the pixel modules."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAcceptable(PixelError):
    """The requested representation cannot be produced (HTTP 406)."""


class CannotDecode(PixelError):
    """The stored pixel data cannot be decoded; 4xx or 5xx is the caller's call."""


_P = ParamSpec("_P")
_R = TypeVar("_R")
#: What pydicom, numpy and the codecs raise on data they cannot handle.
_DATA_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, RuntimeError, OverflowError)


def guarded(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn any data error escaping ``func`` into CannotDecode.

    Stored objects come from arbitrary modalities; the web layer must only
    ever see PixelError, never a stray ValueError from deep inside pydicom.
    """
    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except PixelError:
            raise
        except _DATA_ERRORS as exc:
            raise CannotDecode(f"{type(exc).__name__}: {exc}"[:300]) from exc
    return wrapper


def frame_media_type(tsuid: str) -> str:
    """Media type of a frame encoded in ``tsuid`` (octet-stream for native data)."""
    return FRAME_MEDIA_TYPE.get(tsuid, OCTET_STREAM)


def is_lossy(tsuid: str) -> bool:
    return tsuid in LOSSY


# --- Negotiation ----------------------------------------------------------

Acceptable = Sequence[tuple[str, str | None]]


def _canonical(media_type: str) -> str:
    media_type = media_type.strip().lower()
    return MEDIA_TYPE_ALIASES.get(media_type, media_type)


def _served_stored(stored: str) -> str:
    """The syntax frames stored in ``stored`` are served in without decoding."""
    return EXPLICIT_VR_LE if stored in NATIVE else stored


def negotiate_frame_syntax(stored_tsuid: str, acceptable: Acceptable,
                           producible: Callable[[str, str], bool] | None = None) -> tuple[str, str]:
    """Choose (media type, transfer syntax) for frames of an object stored in ``stored_tsuid``.

    ``acceptable`` lists (media type, transfer-syntax parameter or None), best
    first; ``"*"`` as transfer syntax means "as stored". The first entry that
    can be served wins. Defaults when no transfer syntax is named:

    - ``application/octet-stream``: Explicit VR Little Endian (PS3.18 Table
      8.7.3-2), compressed data is decoded. A client that names no syntax
      expects raw pixels; one that can take compressed data says ``*``.
    - a compressed media type (``image/jpeg``...): the stored syntax when it
      has that media type (no generation loss, no CPU), else the table's
      default for the media type (never a lossy one).
    - ``*/*``: the stored syntax with its own media type.

    ``producible(stored, target)`` tells whether a transcoding is possible
    (``transcode.can_transcode`` bound to the frame's metadata); by default
    only the stored form and decoding to native are.
    """
    can = producible or _decode_only
    reasons: list[str] = []
    for media_type, ts in acceptable:
        choice = _frame_choice(stored_tsuid, _canonical(media_type), ts)
        if choice is None:
            reasons.append(f"{media_type} with transfer-syntax={ts} is not a frame representation")
            continue
        target = choice[1]
        if target == _served_stored(stored_tsuid) or can(stored_tsuid, target):
            spelled = media_type.strip().lower()
            # Answer an old alias (image/x-dicom-rle) in the client's own spelling.
            return (spelled, target) if _canonical(spelled) == choice[0] and spelled != choice[0] else choice
        reasons.append(f"cannot produce {target} from {stored_tsuid}")
    raise NotAcceptable("; ".join(reasons) or "no acceptable media type")


def _decode_only(stored: str, target: str) -> bool:
    return target == EXPLICIT_VR_LE


def _frame_choice(stored: str, media_type: str, ts: str | None) -> tuple[str, str] | None:
    stored_media = frame_media_type(stored)
    if media_type in ("*/*", "*", "multipart/related"):
        return stored_media, _served_stored(stored)
    if media_type == "image/*":
        media_type = stored_media if stored_media != OCTET_STREAM else "image/jpeg"
    if media_type != OCTET_STREAM and media_type not in MEDIA_TYPE_DEFAULT:
        return None
    if ts == "*":
        if media_type == OCTET_STREAM:
            # octet-stream with * carries the stored bytes whatever they are.
            return OCTET_STREAM, _served_stored(stored)
        return media_type, stored if stored_media == media_type else MEDIA_TYPE_DEFAULT[media_type]
    if ts:
        # PS3.18 Table 8.7.3-2/5: each media type goes with its own syntaxes only.
        return (media_type, ts) if frame_media_type(ts) == media_type else None
    if media_type == OCTET_STREAM:
        return OCTET_STREAM, EXPLICIT_VR_LE
    return media_type, stored if stored_media == media_type else MEDIA_TYPE_DEFAULT[media_type]


def negotiate_instance_syntax(stored_tsuid: str, acceptable: Iterable[str | None],
                              producible: Callable[[str, str], bool] | None = None) -> str:
    """Choose the transfer syntax of an ``application/dicom`` answer.

    ``acceptable`` is the list of transfer-syntax parameters of the acceptable
    ``application/dicom`` ranges, best first (None = not given). ``*`` means
    as stored (the received bytes, byte for byte). No parameter means Explicit
    VR Little Endian, the PS3.18 Table 8.7.3-2 default, transcoding when
    needed -- except for lossy stored data, which PS3.18 8.7.3 lets a server
    return as is (decoding it only makes it larger). ``producible`` as in
    :func:`negotiate_frame_syntax`.
    """
    can = producible or _decode_only
    reasons: list[str] = []
    for ts in acceptable:
        if ts == "*" or ts == stored_tsuid:
            return stored_tsuid
        if ts is None:
            if stored_tsuid in (EXPLICIT_VR_LE, IMPLICIT_VR_LE) or stored_tsuid in LOSSY:
                # Implicit VR is Explicit VR's pixels with another header: only
                # the header changes; that is cheap but still a transcoding.
                target = EXPLICIT_VR_LE if stored_tsuid == IMPLICIT_VR_LE else stored_tsuid
            else:
                target = EXPLICIT_VR_LE
            if target == stored_tsuid or can(stored_tsuid, target):
                return target
            return stored_tsuid  # the default is a preference, not a demand
        if can(stored_tsuid, ts):
            return ts
        reasons.append(f"cannot produce {ts} from {stored_tsuid}")
    raise NotAcceptable("; ".join(reasons) or "no acceptable transfer syntax")


# --- Frame decoding -------------------------------------------------------

#: Top-level attributes outside group 0028 that decoding or rendering reads.
_EXTRA_TAGS = frozenset({
    "00080016",  # SOPClassUID
    "20500020",  # PresentationLUTShape
})
_SHARED_GROUPS = "52009229"
_PER_FRAME_GROUPS = "52009230"

BulkResolver = Callable[[str], bytes]


@dataclass(frozen=True)
class FrameData:
    """One decoded frame and the dataset that describes it."""

    pixels: np.ndarray  # (rows, cols) or (rows, cols, samples)
    dataset: Dataset  # one-frame dataset; PhotometricInterpretation as decoded


def imaging_json(metadata: dict[str, Any], frame_index: int = 0) -> dict[str, Any]:
    """The part of an instance's DICOM JSON that describes its pixels.

    Group 0028 and a few others, plus, for enhanced multi-frame objects, the
    shared functional groups and the per-frame item of ``frame_index`` only
    (a 1,000-frame object's per-frame groups would dominate the cost).
    """
    out = {k: v for k, v in metadata.items() if k.startswith("0028") or k in _EXTRA_TAGS}
    if _SHARED_GROUPS in metadata:
        out[_SHARED_GROUPS] = metadata[_SHARED_GROUPS]
    per_frame = (metadata.get(_PER_FRAME_GROUPS) or {}).get("Value") or []
    if 0 <= frame_index < len(per_frame):
        out[_PER_FRAME_GROUPS] = {"vr": "SQ", "Value": [per_frame[frame_index]]}
    return out


def dataset_from_json(metadata: dict[str, Any], bulk: BulkResolver | None = None) -> Dataset:
    """A pydicom Dataset from DICOM JSON; BulkDataURIs resolved by ``bulk``.

    Without a resolver, bulk values are left empty: enough for decoding, not
    for palette or LUT data stored as bulk data (rendering then fails with
    CannotDecode).
    """
    def handler(uri: str) -> bytes:
        return bulk(uri) if bulk is not None else b""

    try:
        return Dataset.from_json(metadata, bulk_data_uri_handler=handler)
    except PixelError:
        raise
    except Exception as exc:
        raise CannotDecode(f"metadata does not describe the pixels ({type(exc).__name__}: {exc})") from exc


def frame_dataset(metadata: dict[str, Any], fragments: Sequence[bytes], tsuid: str,
                  frame_index: int = 0, bulk: BulkResolver | None = None) -> Dataset:
    """A one-frame Dataset holding ``fragments`` as its pixel data, ready to decode."""
    ds = dataset_from_json(imaging_json(metadata, frame_index), bulk)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(tsuid)
    ds.NumberOfFrames = 1
    data = b"".join(fragments)
    if tsuid in NATIVE:
        big = tsuid == EXPLICIT_VR_BE
        ds.set_original_encoding(False, not big)
        ds.PixelData = data
        # The VR matters for big endian: 8-bit OW values are byte-swapped in pairs.
        ds["PixelData"].VR = _pixel_vr(metadata, ds)
    else:
        ds.set_original_encoding(False, True)
        ds.PixelData = encapsulate([data])
        ds["PixelData"].VR = "OB"
    return ds


def _pixel_vr(metadata: dict[str, Any], ds: Dataset) -> str:
    vr = str((metadata.get("7FE00010") or {}).get("vr", ""))
    if vr in ("OB", "OW"):
        return vr
    return "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"


@guarded
def decode_frame(metadata: dict[str, Any], fragments: Sequence[bytes], tsuid: str,
                 frame_index: int = 0, bulk: BulkResolver | None = None) -> np.ndarray:
    """Decode one frame from its stored fragments and the instance's DICOM JSON.

    Returns the array pydicom's ``pixel_array`` gives for that frame: native
    byte order, color as RGB (YBR_* converted), planes interleaved.
    ``frame_index`` only selects the per-frame functional group item.
    """
    return decode_frame_data(metadata, fragments, tsuid, frame_index, bulk).pixels


@guarded
def decode_frame_data(metadata: dict[str, Any], fragments: Sequence[bytes], tsuid: str,
                      frame_index: int = 0, bulk: BulkResolver | None = None) -> FrameData:
    """As :func:`decode_frame`, with the one-frame dataset (for rendering)."""
    ds = frame_dataset(metadata, fragments, tsuid, frame_index, bulk)
    return FrameData(decode_dataset(ds, 0), ds)


def decode_dataset(ds: Dataset, index: int | None = None) -> np.ndarray:
    """Decode frame ``index`` (or all) of ``ds``; updates PhotometricInterpretation and PlanarConfiguration to match the array."""
    try:
        decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        arr, meta = decoder.as_array(ds, index=index)
    except PixelError:
        raise
    except Exception as exc:  # decoders raise many types on damaged data
        raise CannotDecode(f"cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    photometric = meta.get("photometric_interpretation")
    if photometric:
        ds.PhotometricInterpretation = str(photometric)  # e.g. YBR_FULL_422 decoded to RGB
    if arr.ndim == (4 if index is None and int(ds.get("NumberOfFrames", 1) or 1) > 1 else 3):
        ds.PlanarConfiguration = 0  # decoded samples are interleaved
    return arr


