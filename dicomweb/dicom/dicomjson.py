"""DICOM JSON objects (PS3.18 F.2): reading values out of them, writing them."""

from __future__ import annotations

from typing import Any

import orjson


def first_value(dataset: dict[str, Any], tag: str, default: Any = None) -> Any:
    """The first value of ``tag``, as it is in the JSON (PN stays an object)."""
    values = (dataset.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def first_text(dataset: dict[str, Any], tag: str) -> Any:
    """The first value, with a person name as its Alphabetic group."""
    value = first_value(dataset, tag)
    return value.get("Alphabetic") if isinstance(value, dict) else value


def int_value(dataset: dict[str, Any], tag: str) -> int | None:
    """The first value as an integer, or None when absent or not a number."""
    value = first_text(dataset, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: several times faster than json for the big
    QIDO and metadata answers). The output form relies on ``"BulkDataURI":"``
    with no space."""
    return orjson.dumps(obj)
