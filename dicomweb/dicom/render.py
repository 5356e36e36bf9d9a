"""Rendered images and thumbnails (PS3.18 8.3.5, 8.7.4): DICOM pixels to JPEG/PNG/GIF.

Pure code (no Twisted), run in the web layer's thread pool. The pipeline for
one frame: decode -> Modality LUT (rescale or LUT sequence) -> VOI (the
``window`` parameter, else the object's first Window Center/Width, else its
VOI LUT Sequence, else the frame's min/max) -> MONOCHROME1 / INVERSE
presentation inverted -> 8 bits -> viewport scaling -> encoding. Colour
objects are shown as RGB (YBR converted by the decoder, palettes applied).
Enhanced multi-frame objects take rescale and window from their per-frame or
shared functional groups.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
)

from .pixels import (
    BulkResolver,
    CannotDecode,
    FrameData,
    NotAcceptable,
    decode_dataset,
    decode_frame_data,
    guarded,
)

RENDER_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = 128

Window = tuple[float, float, str]  # (center, width, function: LINEAR | LINEAR_EXACT | SIGMOID)
Viewport = tuple[int | None, int | None]

_FRAME_VOI = "FrameVOILUTSequence"
_PIXEL_TRANSFORM = "PixelValueTransformationSequence"


@guarded
def render(source: bytes | Dataset | FrameData, frame_index: int = 0, media_type: str = "image/jpeg", *,
           window: Window | None = None, viewport: Viewport | None = None,
           quality: int | None = None) -> bytes:
    """Render frame ``frame_index`` (0-based) of ``source`` as ``media_type``.

    ``source`` is a whole Part 10 object (bytes or a Dataset with pixel data)
    or a :class:`FrameData` from ``pixels.decode_frame_data`` (one frame,
    decoded from its stored fragments; ``frame_index`` is then ignored).
    ``viewport`` (width, height) scales the image to fit inside it keeping its
    aspect ratio (either may be None); ``quality`` (1-100) is for JPEG.
    Raises NotAcceptable (media type) or CannotDecode.
    """
    if media_type not in RENDER_MEDIA_TYPES:
        raise NotAcceptable(f"cannot render as {media_type}")
    arr, ds = _frame(source, frame_index)
    image = Image.fromarray(to_display(arr, ds, window))
    image = _fit(image, viewport, upscale=True)
    return _encode(image, media_type, quality)


@guarded
def render_frame(metadata: dict[str, Any], fragments: Sequence[bytes], tsuid: str, frame_index: int = 0,
                 media_type: str = "image/jpeg", *, window: Window | None = None,
                 viewport: Viewport | None = None, quality: int | None = None,
                 bulk: BulkResolver | None = None) -> bytes:
    """Render one frame from its stored fragments and the instance's DICOM JSON.

    ``bulk`` resolves BulkDataURIs (palette or LUT data kept as bulk data).
    """
    frame = decode_frame_data(metadata, fragments, tsuid, frame_index, bulk)
    return render(frame, 0, media_type, window=window, viewport=viewport, quality=quality)


@guarded
def thumbnail(source: bytes | Dataset | FrameData, frame_index: int = 0, media_type: str = "image/jpeg", *,
              size: int = THUMBNAIL_SIZE, viewport: Viewport | None = None,
              quality: int | None = None) -> bytes:
    """A small rendering: fits in ``size`` x ``size`` (or ``viewport``), never enlarged."""
    if media_type not in RENDER_MEDIA_TYPES:
        raise NotAcceptable(f"cannot render as {media_type}")
    arr, ds = _frame(source, frame_index)
    image = Image.fromarray(to_display(arr, ds, None))
    image = _fit(image, viewport or (size, size), upscale=False)
    return _encode(image, media_type, quality)


def _frame(source: bytes | Dataset | FrameData, frame_index: int) -> tuple[np.ndarray, Dataset]:
    if isinstance(source, FrameData):
        return source.pixels, _flatten_groups(source.dataset, 0)
    if isinstance(source, bytes):
        try:
            source = dcmread(io.BytesIO(source))
        except Exception as exc:
            raise CannotDecode(f"not a readable DICOM object ({type(exc).__name__})") from exc
    if "PixelData" not in source:
        raise NotAcceptable("the object has no pixel data to render")
    nframes = int(source.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame_index < nframes:
        raise NotAcceptable(f"frame {frame_index + 1} is out of range (1..{nframes})")
    arr = decode_dataset(source, frame_index)
    return arr, _flatten_groups(source, frame_index)


def _flatten_groups(ds: Dataset, frame_index: int) -> Dataset:
    """Copy rescale and window of an enhanced object's functional groups to the top level.

    pydicom's LUT functions read top-level attributes only. The per-frame item
    wins over the shared one (PS3.3 C.7.6.16).
    """
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        index = frame_index if len(per_frame) > frame_index else 0
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for keyword, attrs in ((_PIXEL_TRANSFORM, ("RescaleSlope", "RescaleIntercept", "RescaleType")),
                           (_FRAME_VOI, ("WindowCenter", "WindowWidth", "VOILUTFunction"))):
        item = next((g[keyword][0] for g in groups if g.get(keyword)), None)
        if item is not None and attrs[0] not in ds:
            for attr in attrs:
                if attr in item:
                    setattr(ds, attr, item[attr].value)
    return ds


# --- Pixel values to 8-bit display values -------------------------------------

def to_display(arr: np.ndarray, ds: Dataset, window: Window | None = None) -> np.ndarray:
    """8-bit grey (rows, cols) or RGB (rows, cols, 3) display values of one frame."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        return _palette(arr, ds)
    if arr.ndim == 3:
        return _color(arr, ds, photometric)
    return _grey(arr, ds, window, photometric)


def _palette(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    try:
        rgb = apply_color_lut(arr, ds)
    except Exception as exc:  # missing or bulk LUT data, bad descriptors
        raise CannotDecode(f"cannot apply the palette ({type(exc).__name__}: {exc})") from exc
    # Some writers put 8-bit values in 16-bit LUT entries; viewers treat those as 8-bit.
    bits = 16 if rgb.dtype.itemsize > 1 and int(rgb.max()) > 255 else 8
    return _scale_to_8bit(rgb, bits)


def _color(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if photometric.startswith("YBR") and photometric not in ("YBR_RCT", "YBR_ICT"):
        arr = convert_color_space(arr, photometric, "RGB")  # data not converted by the decoder
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    return _scale_to_8bit(arr, bits)


def _scale_to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if bits <= 8 and arr.dtype == np.uint8:
        return arr
    top = float((1 << bits) - 1)
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _grey(arr: np.ndarray, ds: Dataset, window: Window | None, photometric: str) -> np.ndarray:
    try:
        values = apply_modality_lut(arr, ds).astype(np.float64, copy=False)
    except Exception as exc:
        raise CannotDecode(f"cannot apply the modality LUT ({type(exc).__name__}: {exc})") from exc
    if window is not None:
        out = apply_window(values, *window)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = apply_window(values, _first_value(ds.WindowCenter), _first_value(ds.WindowWidth),
                           str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR"))
    elif ds.get("VOILUTSequence"):
        out = _voi_lut(values, ds)
    else:
        out = _min_max(values)
    inverse = photometric == "MONOCHROME1"
    if str(ds.get("PresentationLUTShape", "")).strip() == "INVERSE":
        inverse = not inverse
    return 255 - out if inverse else out


def _first_value(value: Any) -> float:
    # Window Center/Width are multi-valued: the first pair is the default view.
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise CannotDecode(f"unusable window value {value!r}") from exc


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window ``values`` to 0..255 (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""
    function = function.strip().upper() or "LINEAR"
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    elif function == "LINEAR_EXACT":
        width = max(width, 1e-6)
        out = ((values - center) / width + 0.5) * 255.0
    else:
        width = max(width, 1.0)
        if width == 1.0:
            out = np.where(values < center - 0.5, 0.0, 255.0)
        else:
            out = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    try:
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        out = apply_voi_lut(values.astype(np.int64) if np.all(np.mod(values, 1) == 0) else values, ds,
                            index=0, prefer_lut=True)
    except Exception as exc:
        raise CannotDecode(f"cannot apply the VOI LUT ({type(exc).__name__}: {exc})") from exc
    return _scale_to_8bit(np.asarray(out), bits)


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


# --- Geometry and encoding -------------------------------------------------------

def fit_size(size: tuple[int, int], viewport: Viewport, upscale: bool = True) -> tuple[int, int]:
    """The largest (width, height) with ``size``'s aspect ratio inside ``viewport``.

    PS3.18 8.3.5.1.3: the image is scaled to fit the viewport, aspect kept; an
    absent dimension does not constrain.
    """
    width, height = size
    vw, vh = viewport
    scales = [v / s for v, s in ((vw, width), (vh, height)) if v]
    if not scales:
        return size
    scale = min(scales)
    if not upscale:
        scale = min(scale, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _fit(image: Image.Image, viewport: Viewport | None, upscale: bool) -> Image.Image:
    if not viewport:
        return image
    target = fit_size(image.size, viewport, upscale)
    if target == image.size:
        return image
    return image.resize(target, Image.Resampling.LANCZOS)


def _encode(image: Image.Image, media_type: str, quality: int | None) -> bytes:
    out = io.BytesIO()
    if media_type == "image/jpeg":
        q = DEFAULT_QUALITY if quality is None else max(1, min(100, int(quality)))
        image.save(out, "JPEG", quality=q)
    elif media_type == "image/png":
        image.save(out, "PNG")
    else:
        image.save(out, "GIF")
    return out.getvalue()
