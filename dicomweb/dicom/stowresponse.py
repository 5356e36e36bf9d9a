"""The STOW-RS Store Instances Response (PS3.18 10.5.3), as DICOM JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StowResult:
    sop_class_uid: str
    sop_uid: str
    study_uid: str = ""
    series_uid: str = ""
    failure: int = 0  # 0 = stored
    warning: int = 0
    #: Why it failed, in a few words (never patient data): sent to the client.
    reason: str = ""


#: The failure item's reason text: a private attribute (PS3.5 7.8) of the
#: block "DICOMWEB", since the Failed SOP Sequence (PS3.18 Table 10.5.3-3)
#: has only the numeric Failure Reason.
REASON_CREATOR = "DICOMWEB"
REASON_CREATOR_TAG = "00090010"
REASON_TAG = "00091001"


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _ref(result: StowResult) -> dict[str, Any]:
    return {"00081150": _ui(result.sop_class_uid), "00081155": _ui(result.sop_uid)}


def _failed_item(result: StowResult) -> dict[str, Any]:
    item = {**_ref(result), "00081197": {"vr": "US", "Value": [result.failure]}}
    if result.reason:
        item[REASON_CREATOR_TAG] = {"vr": "LO", "Value": [REASON_CREATOR]}
        item[REASON_TAG] = {"vr": "LT", "Value": [result.reason]}
    return item


def instance_path(study: str, series: str, sop: str) -> str:
    return f"studies/{study}/series/{series}/instances/{sop}"


def response(results: list[StowResult], base: str, target_study: str | None) -> tuple[int, dict[str, Any]]:
    """The HTTP status and response dataset for the per-instance ``results``.

    200: all stored; 202: some failed or stored with warnings; 409: none stored.
    """
    stored = [r for r in results if not r.failure]
    failed = [r for r in results if r.failure]
    body: dict[str, Any] = {}
    studies = {r.study_uid for r in stored}
    if target_study or len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{target_study or studies.pop()}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed_item(r) for r in failed]}
    if stored:
        items = []
        for r in stored:
            item = {**_ref(r), "00081190": {
                "vr": "UR", "Value": [f"{base}/{instance_path(r.study_uid, r.series_uid, r.sop_uid)}"]}}
            if r.warning:
                item["00081196"] = {"vr": "US", "Value": [r.warning]}
            items.append(item)
        body["00081199"] = {"vr": "SQ", "Value": items}
    if not stored:
        return 409, body
    if failed or any(r.warning for r in stored):
        return 202, body
    return 200, body
