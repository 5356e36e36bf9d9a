"""Transcoding frames and whole instances between transfer syntaxes.

Pure code (no Twisted), called in the web layer's thread pool. What can be
produced (see :func:`can_transcode`):

- anything decodable -> Explicit VR Little Endian (decoded; YBR color becomes
  RGB, planes interleaved: see ``pixels.decoded_attributes``);
- native -> RLE Lossless and JPEG 2000 (lossless, and lossy at a fixed ratio)
  with pydicom's encoders (pylibjpeg-openjpeg);
- native -> JPEG-LS, only when pyjpegls is installed (pydicom's only plugin);
- native 8-bit -> JPEG Baseline with Pillow (lossy; the client must name it);
- anything decodable of at most 16 bits -> HTJ2K (4.201 lossless, 4.202
  lossless RPCL, 4.203 lossy) with OpenJPH through imagecodecs (``htj2k``);
- compressed -> another compressed syntax by decoding first.

Not produced (NotAcceptable): JPEG Lossless (4.57/4.70: no maintained
encoder in pydicom/pylibjpeg/Pillow), JPEG Extended 12-bit, JPEG 2000 Part 2,
implicit VR or big endian (PS3.18 8.7.3 forbids them on the web).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels import get_decoder, get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

from . import htj2k
from .dicomjson import first_value
from .pixels import (
    DEFLATED_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    HTJ2K,
    IMPLICIT_VR_LE,
    J2K,
    J2K_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR,
    NATIVE,
    RLE_LOSSLESS,
    CannotDecode,
    NotAcceptable,
    decode_dataset,
    decode_frame_data,
    guarded,
)

#: Syntaxes pydicom's encoders write (availability is checked at run time).
_PYDICOM_ENCODED = (RLE_LOSSLESS, J2K_LOSSLESS, J2K, JPEG_LS_LOSSLESS, JPEG_LS_NEAR)
#: Syntaxes we can write at all.
PRODUCIBLE = frozenset({EXPLICIT_VR_LE, JPEG_BASELINE, *_PYDICOM_ENCODED, *htj2k.SYNTAXES})
LOSSY_TARGETS = frozenset({JPEG_BASELINE, J2K, JPEG_LS_NEAR, HTJ2K})

DEFAULT_JPEG_QUALITY = 90
#: Compression ratio of lossy JPEG 2000 output: visually lossless for most CT/MR.
J2K_LOSSY_RATIO = 10
JPEG_LS_NEAR_ERROR = 2


# --- What can be produced -------------------------------------------------

def encoder_available(tsuid: str) -> bool:
    """Whether an encoder for ``tsuid`` is installed (Pillow counts for JPEG Baseline)."""
    if tsuid in (EXPLICIT_VR_LE, JPEG_BASELINE):
        return True
    if tsuid in htj2k.SYNTAXES:
        return htj2k.available()
    if tsuid not in _PYDICOM_ENCODED:
        return False
    try:
        return bool(get_encoder(tsuid).is_available)
    except (NotImplementedError, ValueError):
        return False


def decoder_available(tsuid: str) -> bool:
    if tsuid in NATIVE:
        return True
    try:
        return bool(get_decoder(tsuid).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(stored_tsuid: str, target_tsuid: str, metadata: dict[str, Any] | None = None) -> bool:
    """Whether pixel data stored in ``stored_tsuid`` can be produced in ``target_tsuid``.

    With ``metadata`` (the instance's DICOM JSON), also checks the target's
    limits: JPEG Baseline holds 8-bit unsigned samples only.
    """
    return why_not(stored_tsuid, target_tsuid, metadata) is None


def why_not(stored_tsuid: str, target_tsuid: str, metadata: dict[str, Any] | None = None) -> str | None:
    """The reason ``target_tsuid`` cannot be produced, or None if it can."""
    if target_tsuid == stored_tsuid:
        return None
    if target_tsuid not in PRODUCIBLE:
        return f"transfer syntax {target_tsuid} is not produced by this server"
    if not encoder_available(target_tsuid):
        return f"no encoder for {target_tsuid} is installed"
    if not decoder_available(stored_tsuid):
        return f"no decoder for the stored transfer syntax {stored_tsuid} is installed"
    if metadata is not None and target_tsuid != EXPLICIT_VR_LE:
        return _limits(metadata, target_tsuid)
    return None


def _limits(metadata: dict[str, Any], target: str) -> str | None:
    allocated = int(first_value(metadata, "00280100", 8) or 8)
    stored = int(first_value(metadata, "00280101", allocated) or allocated)
    signed = int(first_value(metadata, "00280103", 0) or 0)
    if allocated == 1:
        return "1-bit pixel data is only served uncompressed"
    if target == JPEG_BASELINE and (stored > 8 or signed):
        return "JPEG Baseline holds 8-bit unsigned samples only"
    if target in (J2K_LOSSLESS, J2K) and stored > 24:
        return "JPEG 2000 encoding is limited to 24 bits per sample"
    if target in (JPEG_LS_LOSSLESS, JPEG_LS_NEAR) and stored > 16:
        return "JPEG-LS holds at most 16 bits per sample"
    if target in htj2k.SYNTAXES:
        return htj2k.why_not(allocated, stored)
    return None


def _check(stored: str, target: str, metadata: dict[str, Any] | None) -> None:
    reason = why_not(stored, target, metadata)
    if reason:
        raise NotAcceptable(reason)


# --- Frames -------------------------------------------------------------------

@guarded
def frame_bytes_to_target(frame_fragments: Sequence[bytes], ds_meta: Dataset | dict[str, Any],
                          stored_tsuid: str, target_tsuid: str, *, frame_index: int = 0,
                          quality: int | None = None) -> bytes:
    """One frame, from its stored fragments, in ``target_tsuid``.

    ``ds_meta`` is the instance's DICOM JSON (or a pydicom Dataset of its
    header). The same syntax returns the fragments joined; native data of any
    byte order becomes Explicit VR Little Endian without decoding (planar
    configuration kept); everything else is decoded and re-encoded. Raises
    NotAcceptable or CannotDecode.
    """
    metadata = _as_json(ds_meta)
    if target_tsuid == stored_tsuid or (target_tsuid == EXPLICIT_VR_LE and stored_tsuid == IMPLICIT_VR_LE):
        return b"".join(frame_fragments)
    _check(stored_tsuid, target_tsuid, metadata)
    if stored_tsuid == EXPLICIT_VR_BE and target_tsuid == EXPLICIT_VR_LE:
        return _swap_native(b"".join(frame_fragments), metadata)
    frame = decode_frame_data(metadata, frame_fragments, stored_tsuid, frame_index)
    return encode_array(frame.pixels, frame.dataset, target_tsuid, quality=quality)


def _as_json(meta: Dataset | dict[str, Any]) -> dict[str, Any]:
    if isinstance(meta, dict):
        return meta
    keep = Dataset()
    for elem in meta:
        if elem.tag.group == 0x0028 or elem.tag in (0x00080016, 0x20500020, 0x7FE00010):
            if elem.tag == 0x7FE00010:
                keep.add_new(elem.tag, elem.VR, b"")  # only its VR matters
            else:
                keep.add(elem)
    return keep.to_json_dict(bulk_data_threshold=1 << 62)


def _swap_native(data: bytes, metadata: dict[str, Any]) -> bytes:
    """Big endian native frame bytes to little endian, without decoding."""
    bits = int(first_value(metadata, "00280100", 16) or 16)
    vr = str((metadata.get("7FE00010") or {}).get("vr", "OW"))
    size = 2 if bits <= 16 and vr == "OW" else bits // 8  # 8-bit OW is swapped in pairs
    if size <= 1:
        return data
    if len(data) % size:
        raise CannotDecode("big endian frame is not a whole number of words; decode the instance instead")
    return np.frombuffer(data, dtype=f">u{size}").astype(f"<u{size}").tobytes()


@guarded
def frame_from_instance(part10_bytes: bytes, frame_index: int, target_tsuid: str, *,
                        quality: int | None = None) -> bytes:
    """One frame of a whole Part 10 object, for frames STOW could not address.

    Used for deflated objects, 1-bit data and fragments that could not be
    split into frames. Native targets get the frame's bytes (1-bit data packed).
    """
    ds = _read(part10_bytes)
    stored = str(ds.file_meta.TransferSyntaxUID)
    _check(stored, target_tsuid, None)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame_index < nframes:
        raise NotAcceptable(f"frame {frame_index + 1} is out of range (1..{nframes})")
    arr = decode_dataset(ds, frame_index)
    return encode_array(arr, ds, target_tsuid, quality=quality)


# --- Encoding one decoded frame -------------------------------------------

def encode_array(arr: np.ndarray, ds: Dataset, target_tsuid: str, *, quality: int | None = None) -> bytes:
    """Encode one decoded frame ``arr`` described by ``ds`` in ``target_tsuid``."""
    if target_tsuid == EXPLICIT_VR_LE:
        return native_bytes(arr, ds)
    if target_tsuid == JPEG_BASELINE:
        return _encode_jpeg_baseline(arr, ds, quality)
    if target_tsuid in _PYDICOM_ENCODED:
        return _encode_pydicom(arr, ds, target_tsuid)
    if target_tsuid in htj2k.SYNTAXES:
        return htj2k.encode(arr, _pixel_options(arr, ds), target_tsuid)
    raise NotAcceptable(f"transfer syntax {target_tsuid} is not produced by this server")


def native_bytes(arr: np.ndarray, ds: Dataset) -> bytes:
    """Little endian bytes of a frame, laid out per ``ds`` (BitsAllocated, PlanarConfiguration)."""
    bits = int(ds.get("BitsAllocated", 8) or 8)
    if bits == 1:
        return pack_bits(arr, pad=False)
    signed = int(ds.get("PixelRepresentation", 0) or 0)
    kind = "f" if arr.dtype.kind == "f" else ("i" if signed else "u")
    out = arr.astype(f"<{kind}{bits // 8}", copy=False)
    if out.ndim == 3 and int(ds.get("PlanarConfiguration", 0) or 0) == 1:
        out = np.ascontiguousarray(out.transpose(2, 0, 1))
    return out.tobytes()


def _pixel_options(arr: np.ndarray, ds: Dataset) -> dict[str, Any]:
    samples = arr.shape[2] if arr.ndim == 3 else 1
    return {
        "rows": arr.shape[0],
        "columns": arr.shape[1],
        "samples_per_pixel": samples,
        "bits_allocated": int(ds.BitsAllocated),
        "bits_stored": int(ds.get("BitsStored", ds.BitsAllocated)),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "number_of_frames": 1,
        "planar_configuration": 0,
    }


def _encode_pydicom(arr: np.ndarray, ds: Dataset, tsuid: str) -> bytes:
    opts = _pixel_options(arr, ds)
    # pydicom applies the JPEG 2000 colour transform when told the target model.
    opts["photometric_interpretation"] = encoded_photometric(opts["photometric_interpretation"], tsuid)
    if tsuid == J2K:
        opts["j2k_cr"] = [J2K_LOSSY_RATIO]
    elif tsuid == JPEG_LS_NEAR:
        opts["jls_error"] = JPEG_LS_NEAR_ERROR
    if opts["bits_stored"] < opts["bits_allocated"] and opts["pixel_representation"]:
        arr = _clip_signed(arr, opts["bits_stored"])
    try:
        return bytes(get_encoder(tsuid).encode(arr, **opts))
    except Exception as exc:  # encoders reject what they cannot hold with many types
        raise NotAcceptable(f"cannot encode this image as {tsuid} ({type(exc).__name__}: {exc})") from exc


def _clip_signed(arr: np.ndarray, bits: int) -> np.ndarray:
    # Decoders sign-extend; encoders check that values fit in BitsStored.
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    clipped: np.ndarray = np.clip(arr, low, high)
    return clipped


def _encode_jpeg_baseline(arr: np.ndarray, ds: Dataset, quality: int | None) -> bytes:
    if int(ds.get("BitsStored", 8) or 8) > 8 or arr.dtype.itemsize > 1 or arr.dtype.kind == "i":
        raise NotAcceptable("JPEG Baseline holds 8-bit unsigned samples only")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3 and photometric not in ("RGB", "YBR_FULL"):
        raise NotAcceptable(f"cannot encode {photometric} as JPEG Baseline")
    image = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8, copy=False)),
                            "L" if arr.ndim == 2 else ("RGB" if photometric == "RGB" else "YCbCr"))
    out = io.BytesIO()
    # 4:2:2 subsampling is what YBR_FULL_422 (PS3.5 8.2.1) describes.
    image.save(out, "JPEG", quality=quality or DEFAULT_JPEG_QUALITY, subsampling=1)
    return out.getvalue()


# --- Whole instances ----------------------------------------------------------

@guarded
def transcode_instance(part10_bytes: bytes, target_tsuid: str, *, quality: int | None = None) -> bytes:
    """A whole Part 10 object re-encoded in ``target_tsuid``.

    The same syntax returns the input unchanged. The SOP Instance UID is kept
    (this is another representation of the same instance, as PS3.18 retrieve
    transcoding expects); lossy targets set Lossy Image Compression, Ratio and
    Method. Objects without pixel data can only go to Explicit VR Little Endian.
    """
    ds = _read(part10_bytes)
    stored = str(ds.file_meta.TransferSyntaxUID)
    if target_tsuid == stored:
        return part10_bytes
    has_pixels = "PixelData" in ds
    if not has_pixels and target_tsuid != EXPLICIT_VR_LE:
        raise NotAcceptable(f"an object without pixel data is not encoded in {target_tsuid}")
    if has_pixels:
        _check(stored, target_tsuid, None)
        _to_native(ds, stored)
        if target_tsuid != EXPLICIT_VR_LE:
            _compress(ds, target_tsuid, quality)
    ds.file_meta.TransferSyntaxUID = UID(target_tsuid)
    out = io.BytesIO()
    dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def element_value(part10_bytes: bytes, path: str) -> bytes | None:
    """The value of the element at a bulk data ``path`` (a tag, then item
    index/tag pairs) as Explicit VR Little Endian bytes, or None if absent.

    For objects whose bulk data has no byte range in the stored file
    (deflated ones): the object is inflated and read whole."""
    ds = _read(part10_bytes)
    _to_native(ds, str(ds.file_meta.get("TransferSyntaxUID", "")))
    steps = path.split("/")
    node: Any = ds
    try:
        for i in range(0, len(steps) - 1, 2):
            node = node[int(steps[i], 16)].value[int(steps[i + 1])]
        value = node[int(steps[-1], 16)].value
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    return value if isinstance(value, bytes) else None


def _read(part10_bytes: bytes) -> Dataset:
    try:
        return dcmread(io.BytesIO(part10_bytes))
    except Exception as exc:
        raise CannotDecode(f"not a readable DICOM object ({type(exc).__name__})") from exc


def _to_native(ds: Dataset, stored: str) -> None:
    """Make ``ds`` Explicit VR Little Endian native in memory."""
    if stored in (EXPLICIT_VR_LE, IMPLICIT_VR_LE, DEFLATED_LE):
        ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)
        return
    arr = decode_dataset(ds)
    if stored == EXPLICIT_VR_BE:
        _swap_other_words(ds)
    if int(ds.BitsAllocated) == 1:
        ds.PixelData = pack_bits(arr, pad=False)  # frames are packed end to end
    else:
        ds.PixelData = b"".join(native_bytes(frame, ds) for frame in _frames(ds, arr))
    if len(ds.PixelData) % 2:
        ds.PixelData += b"\0"
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds["PixelData"].is_undefined_length = False
    for tag in (0x7FE00001, 0x7FE00002):  # extended offset table and its lengths
        if tag in ds:
            del ds[tag]
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)
    ds.set_original_encoding(False, True)


_WORD = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def _swap_other_words(ds: Dataset) -> None:
    """Byte-swap OW/OL/OF/OD/OV values (pydicom keeps them as read) for little endian."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_other_words(item)
        elif elem.VR in _WORD and elem.tag != 0x7FE00010 and isinstance(elem.value, bytes):
            size = _WORD[elem.VR]
            data = elem.value[: len(elem.value) // size * size]
            elem.value = np.frombuffer(data, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def _frames(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    return arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]


def _compress(ds: Dataset, tsuid: str, quality: int | None) -> None:
    """Encode every frame of native ``ds`` in ``tsuid`` and encapsulate them."""
    arr = decode_dataset(ds)
    encoded = [encode_array(frame, ds, tsuid, quality=quality) for frame in _frames(ds, arr)]
    native_size = len(ds.PixelData)
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    _set_compressed_attributes(ds, tsuid)
    if tsuid in LOSSY_TARGETS:
        _mark_lossy(ds, tsuid, native_size / max(1, sum(len(f) for f in encoded)))


def _set_compressed_attributes(ds: Dataset, tsuid: str) -> None:
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PhotometricInterpretation = encoded_photometric(str(ds.PhotometricInterpretation), tsuid)
        ds.PlanarConfiguration = 0


#: Colour model each encoder writes for RGB input (PS3.5 8.2: the MCTs of JPEG
#: 2000; Pillow's JFIF YCbCr 4:2:2 for JPEG Baseline).
_RGB_ENCODED_AS = {J2K_LOSSLESS: "YBR_RCT", J2K: "YBR_ICT", JPEG_BASELINE: "YBR_FULL_422"}


def encoded_photometric(decoded: str, target: str) -> str:
    """Photometric Interpretation of decoded ``decoded`` data once encoded in ``target``."""
    if target in htj2k.SYNTAXES:
        return htj2k.encoded_photometric(decoded, target)
    return _RGB_ENCODED_AS.get(target, decoded) if decoded == "RGB" else decoded


def decoded_photometric(photometric: str) -> str:
    """What decoding makes of a stored colour model: pydicom converts YBR_* to RGB."""
    return "RGB" if photometric.startswith("YBR") else photometric


def frame_attributes(metadata: dict[str, Any], stored_tsuid: str, target_tsuid: str) -> dict[str, Any]:
    """Attributes that differ from the stored metadata for frames served in ``target_tsuid``.

    Frames that go through decoding have YBR colour converted to RGB and
    interleaved planes; re-encoding may change the colour model again. A
    client decoding such frames with the stored metadata needs these values;
    the web layer may send them (e.g. in a Warning) or apply them to metadata.
    """
    if target_tsuid == stored_tsuid or (stored_tsuid in NATIVE and target_tsuid == EXPLICIT_VR_LE):
        return {}
    if int(first_value(metadata, "00280002", 1) or 1) == 1:
        return {}
    photometric = decoded_photometric(str(first_value(metadata, "00280004", "") or ""))
    if target_tsuid != EXPLICIT_VR_LE:
        photometric = encoded_photometric(photometric, target_tsuid)
    return {"PhotometricInterpretation": photometric, "PlanarConfiguration": 0}


_LOSSY_METHOD = {JPEG_BASELINE: "ISO_10918_1", J2K: "ISO_15444_1", JPEG_LS_NEAR: "ISO_14495_1",
                 HTJ2K: "ISO_15444_15"}


def _mark_lossy(ds: Dataset, tsuid: str, ratio: float) -> None:
    # PS3.3 C.7.6.1.1.5: once lossy, always flagged; ratios and methods accumulate.
    ratios = [str(r) for r in (ds.get("LossyImageCompressionRatio") or [])] if "LossyImageCompressionRatio" in ds else []
    methods = list(ds.get("LossyImageCompressionMethod") or []) if "LossyImageCompressionMethod" in ds else []
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"[:16]]
    ds.LossyImageCompressionMethod = [*methods, _LOSSY_METHOD[tsuid]]
