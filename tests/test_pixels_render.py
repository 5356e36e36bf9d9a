"""Rendered images and thumbnails: size, content, VOI, inversion, colour."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomweb.dicom.analyze import analyze
from dicomweb.dicom.pixels import CannotDecode, NotAcceptable, decode_frame_data
from dicomweb.dicom.render import (
    apply_window,
    fit_size,
    render,
    render_frame,
    thumbnail,
)

warnings.filterwarnings("ignore", module="pydicom")

DATA = Path(pydicom.__file__).parent.parent / "data_store" / "data"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

#: One file per kind of pixel data the pipeline handles differently.
RENDER_FILES = [
    TEST_FILES / "CT_small.dcm",  # signed 16-bit, rescale, window in the object
    TEST_FILES / "MR_small_jp2klossless.dcm",
    DATA / "emri_small_RLE.dcm",  # multi-frame RLE
    TEST_FILES / "examples_ybr_color.dcm",  # multi-frame JPEG baseline YBR_FULL_422
    TEST_FILES / "examples_palette.dcm",  # PALETTE COLOR
    TEST_FILES / "SC_rgb_small_odd_jpeg.dcm",
    DATA / "vlut_04.dcm",  # VOI LUT sequence
    DATA / "mlut_18.dcm",  # modality LUT sequence
    DATA / "eCT_Supplemental.dcm",  # enhanced CT: functional groups
    DATA / "US1_J2KR.dcm",  # RGB JPEG 2000
    DATA / "MR2_J2KI.dcm",
]
RENDER_FILES = [p for p in RENDER_FILES if p.exists()]


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png", "image/gif"])
@pytest.mark.parametrize("path", RENDER_FILES, ids=[p.name for p in RENDER_FILES])
def test_render_whole_object(path: Path, media_type: str) -> None:
    ds = pydicom.dcmread(path)
    out = render(path.read_bytes(), 0, media_type, viewport=(200, 150))
    image = _open(out)
    assert image.format == {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}[media_type]
    assert image.size == fit_size((int(ds.Columns), int(ds.Rows)), (200, 150))
    assert max(image.size[0] / 200, image.size[1] / 150) == pytest.approx(1.0, abs=0.01)
    assert np.asarray(image.convert("RGB")).std() > 0


@pytest.mark.parametrize("path", RENDER_FILES, ids=[p.name for p in RENDER_FILES])
def test_render_from_stored_frame_equals_whole_object(path: Path) -> None:
    with path.open("rb") as fp:
        info = analyze(fp)
    assert info.frames
    index = len(info.frames) - 1
    data = path.read_bytes()
    fragments = [data[o:o + n] for o, n in info.frames[index]]
    from_frame = render_frame(info.metadata, fragments, info.transfer_syntax_uid, index, "image/png")
    assert _open(from_frame).tobytes() == _open(render(data, index, "image/png")).tobytes()


def test_thumbnail_is_small_and_not_enlarged() -> None:
    data = (DATA / "MR2_J2KR.dcm").read_bytes()
    assert max(_open(thumbnail(data)).size) == 128
    small = (TEST_FILES / "SC_rgb_small_odd.dcm").read_bytes()  # 3 x 3
    assert _open(thumbnail(small, media_type="image/png")).size == (3, 3)


def test_viewport_one_dimension_and_upscale() -> None:
    assert fit_size((512, 256), (None, 128)) == (256, 128)
    assert fit_size((100, 50), (400, 400)) == (400, 200)
    assert fit_size((100, 50), (400, 400), upscale=False) == (100, 50)
    assert fit_size((100, 50), (None, None)) == (100, 50)


def _synthetic(photometric: str, pixels: np.ndarray, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


RAMP = np.tile(np.arange(0, 4000, 40, dtype=np.uint16), (20, 1))  # 20 x 100, dark to bright


def _grey(data: bytes) -> np.ndarray:
    return np.asarray(_open(data).convert("L")).astype(int)


def test_monochrome1_is_inverted() -> None:
    mono2 = _grey(render(_synthetic("MONOCHROME2", RAMP), 0, "image/png"))
    mono1 = _grey(render(_synthetic("MONOCHROME1", RAMP), 0, "image/png"))
    assert mono2[0, 0] < mono2[0, -1]  # bright on the right
    assert mono1[0, 0] > mono1[0, -1]
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_window_parameter_overrides_the_object() -> None:
    ds = _synthetic("MONOCHROME2", RAMP, WindowCenter=2000, WindowWidth=4000)
    default = _grey(render(ds, 0, "image/png"))
    narrow = _grey(render(ds, 0, "image/png", window=(1000.0, 200.0, "LINEAR")))
    assert not np.array_equal(default, narrow)
    assert narrow[0, 50] == 255 and narrow[0, 20] == 0  # 2000 above, 800 below the window
    assert 0 < default[0, 50] < 255


def test_rescale_is_applied_before_the_window() -> None:
    # The window is in rescaled units (Hounsfield for CT).
    ds = _synthetic("MONOCHROME2", RAMP, RescaleSlope=1, RescaleIntercept=-1000,
                    WindowCenter=0, WindowWidth=100)
    grey = _grey(render(ds, 0, "image/png"))
    assert grey[0, 23] == 0 and grey[0, 27] == 255  # stored 920 -> -80 HU, 1080 -> +80 HU
    assert 120 < grey[0, 25] < 136  # stored 1000 -> 0 HU, the centre


def test_apply_window_functions() -> None:
    values = np.array([0.0, 50.0, 100.0])
    assert apply_window(values, 50, 100).tolist() == [0, 129, 255]  # C.11.2.1.2: (x - (c - 0.5)) / (w - 1)
    assert apply_window(values, 50, 100, "SIGMOID")[1] == 128
    assert apply_window(values, 50, 100, "LINEAR_EXACT").tolist() == [0, 128, 255]


def test_jpeg_quality_changes_size() -> None:
    data = (DATA / "MR2_UNCR.dcm").read_bytes()
    assert len(render(data, 0, "image/jpeg", quality=95)) > len(render(data, 0, "image/jpeg", quality=20))


def test_colour_object_renders_rgb() -> None:
    image = _open(render((TEST_FILES / "examples_ybr_color.dcm").read_bytes(), 3, "image/png"))
    assert image.mode == "RGB"
    rgb = np.asarray(image).astype(int)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() > 1  # really coloured, not grey


def test_render_errors() -> None:
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    with pytest.raises(NotAcceptable):
        render(data, 0, "image/bmp")
    with pytest.raises(NotAcceptable):
        render(data, 1, "image/jpeg")  # one frame only
    with pytest.raises(CannotDecode):
        render(b"garbage", 0, "image/jpeg")
    with pytest.raises(NotAcceptable):
        render((TEST_FILES / "rtplan.dcm").read_bytes(), 0, "image/jpeg")  # no pixel data


def test_render_frame_data_input() -> None:
    path = DATA / "emri_small_RLE.dcm"
    with path.open("rb") as fp:
        info = analyze(fp)
    assert info.frames
    data = path.read_bytes()
    frame = decode_frame_data(info.metadata, [data[o:o + n] for o, n in info.frames[4]],
                              info.transfer_syntax_uid, 4)
    assert _open(render(frame, media_type="image/png")).size == (64, 64)
