"""UID validation (PS3.5 9.1).

Every UID taken from a URL, a query or an uploaded object passes through
``is_valid_uid`` before it reaches a file path or a store query.
"""

import re

# Components are digits joined by single dots. PS3.5 also forbids leading zeros
# in a component, but real modalities write them (pydicom's own rtdose.dcm
# does), and they are harmless in paths and queries, so they are accepted.
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")

MAX_UID_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID_RE.fullmatch(value) is not None
    )


def clean_uid(value: str) -> str:
    """Strip the trailing NUL/space padding some writers leave in UI values."""
    return value.rstrip("\x00 ").strip()
