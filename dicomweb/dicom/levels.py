"""Which attributes belong to the patient, study, series and instance levels.

Used at store time to pick each level's attributes out of an instance's DICOM
JSON (kept for QIDO answers), and by QIDO for the required return keys
(PS3.18 10.6.3.3).

The patient level has no data of its own: a patient is the set of studies
with the same (PatientID, IssuerOfPatientID) (:func:`patient_identity`), and
its attributes are the Patient module attributes of one of those studies
(:func:`patient_attrs`; the stores take the study that most recently received
an instance, README "Patients").
"""

from collections.abc import Mapping
from typing import Any

#: Patient module attributes kept with each study (a subset of STUDY_TAGS).
PATIENT_TAGS: tuple[str, ...] = (
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100021",  # IssuerOfPatientID
    "00100030",  # PatientBirthDate
    "00100032",  # PatientBirthTime
    "00100040",  # PatientSex
    "00101000",  # OtherPatientIDs
    "00101001",  # OtherPatientNames
    "00102160",  # EthnicGroup
    "00104000",  # PatientComments
)
PATIENT_ID, ISSUER_OF_PATIENT_ID = "00100020", "00100021"
#: NumberOfPatientRelatedStudies, -Series, -Instances.
PATIENT_COUNT_TAGS: tuple[str, str, str] = ("00201200", "00201202", "00201204")

STUDY_TAGS: tuple[str, ...] = (
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080051",  # IssuerOfAccessionNumberSequence
    "00080090",  # ReferringPhysicianName
    "00081030",  # StudyDescription
    "00081032",  # ProcedureCodeSequence
    "00081060",  # NameOfPhysiciansReadingStudy
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100021",  # IssuerOfPatientID
    "00100030",  # PatientBirthDate
    "00100032",  # PatientBirthTime
    "00100040",  # PatientSex
    "00101000",  # OtherPatientIDs
    "00101001",  # OtherPatientNames
    "00101010",  # PatientAge
    "00101020",  # PatientSize
    "00101030",  # PatientWeight
    "00102160",  # EthnicGroup
    "00104000",  # PatientComments
    "0020000D",  # StudyInstanceUID
    "00200010",  # StudyID
    "00321032",  # RequestingPhysician
    "00321060",  # RequestedProcedureDescription
)

SERIES_TAGS: tuple[str, ...] = (
    "00080021",  # SeriesDate
    "00080031",  # SeriesTime
    "00080060",  # Modality
    "00080070",  # Manufacturer
    "00080080",  # InstitutionName
    "00081010",  # StationName
    "0008103E",  # SeriesDescription
    "00081040",  # InstitutionalDepartmentName
    "00081050",  # PerformingPhysicianName
    "00081090",  # ManufacturerModelName
    "00180015",  # BodyPartExamined
    "00181030",  # ProtocolName
    "0020000E",  # SeriesInstanceUID
    "00200011",  # SeriesNumber
    "00200060",  # Laterality
    "00400244",  # PerformedProcedureStepStartDate
    "00400245",  # PerformedProcedureStepStartTime
    "00400275",  # RequestAttributesSequence
)

INSTANCE_TAGS: tuple[str, ...] = (
    "00080008",  # ImageType
    "00080016",  # SOPClassUID
    "00080018",  # SOPInstanceUID
    "00080022",  # AcquisitionDate
    "00080023",  # ContentDate
    "00080032",  # AcquisitionTime
    "00080033",  # ContentTime
    "00200012",  # AcquisitionNumber
    "00200013",  # InstanceNumber
    "00200032",  # ImagePositionPatient
    "00200037",  # ImageOrientationPatient
    "00280002",  # SamplesPerPixel
    "00280004",  # PhotometricInterpretation
    "00280008",  # NumberOfFrames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280030",  # PixelSpacing
    "00280100",  # BitsAllocated
    "0040A043",  # ConceptNameCodeSequence
    "0040A491",  # CompletionFlag
    "0040A493",  # VerificationFlag
)


def pick(dataset_json: dict[str, dict], tags: tuple[str, ...]) -> dict[str, dict]:
    """The subset of a DICOM JSON object with the given tags, in tag order."""
    return {tag: dataset_json[tag] for tag in tags if tag in dataset_json}


def patient_identity(study: Mapping[str, Any]) -> tuple[str, str]:
    """(PatientID, IssuerOfPatientID) of study level DICOM JSON, padding
    stripped; '' for an absent value. Studies with the same pair are one
    patient (all studies without either value included)."""
    return _first_text(study, PATIENT_ID), _first_text(study, ISSUER_OF_PATIENT_ID)


def _first_text(dataset: Mapping[str, Any], tag: str) -> str:
    values = (dataset.get(tag) or {}).get("Value") or []
    value = values[0] if values else None
    return value.strip(" \x00") if isinstance(value, str) else ""


def patient_attrs(study: Mapping[str, Any]) -> dict[str, dict]:
    """The Patient module attributes of study level DICOM JSON."""
    return {tag: study[tag] for tag in PATIENT_TAGS if tag in study}


def patient_json(attrs: Mapping[str, Any], studies: int, series: int, instances: int) -> dict[str, Any]:
    """A patient level answer: its attributes and exact counts."""
    out: dict[str, Any] = dict(attrs)
    for tag, count in zip(PATIENT_COUNT_TAGS, (studies, series, instances), strict=True):
        out[tag] = {"vr": "IS", "Value": [count]}
    return out
