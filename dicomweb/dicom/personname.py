"""Person name (PN) normalisation, shared by store time and query time.

A DICOM person name has up to three component groups (alphabetic, ideographic,
phonetic) separated by ``=``; each group has up to five components separated
by ``^``. In DICOM JSON it is ``{"Alphabetic": .., "Ideographic": ..,
"Phonetic": ..}``.

Matching on names is case- and accent-insensitive. Rather than asking every
store for a collation it may not have (SQLite has none for accents, Mango's
depends on ICU), both sides are reduced to a *key* by :func:`normalise_text`
and compared as plain strings:

* NFKD decomposition, then the combining marks on Latin, Greek and Cyrillic
  letters are dropped (``Müller`` -> ``MULLER``, ``Çelik`` -> ``CELIK``), and the
  few Latin letters Unicode does not decompose are folded (``Ø`` -> ``O``,
  ``Ł`` -> ``L``, ``Æ`` -> ``AE``). Transliterations (``ü`` -> ``UE``) are not
  applied: ``Mueller`` and ``Müller`` stay different names. Marks on
  other scripts are kept and recomposed (NFC): the kana voicing mark is a
  combining mark too and ``ブ`` must not become ``フ``.
* upper-case (Python's full mapping: ``ß`` -> ``SS``);
* runs of white space become one space; spaces around ``^`` and ``=`` and
  trailing empty components are insignificant (``Doe^John^^^`` == ``Doe^John``).

The stored side of a PN attribute is indexed as :func:`pn_index_keys` (for
single value, list and wildcard matching) and :func:`fuzzy_words` (for
``fuzzymatching=true``). :mod:`dicomweb.dicom.query` builds the query side.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

GROUP_NAMES = ("Alphabetic", "Ideographic", "Phonetic")
#: Marks on code points below this (Latin, Greek, Cyrillic blocks) are accents.
_ACCENTED_SCRIPTS_END = 0x0530
_SPACES = re.compile(r"\s+")
#: Latin letters that are not a base letter plus an accent in Unicode, folded
#: like their accented neighbours (Ø is O for a Norwegian clerk typing Oystein).
_LATIN_FOLD = str.maketrans({
    "Ø": "O", "ø": "o", "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ð": "D", "ð": "d",
    "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Þ": "TH", "þ": "th", "ı": "i", "Ħ": "H", "ħ": "h",  # noqa: RUF001
})
#: Fuzzy matching splits a name into words at these characters.
_WORD_SPLIT = re.compile(r"[\^=\s\-]+")

PNValue = str | Mapping[str, str]


def normalise_text(text: str) -> str:
    """Upper-case, accent-free, NFC form of ``text`` (see module docstring)."""
    out: list[str] = []
    base = 0
    for char in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(char):
            if base < _ACCENTED_SCRIPTS_END:
                continue  # an accent on a Latin/Greek/Cyrillic letter
        else:
            base = ord(char)
        out.append(char)
    return unicodedata.normalize("NFC", "".join(out).translate(_LATIN_FOLD).upper())


def pn_string(value: PNValue) -> str:
    """The ``A=I=P`` string form of a PN value (a string or DICOM JSON object)."""
    if isinstance(value, str):
        return value
    groups = [str(value.get(name) or "") for name in GROUP_NAMES]
    return "=".join(groups).rstrip("=")


def _group_key(group: str) -> str:
    components = [_SPACES.sub(" ", c).strip() for c in normalise_text(group).split("^")]
    while components and not components[-1]:
        components.pop()
    return "^".join(components)


def pn_groups(value: PNValue) -> list[str]:
    """The three normalised component groups of a name ('' for absent ones)."""
    groups = [_group_key(g) for g in pn_string(value).split("=")[:3]]
    return groups + [""] * (3 - len(groups))


def pn_key(value: PNValue) -> str:
    """Normalised name: ``'Müller^Hans=ミュラー^ハンス'`` -> ``'MULLER^HANS=ミュラー^ハンス'``.

    Component groups are kept in place (empty inner groups stay as ``=``),
    trailing empty groups and components are dropped.
    """
    return "=".join(pn_groups(value)).rstrip("=")


def full_key(value: PNValue) -> str:
    """The three groups always joined by exactly two ``=`` (``'DOE^JOHN=='``).

    A fixed number of separators lets a query that names groups
    (``Doe^John=*=*``) be matched as one pattern against one string.
    """
    return "=".join(pn_groups(value))


def pn_index_keys(values: Iterable[PNValue]) -> list[str]:
    """What a store indexes for a PN attribute (one or more values).

    For each value: its :func:`full_key` and the key of each non-empty group.
    A query without ``=`` matches a group key (the name in any script); a
    query with ``=`` matches the full key group by group. Group keys never
    contain ``=`` and full keys always contain two, so the two cannot be
    confused by an exact match.
    """
    keys: list[str] = []
    for value in values:
        groups = pn_groups(value)
        if not any(groups):
            continue
        for key in (full_key(value), *groups):
            if key and key not in keys:
                keys.append(key)
    return keys


def fuzzy_words(values: Iterable[PNValue]) -> list[str]:
    """The normalised words of a name, for fuzzy matching (sorted, unique).

    Words are split at ``^``, ``=``, white space and ``-`` over all groups, so
    ``Meyer-Lansky^Anna`` gives ``ANNA``, ``LANSKY``, ``MEYER``.
    """
    words: set[str] = set()
    for value in values:
        words.update(w for w in _WORD_SPLIT.split(pn_key(value)) if w)
    return sorted(words)


def query_words(text: str) -> tuple[str, ...]:
    """The words of a fuzzy query, normalised like :func:`fuzzy_words`."""
    return tuple(dict.fromkeys(w for w in _WORD_SPLIT.split(normalise_text(text)) if w))


def fuzzy_match(words: Iterable[str], stored_words: Iterable[str]) -> bool:
    """Fuzzy rule: every query word is a prefix of some word of the stored name.

    Order-free (``Hans Müller`` finds ``Müller^Hans``), case- and
    accent-insensitive, and prefix-based (``mul han`` finds it too).
    """
    stored = list(stored_words)
    return all(any(s.startswith(w) for s in stored) for w in words)
