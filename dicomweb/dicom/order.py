"""Order, number clamp and answer availability rules of the query model.

Pure code (no Twisted), shared by every store so that they answer alike:

* **Search order** (QIDO, PS3.18 leaves it to the server; this one is total,
  so limit/offset pages never overlap or skip): studies newest first by
  StudyDate + StudyTime (:func:`study_sort_date`; no date last), then
  StudyInstanceUID; series by SeriesNumber, then SeriesInstanceUID;
  instances by InstanceNumber, then SOPInstanceUID; a missing number sorts
  after every number (:func:`sort_number`).
* **Patient order**: PatientID, then IssuerOfPatientID, in code point
  order (a patient's identity, so the order is total).
* **Retrieval order** (WADO metadata and bytes of a study or series):
  by series (SeriesNumber, SeriesInstanceUID) then instance (InstanceNumber,
  SOPInstanceUID), missing numbers last (:func:`retrieval_key`).
* **Availability**: the tags an answer carries from the level attributes and
  aggregates kept at store time (:data:`AVAILABLE`); an ``includefield`` of
  any other instance tag is read from the stored metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import levels
from .dicomjson import int_value
from .query import RETRIEVE_URL, stored_keys

STUDY_DATE, STUDY_TIME = "00080020", "00080030"
SERIES_NUMBER, INSTANCE_NUMBER = "00200011", "00200013"

#: Numbers are clamped to [-NO_NUMBER, NO_NUMBER] for sorting, and a missing
#: one sorts as NO_NUMBER: after every real one. It fits a signed 64-bit
#: SQLite integer, and its 19 digits a fixed-width text key.
NO_NUMBER = 1 << 62

#: The UIDs of the three levels: matched on each level's own key (a table's
#: primary key, a document id), never through the match-key index.
LEVEL_UIDS = frozenset({"0020000D", "0020000E", "00080018"})

#: Tags computed from aggregates or the request (counts, lists, RetrieveURL, UIDs).
COMPUTED = frozenset({"00080061", "00080062", "00201206", "00201208", "00201209", RETRIEVE_URL,
                      *levels.PATIENT_COUNT_TAGS, *LEVEL_UIDS})
#: Tags an answer can carry without reading the instance's full metadata.
AVAILABLE = frozenset(levels.STUDY_TAGS) | frozenset(levels.SERIES_TAGS) | frozenset(levels.INSTANCE_TAGS) | COMPUTED


def clamp(number: int | None) -> int:
    """A number's sort value: clamped to +-NO_NUMBER; missing is NO_NUMBER (last)."""
    return NO_NUMBER if number is None else max(-NO_NUMBER, min(number, NO_NUMBER))


def sort_number(attrs: dict[str, Any], tag: str) -> int:
    """The sort value of an IS attribute (SeriesNumber, InstanceNumber) of level JSON."""
    return clamp(int_value(attrs, tag))


def study_sort_date(study: Mapping[str, Any]) -> str:
    """Fixed-width StudyDate + StudyTime key, sorted descending; '' (sorted
    last, as the oldest) when the study has no date."""
    date_keys = stored_keys("DA", [study.get(STUDY_DATE) or {}])
    if not date_keys:
        return ""
    time_keys = stored_keys("TM", [study.get(STUDY_TIME) or {}])
    return date_keys[0] + (time_keys[0] if time_keys else "")


def retrieval_key(series_number: int | None, series_uid: str, instance_number: int | None,
                  sop_uid: str) -> tuple[bool, int, str, bool, int, str]:
    """The sort key of one instance in the retrieval order (module docstring)."""
    return (series_number is None, series_number or 0, series_uid,
            instance_number is None, instance_number or 0, sop_uid)
