"""The benchmark corpus: generated once, deterministically, cached on disk.

Two generators:

* ``ensure_corpus`` writes real Part 10 files with pydicom (the 1,200-instance
  corpus, the 600-instance series, the multi-frame JPEG 2000 object). They are
  cached under ``bench/.corpus/<spec>/`` with a manifest.
* ``Template`` renders many instances from one encoded dataset by patching
  fixed-width slots (UIDs, names, dates, pixels) in the bytes. Used for the
  100,000-instance scale corpus and the 2 GB study: rendering is faster than
  reading the same bytes back from disk, so those are made on the fly.

Every UID starts with ``uid_root(variant)``. The variant is one digit, so
``with_variant`` can turn a cached file into a copy with fresh UIDs by a
same-length byte replacement — that is how repeated STOW rounds store new
instances without keeping several copies of the corpus.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

GENERATOR_VERSION = 6  # bump when the files change, so caches are rebuilt
ROOT = "1.2.826.0.1.3680043.8.498.1729"  # pydicom's test root + a benchmark arc
CORPUS_DIR = Path(__file__).resolve().parent / ".corpus"

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"

# UTF-8, several components, one with ideographic and phonetic groups.
PATIENT_NAMES = [
    "Müller^Jürgen^Karl^Dr.",
    "Smith^John^Quincy^Mr^Jr",
    "García Márquez^José^María",
    "Ødegård^Åse^Marit",
    "Dubois^Hélène",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "O'Brien^Siobhán",
    "Smith-Jones^Anna^Maria",
    "Nováková^Zuzana",
    "Kowalski^Łukasz^Piotr",
]

# The filtered study search of the benchmark. The expected matches are
# computed from the manifest, so a server that ignores a filter is caught.
QIDO_NAME = "Smith*"
QIDO_DATES = ("20180101", "20221231")


@dataclass(frozen=True)
class Spec:
    name: str
    studies: int
    series_per_study: int
    instances_per_series: int
    big_series: int  # instances of the one-series study used for metadata
    j2k_frames: int
    size: int = 512


FULL = Spec("full", studies=20, series_per_study=3, instances_per_series=20, big_series=600, j2k_frames=100)
QUICK = Spec("quick", studies=3, series_per_study=2, instances_per_series=20, big_series=100, j2k_frames=20)


@dataclass
class Instance:
    group: str  # "main" | "big" | "j2k"
    study: str
    series: str
    sop: str
    path: str  # relative to the corpus directory
    size: int
    patient_name: str
    study_date: str
    frames: int = 1


@dataclass
class Corpus:
    spec: Spec
    root: Path
    instances: list[Instance]

    def group(self, name: str) -> list[Instance]:
        return [i for i in self.instances if i.group == name]

    def studies(self, group: str = "main") -> dict[str, list[Instance]]:
        out: dict[str, list[Instance]] = {}
        for inst in self.group(group):
            out.setdefault(inst.study, []).append(inst)
        return out

    def read(self, inst: Instance, variant: int = 0) -> bytes:
        return with_variant((self.root / inst.path).read_bytes(), variant)

    def expected_qido_matches(self) -> int:
        """Studies of the main corpus matched by the benchmark's filtered search."""
        prefix = QIDO_NAME.rstrip("*").lower()
        lo, hi = QIDO_DATES
        found = {i.study for i in self.instances
                 if i.patient_name.lower().startswith(prefix) and lo <= i.study_date <= hi}
        return len(found)


def uid_root(variant: int) -> str:
    assert 0 <= variant <= 9
    return f"{ROOT}.{variant}"


def uid(variant: int, *parts: int) -> str:
    return ".".join([uid_root(variant), *map(str, parts)])


def with_variant(data: bytes, variant: int) -> bytes:
    """Same bytes with every corpus UID moved to another variant (same length)."""
    if variant == 0:
        return data
    return data.replace(uid_root(0).encode() + b".", uid_root(variant).encode() + b".")


# -- pixel data -----------------------------------------------------------------


def phantom(size: int, k: int) -> np.ndarray:
    """A CT-like slice: body disc, a moving bright insert, a little noise."""
    y, x = np.mgrid[0:size, 0:size]
    c = size / 2
    img = np.where((x - c) ** 2 + (y - c) ** 2 < (0.4 * size) ** 2, 1024, 0).astype(np.uint16)
    r = size * (0.05 + 0.03 * np.sin(k / 7))
    img[(x - c * 0.7) ** 2 + (y - c) ** 2 < r**2] = 2000
    noise = np.random.default_rng(k).integers(0, 40, (size, size), dtype=np.uint16)
    return img + noise


# -- datasets -------------------------------------------------------------------


def base_dataset(modality: str, sop_class: str, size: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.Manufacturer = "dicomweb-bench"
    ds.InstitutionName = "Hôpital Général"
    ds.ReferringPhysicianName = "Référent^Éloïse"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.PatientSex = "O"
    ds.PatientBirthDate = "19600101"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def file_meta(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    return meta


def set_study(ds: Dataset, study_no: int, kind: int) -> None:
    """Patient and study attributes; dates spread over 2015-2024."""
    ds.PatientName = PATIENT_NAMES[study_no % len(PATIENT_NAMES)]
    ds.PatientID = f"BENCH-{kind}-{study_no % len(PATIENT_NAMES):03d}"
    ds.StudyInstanceUID = uid(0, kind, study_no)
    ds.StudyDate = f"{2015 + (study_no * 7) % 10}{1 + study_no % 12:02d}{1 + (study_no * 3) % 28:02d}"
    ds.StudyTime = f"{8 + study_no % 10:02d}{study_no % 60:02d}00"
    ds.AccessionNumber = f"ACC{kind}{study_no:05d}"
    ds.StudyID = str(study_no)
    ds.StudyDescription = f"Bench study {study_no} - thorax"


def set_series(ds: Dataset, study_no: int, series_no: int, kind: int) -> None:
    ds.SeriesInstanceUID = uid(0, kind, study_no, series_no)
    ds.SeriesNumber = series_no + 1
    ds.SeriesDescription = f"{ds.Modality} series {series_no + 1}"
    ds.FrameOfReferenceUID = uid(0, kind, study_no, series_no, 0)
    ds.SeriesDate = ds.StudyDate


def set_instance(ds: Dataset, n: int, kind: int, study_no: int, series_no: int) -> None:
    ds.SOPInstanceUID = uid(0, kind, study_no, series_no, n + 1)
    ds.InstanceNumber = n + 1
    ds.ImagePositionPatient = ["-180", "-180", f"{-n * 1.0:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{-n * 1.0:.1f}"


def series_modality(study_no: int, series_no: int) -> str:
    """Two CT series and one MR or PT series per study: several modalities."""
    if series_no < 2:
        return "CT"
    return "MR" if study_no % 2 else "PT"


# -- writing the cached corpus --------------------------------------------------


def _write(root: Path, rel: str, ds: Dataset) -> int:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def _instance(group: str, ds: Dataset, rel: str, size: int) -> Instance:
    return Instance(group, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, rel, size,
                    str(ds.PatientName), ds.StudyDate, int(getattr(ds, "NumberOfFrames", 1) or 1))


def gen_series(root: Path, spec: Spec, group: str, kind: int, study_no: int, series_no: int,
               count: int) -> Iterator[Instance]:
    modality = series_modality(study_no, series_no)
    for n in range(count):
        ds = base_dataset(modality, SOP_CLASSES[modality], spec.size)
        set_study(ds, study_no, kind)
        set_series(ds, study_no, series_no, kind)
        set_instance(ds, n, kind, study_no, series_no)
        ds.PixelData = phantom(spec.size, study_no * 1000 + series_no * 100 + n).tobytes()
        ds.file_meta = file_meta(ds)
        rel = f"{group}/{study_no:03d}/{series_no}/{n:04d}.dcm"
        yield _instance(group, ds, rel, _write(root, rel, ds))


def gen_j2k(root: Path, spec: Spec) -> Instance:
    """One multi-frame enhanced CT, JPEG 2000 lossless, ``spec.j2k_frames`` frames."""
    ds = base_dataset("CT", ENHANCED_CT, spec.size)
    set_study(ds, 900, kind=3)
    set_series(ds, 900, 0, kind=3)
    set_instance(ds, 0, 3, 900, 0)
    ds.NumberOfFrames = spec.j2k_frames
    frames = np.stack([phantom(spec.size, 5000 + k) for k in range(spec.j2k_frames)])
    ds.file_meta = file_meta(ds)
    ds.compress(JPEG2000Lossless, frames, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    rel = "j2k/multiframe.dcm"
    return _instance("j2k", ds, rel, _write(root, rel, ds))


def ensure_corpus(spec: Spec, log: callable = print) -> Corpus:  # type: ignore[valid-type]
    root = CORPUS_DIR / spec.name
    manifest = root / "manifest.json"
    key = {"version": GENERATOR_VERSION, "spec": asdict(spec)}
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if data.get("key") == key:
            return Corpus(spec, root, [Instance(**i) for i in data["instances"]])
    log(f"generating corpus '{spec.name}' in {root} (once) ...")
    instances: list[Instance] = []
    for study_no in range(spec.studies):
        for series_no in range(spec.series_per_study):
            instances += gen_series(root, spec, "main", 1, study_no, series_no, spec.instances_per_series)
        log(f"  study {study_no + 1}/{spec.studies}")
    instances += gen_series(root, spec, "big", 2, 800, 0, spec.big_series)
    log(f"  {spec.big_series}-instance series written; encoding {spec.j2k_frames}-frame JPEG 2000 ...")
    instances.append(gen_j2k(root, spec))
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "instances": [asdict(i) for i in instances]}))
    os.replace(tmp, manifest)  # the manifest appears only once every file is written
    return Corpus(spec, root, instances)


# -- templates: many instances from one encoded dataset -------------------------


class Template:
    """Render Part 10 files by patching fixed-width slots of one encoded dataset.

    Each slot's placeholder is a distinctive value of the slot's width; every
    occurrence is patched (SOP Instance UID also sits in the file meta). Pixel
    data is the last element, so it is the file's tail.
    """

    def __init__(self, ds: Dataset, slots: dict[str, tuple[str, int]], pixel_bytes: int) -> None:
        # slots: name -> (placeholder written into ds, width in bytes incl. padding)
        path = CORPUS_DIR / ".template.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        self.data = path.read_bytes()
        path.unlink()
        self.pixel_bytes = pixel_bytes
        self.slots: dict[str, tuple[list[int], int]] = {}
        for name, (placeholder, width) in slots.items():
            needle = placeholder.encode()
            offsets = _find_all(self.data[:-pixel_bytes], needle)
            assert offsets, f"placeholder of {name} not found"
            self.slots[name] = (offsets, width)

    @property
    def size(self) -> int:
        return len(self.data)

    def render(self, values: dict[str, str], pixels: bytes | None = None) -> bytes:
        out = bytearray(self.data)
        for name, value in values.items():
            offsets, width = self.slots[name]
            raw = value.encode()
            assert len(raw) <= width and (len(raw) == width or not name.endswith("uid")), (name, value)
            raw = raw.ljust(width, b" ")
            for off in offsets:
                out[off:off + width] = raw
        if pixels is not None:
            assert len(pixels) == self.pixel_bytes
            out[-self.pixel_bytes:] = pixels
        return bytes(out)


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, start = [], 0
    while (pos := data.find(needle, start)) >= 0:
        out.append(pos)
        start = pos + 1
    return out


# Template UIDs have fixed-width components (study 1000001.., series 11.., instance
# 100001..) so every rendered UID has exactly its slot's width: no extra padding.
STUDY_UID_WIDTH = len(uid(0, 5, 1000001))
SERIES_UID_WIDTH = len(uid(0, 5, 1000001, 11))
SOP_UID_WIDTH = len(uid(0, 5, 1000001, 11, 100001))
SLOTS = {
    "study_uid": ("9", STUDY_UID_WIDTH), "series_uid": ("8", SERIES_UID_WIDTH), "sop_uid": ("7", SOP_UID_WIDTH),
    "name": ("N" * 10, 64), "pid": ("P" * 10, 16), "date": ("20000101", 8), "acc": ("A" * 10, 16),
    "inst_no": ("1" * 6, 6), "series_no": ("2" * 6, 6),
}


def make_template(size: int, modality: str = "CT") -> Template:
    """A template with wide placeholders (short ones would not fit real values)."""
    ds = base_dataset(modality, SOP_CLASSES[modality], size)
    ph = {k: v[0].ljust(v[1], v[0][0]) for k, v in SLOTS.items()}
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = ph["study_uid"], ph["series_uid"], ph["sop_uid"]
    ds.PatientName, ds.PatientID, ds.StudyDate = ph["name"], ph["pid"], ph["date"]
    ds.AccessionNumber, ds.InstanceNumber, ds.SeriesNumber = ph["acc"], ph["inst_no"], ph["series_no"]
    ds.StudyTime, ds.SeriesDescription = "120000", f"{modality} scale"
    ds.PixelData = phantom(size, 1).tobytes()
    ds.file_meta = file_meta(ds)
    return Template(ds, {k: (ph[k], v[1]) for k, v in SLOTS.items()}, size * size * 2)


@dataclass(frozen=True)
class Layout:
    kind: int
    studies: int
    series_per_study: int
    instances_per_series: int

    @property
    def total(self) -> int:
        return self.studies * self.series_per_study * self.instances_per_series


SCALE = Layout(kind=5, studies=5000, series_per_study=2, instances_per_series=10)  # 100,000 instances
BIG_STUDY = Layout(kind=6, studies=1, series_per_study=4, instances_per_series=1000)  # 4,000 x 512² ≈ 2.1 GB


def render_layout(tpl: Template, layout: Layout, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
    """Instances ``start``..``stop`` of a layout, in order; pixels vary cheaply (rolled)."""
    base = np.frombuffer(tpl.data[-tpl.pixel_bytes:], dtype=np.uint16)
    per_study = layout.series_per_study * layout.instances_per_series
    for k in range(start, layout.total if stop is None else stop):
        st, rest = divmod(k, per_study)
        se, n = divmod(rest, layout.instances_per_series)
        study = 1000001 + st
        values = {
            "study_uid": uid(0, layout.kind, study), "series_uid": uid(0, layout.kind, study, 11 + se),
            "sop_uid": uid(0, layout.kind, study, 11 + se, 100001 + n),
            "name": f"Scale{st:05d}^Ünïcode^Test", "pid": f"SC-{st:06d}",
            "date": f"{2000 + st % 25}{1 + st % 12:02d}{1 + st % 28:02d}", "acc": f"SC{layout.kind}{st:07d}",
            "inst_no": str(n + 1), "series_no": str(se + 1),
        }
        yield tpl.render(values, np.roll(base, k % 512).tobytes())
