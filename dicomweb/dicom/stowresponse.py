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


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _ref(result: StowResult) -> dict[str, Any]:
    return {"00081150": _ui(result.sop_class_uid), "00081155": _ui(result.sop_uid)}


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
        body["00081198"] = {"vr": "SQ", "Value": [
            {**_ref(r), "00081197": {"vr": "US", "Value": [r.failure]}} for r in failed]}
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
