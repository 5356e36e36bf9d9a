"""Generated DICOM test data: CT-like studies with pydicom, deterministic."""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def data_store_dir() -> str:
    """pydicom-data's files (installed with the test extras); never downloaded."""
    import data_store

    return os.path.join(os.path.dirname(data_store.__file__), "data")


def pydicom_test_dir() -> str:
    return os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def sample_file(name: str) -> str:
    for folder in (data_store_dir(), pydicom_test_dir()):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(name)


def sample_files(pattern: str = "*.dcm") -> list[str]:
    return sorted(glob.glob(os.path.join(data_store_dir(), pattern)) + glob.glob(os.path.join(pydicom_test_dir(), pattern)))


def ct_instance(study_uid: str, series_uid: str, number: int, *, size: int = 64,
                patient_name: str = "Doe^Jane", patient_id: str = "PID-1",
                study_date: str = "20240102", modality: str = "CT",
                sop_uid: str | None = None, seed: int | None = None) -> bytes:
    """One CT-like Part 10 instance (``size``x``size``, 16-bit) as bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid) if sop_uid else generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC" + str(number % 7)
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyID = "1"
    ds.StudyDescription = "Generated study"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Generated series"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0, 0, float(number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed if seed is not None else number)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2) * 1000
    pixels = (disc + rng.integers(0, 200, (size, size))).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ct_series(count: int, *, study_uid: str | None = None, series_uid: str | None = None,
              **kwargs: Any) -> Iterator[bytes]:
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for number in range(1, count + 1):
        yield ct_instance(study_uid, series_uid, number, **kwargs)
