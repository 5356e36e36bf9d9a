"""Media types: parse Content-Type and Accept headers, tolerantly.

Pure code (no Twisted). Accepts quoted or unquoted parameter values, q-values,
and repeated parameters (OHIF sends ``transfer-syntax`` twice in one range).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MediaRange:
    """One media type or range with its parameters, in header order."""

    type: str  # e.g. "multipart/related", "*/*"
    params: tuple[tuple[str, str], ...] = field(default=())
    q: float = 1.0

    def param(self, name: str) -> str | None:
        """The first value of parameter ``name`` (case-insensitive), if any."""
        for key, value in self.params:
            if key == name:
                return value
        return None

    def all_params(self, name: str) -> list[str]:
        return [value for key, value in self.params if key == name]

    def matches(self, concrete: str) -> bool:
        """Whether this range admits the concrete media type ``concrete``."""
        if self.type == "*/*":
            return True
        major, _, minor = self.type.partition("/")
        cmajor, _, _ = concrete.partition("/")
        if minor == "*":
            return major == cmajor
        return self.type == concrete


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
    return value


def parse_media_type(text: str) -> MediaRange:
    """Parse one media type with parameters, e.g. a Content-Type value.

    Raises ``ValueError`` when there is no ``type/subtype``.
    """
    pieces = _split_outside_quotes(text, ";")
    mtype = pieces[0].strip().lower()
    if mtype.count("/") != 1 or not all(mtype.split("/")):
        raise ValueError(f"not a media type: {pieces[0].strip()[:80]!r}")
    params: list[tuple[str, str]] = []
    q = 1.0
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise ValueError(f"malformed media type parameter: {piece.strip()[:80]!r}")
        value = _unquote(value)
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                raise ValueError(f"malformed q-value: {value[:20]!r}") from None
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"q-value out of range: {value[:20]!r}")
            continue
        params.append((name, value))
    return MediaRange(mtype, tuple(params), q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into ranges, best first (stable for equal q).

    A missing or empty header means ``*/*``. Unparseable ranges are skipped, as
    RFC 9110 lets a server do; if nothing is left, ``ValueError``.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    errors = 0
    for piece in _split_outside_quotes(header, ","):
        if not piece.strip():
            continue
        try:
            ranges.append(parse_media_type(piece))
        except ValueError:
            errors += 1
    if not ranges and errors:
        raise ValueError("no valid media range in Accept")
    # q=0 means "not acceptable": such ranges never select a representation.
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)
