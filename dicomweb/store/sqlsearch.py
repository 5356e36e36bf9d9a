"""QIDO searches on the embedded store's SQLite index.

Foundation scope: the study list (``/studies``) with StudyInstanceUID and
PatientID matching, limit and offset, in a stable order. The complete query
model (every level and matching type) replaces ``StudyListQuery``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from .sqlschema import split_multi


@dataclass(frozen=True)
class StudyListQuery:
    study_uids: tuple[str, ...] = ()
    patient_id: str | None = None
    limit: int | None = None
    offset: int = 0


def search(conn: sqlite3.Connection, query: Any) -> list[dict[str, Any]]:
    where: list[str] = []
    args: list[Any] = []
    if query.study_uids:
        where.append(f"study_uid IN ({','.join('?' * len(query.study_uids))})")
        args.extend(query.study_uids)
    if query.patient_id is not None:
        where.append("patient_id=?")
        args.append(query.patient_id)
    sql = "SELECT study_uid, attrs, num_series, num_instances, modalities, sop_classes FROM studies"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY study_date IS NULL, study_date DESC, study_time DESC, study_uid LIMIT ? OFFSET ?"
    args.extend([-1 if query.limit is None else query.limit, query.offset])
    return [study_json(*row) for row in conn.execute(sql, args)]


def study_json(uid: str, attrs: str, n_series: int, n_instances: int, modalities: str, classes: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(attrs)
    out["0020000D"] = {"vr": "UI", "Value": [uid]}
    out["00201206"] = {"vr": "IS", "Value": [n_series]}
    out["00201208"] = {"vr": "IS", "Value": [n_instances]}
    mods = split_multi(modalities)
    out["00080061"] = {"vr": "CS", "Value": mods} if mods else {"vr": "CS"}
    sops = split_multi(classes)
    out["00080062"] = {"vr": "UI", "Value": sops} if sops else {"vr": "UI"}
    out["00081190"] = {"vr": "UR", "Value": [f"studies/{uid}"]}
    return dict(sorted(out.items()))
