"""High-Throughput JPEG 2000 (ISO/IEC 15444-15) encoding of decoded frames.

Pure code (no Twisted). The encoder is OpenJPH through ``imagecodecs``; the
decoders (pydicom with pylibjpeg-openjpeg) read what it writes. The three
transfer syntaxes of PS3.5 8.2.14 / PS3.6 Table A-1:

- 1.2.840.10008.1.2.4.201 HTJ2K Lossless: reversible 5/3 wavelet (and the
  reversible colour transform for RGB, Photometric Interpretation YBR_RCT);
- 1.2.840.10008.1.2.4.202 HTJ2K Lossless RPCL: the same, with the packets in
  resolution-position-component-layer order, a TLM marker segment and one
  tile-part per resolution, so that the first bytes of a frame decode to a low
  resolution image (what a viewer's progressive loading fetches with a byte
  ``Range``);
- 1.2.840.10008.1.2.4.203 HTJ2K: irreversible 9/7 wavelet (YBR_ICT for RGB) at
  the quantization step :func:`lossy_step` documents (1/1,024 of the frame's
  value range).

Every codestream written here is RPCL with TLM and resolution tile-parts
(OpenJPH writes RPCL by default): it costs about 100 bytes a frame and lets
every one of the three syntaxes be drawn progressively.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .pixels import HTJ2K, HTJ2K_LOSSLESS, HTJ2K_RPCL, NotAcceptable

SYNTAXES = (HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K)
LOSSLESS = frozenset({HTJ2K_LOSSLESS, HTJ2K_RPCL})
#: OpenJPH reads 8- and 16-bit integer samples here; 32-bit codestreams it
#: writes are not read back by the decoders the server relies on (measured).
MAX_BITS = 16
#: Resolution levels (wavelet decompositions): a 512x512 frame's first level is 16x16.
DECOMPOSITIONS = 5
#: Lossy step, as a fraction of the frame's own value range (max - min): one
#: step in 1,024 of it, never below half a grey level. The frame's range, not
#: BitsStored's, because CT written as 16-bit uses about 12 bits.
LOSSY_FRACTION = 1 / 1024

_TILEPART_RESOLUTIONS = 1


def available() -> bool:
    """Whether the HTJ2K encoder (imagecodecs built with OpenJPH) is installed."""
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(getattr(getattr(imagecodecs, "HTJ2K", None), "available", False))


def why_not(bits_allocated: int, bits_stored: int) -> str | None:
    """The reason samples of this size cannot be written as HTJ2K here, or None."""
    if bits_allocated == 1:
        return "1-bit pixel data is only served uncompressed"
    if bits_allocated > MAX_BITS or bits_stored > MAX_BITS:
        return f"HTJ2K is produced for at most {MAX_BITS} bits per sample"
    return None


def lossy_step(value_range: int, bits_encoded: int) -> float:
    """OpenJPH's quantization step (relative to the encoded range 2**bits_encoded)
    for the lossy syntax: :data:`LOSSY_FRACTION` of the frame's ``value_range``,
    never below half a grey level."""
    levels = max(0.5, value_range * LOSSY_FRACTION)
    return levels / float(1 << bits_encoded)


def encoded_photometric(decoded: str, tsuid: str) -> str:
    """Photometric Interpretation of decoded RGB data once written as ``tsuid`` (PS3.5 8.2.14)."""
    if decoded != "RGB":
        return decoded
    return "YBR_RCT" if tsuid in LOSSLESS else "YBR_ICT"


def encode(arr: np.ndarray, opts: dict[str, Any], tsuid: str) -> bytes:
    """One decoded frame ``arr`` ((rows, cols) or (rows, cols, samples)) as an HTJ2K codestream.

    ``opts`` holds ``bits_allocated``, ``bits_stored`` and ``pixel_representation``.
    """
    import imagecodecs

    if tsuid not in SYNTAXES:
        raise NotAcceptable(f"transfer syntax {tsuid} is not HTJ2K")
    reason = why_not(int(opts["bits_allocated"]), int(opts["bits_stored"]))
    if reason:
        raise NotAcceptable(reason)
    samples = _samples(arr, int(opts["bits_allocated"]), bool(opts["pixel_representation"]))
    lossless = tsuid in LOSSLESS
    span = int(samples.max()) - int(samples.min()) + 1 if samples.size else 1
    step = None if lossless else lossy_step(span, samples.dtype.itemsize * 8)
    try:
        data = imagecodecs.htj2k_encode(
            samples, step, reversible=lossless, resolutions=_levels(samples),
            rgb=samples.ndim == 3, tlm=True, tilepart=_TILEPART_RESOLUTIONS)
    except Exception as exc:  # the codec raises its own error type and ValueError
        raise NotAcceptable(f"cannot encode this image as HTJ2K ({type(exc).__name__}: {exc})") from exc
    return bytes(data)


def _samples(arr: np.ndarray, bits_allocated: int, signed: bool) -> np.ndarray:
    """The frame as 8- or 16-bit integers of the stored signedness, C-contiguous."""
    if arr.dtype.kind not in "iu":
        raise NotAcceptable("HTJ2K is produced for integer samples only")
    size = 1 if bits_allocated <= 8 else 2
    return np.ascontiguousarray(arr.astype(f"{'i' if signed else 'u'}{size}", copy=False))


def _levels(arr: np.ndarray) -> int:
    """Wavelet decompositions: :data:`DECOMPOSITIONS`, fewer for small frames
    (each level halves the smallest side, which must stay at least 1)."""
    smallest = int(min(arr.shape[0], arr.shape[1]))
    return max(1, min(DECOMPOSITIONS, smallest.bit_length() - 1))
