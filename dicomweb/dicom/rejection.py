"""Rejection notes: the codes a reject request may carry.

The titles of Key Object Selection documents that reject instances (PS3.16
CID 7011 "Rejected for Quality Reasons" and friends, as used by IHE IOCM).
A reject request names one as ``{code}^{scheme}`` (OHIF sends
``113001^DCM``, percent-encoded or not).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

#: (code value, coding scheme designator) -> code meaning.
REJECTION_CODES: dict[tuple[str, str], str] = {
    ("113001", "DCM"): "Rejected for Quality Reasons",
    ("113037", "DCM"): "Rejected for Patient Safety Reasons",
    ("113038", "DCM"): "Incorrect Modality Worklist Entry",
    ("113039", "DCM"): "Data Retention Policy Expired",
}


@dataclass(frozen=True)
class RejectionCode:
    value: str
    scheme: str

    @property
    def meaning(self) -> str:
        return REJECTION_CODES[(self.value, self.scheme)]

    def __str__(self) -> str:
        return f"{self.value}^{self.scheme}"


def parse_rejection(text: str) -> RejectionCode:
    """``113001^DCM`` (or ``113001%5EDCM``) -> RejectionCode; ValueError if unknown."""
    value, sep, scheme = unquote(text).partition("^")
    if not sep or (value, scheme) not in REJECTION_CODES:
        known = ", ".join(f"{v}^{s}" for v, s in REJECTION_CODES)
        raise ValueError(f"unknown rejection code; expected one of {known}")
    return RejectionCode(value, scheme)
