"""The capabilities description (PS3.18 8.9 Retrieve Capabilities, Annex H).

``OPTIONS /`` describes the whole service, ``OPTIONS /{resource}`` the
resource(s) its path matches; both carry an ``Allow`` header. The document
is WADL (``application/vnd.sun.wadl+xml``, the default) or the same content
as JSON (``application/json`` / ``application/dicom+json``).

Nothing here is written by hand twice: resources and methods come from the
Klein URL map (every route, as routed), media types and transfer syntaxes
from the negotiation and pixel tables, QIDO keys from ``query.MATCHABLE``
and its control parameters. Only the *kind* of each route (which of those
tables describes it) is listed here, in :data:`KINDS`; a route without a
kind fails the test suite (``tests/test_ops_capabilities.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from ..dicom import pixels, transcode
from ..dicom.query import _CONTROLS as QIDO_CONTROLS
from ..dicom.query import LEVELS, MATCHABLE, PATIENT, PATIENT_MATCHABLE, Level
from ..dicom.rejection import REJECTION_CODES
from . import negotiation, wadouri

WADL = "application/vnd.sun.wadl+xml"
JSON = "application/json"
WADL_NS = "http://wadl.dev.java.net/2009/02"
#: Endpoint prefix of the OPTIONS routes (one per path, added by app.py); the
#: document lists OPTIONS as a method of each resource instead.
OPTIONS_PREFIX = "options:"


def is_options_endpoint(endpoint: object) -> bool:
    return str(endpoint).startswith(OPTIONS_PREFIX)

_MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
_MULTIPART_XML = 'multipart/related; type="application/dicom+xml"'
_DATASETS = (negotiation.DICOM_JSON, _MULTIPART_XML)
_RENDER_PARAMS = ("window", "viewport", "quality", "accept")


@dataclass(frozen=True)
class Representation:
    media_type: str
    transfer_syntaxes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    """What one method of one route takes and answers."""

    query: tuple[str, ...] = ()
    request: tuple[Representation, ...] = ()
    response: tuple[Representation, ...] = ()
    status: int = 200


def _reps(*types: str, syntaxes: tuple[str, ...] = ()) -> tuple[Representation, ...]:
    return tuple(Representation(t, syntaxes) for t in types)


def producible_syntaxes() -> tuple[str, ...]:
    """``*`` (as stored) and every syntax we can transcode to on this machine."""
    return ("*", *sorted(ts for ts in transcode.PRODUCIBLE if transcode.encoder_available(ts)))


def qido_keys(level: Level) -> tuple[str, ...]:
    """Matching keys accepted at ``level`` (its own and its parents') and the controls."""
    if level == PATIENT:
        return (*sorted(m.keyword for m in PATIENT_MATCHABLE.values()), *QIDO_CONTROLS)
    rank = LEVELS.index(level)
    keys = sorted(m.keyword for m in MATCHABLE.values() if LEVELS.index(m.level) <= rank)
    return (*keys, *QIDO_CONTROLS)


def _search(level: Level) -> Operation:
    return Operation(query=qido_keys(level), response=_reps(*_DATASETS))


def _retrieve(zip_too: bool) -> Operation:
    reps = _reps(_MULTIPART_DICOM, syntaxes=producible_syntaxes())
    if zip_too:
        reps += _reps(negotiation.ZIP)
    return Operation(response=reps)


def _frames() -> Operation:
    types = ("multipart/related; type=\"application/octet-stream\"",
             *(f'multipart/related; type="{t}"' for t in sorted(set(pixels.FRAME_MEDIA_TYPE.values()))))
    return Operation(response=_reps(*types, syntaxes=producible_syntaxes()))


def _rendered() -> Operation:
    return Operation(query=_RENDER_PARAMS, response=_reps(*negotiation.RENDERED_TYPES))


def _wado_uri() -> Operation:
    params = ("requestType", "studyUID", "seriesUID", "objectUID", "contentType", "transferSyntax", "frameNumber",
              "rows", "columns", "windowCenter", "windowWidth", "imageQuality")
    return Operation(query=params, response=_reps(*wadouri.CONTENT_TYPES, syntaxes=producible_syntaxes()))


#: Route endpoint -> (method -> operation). GET also describes HEAD.
KINDS: dict[str, Operation] = {
    "health": Operation(response=_reps("text/plain")),
    "ready": Operation(response=_reps("text/plain")),
    "metrics_text": Operation(response=_reps(CONTENT_TYPE_LATEST)),
    "stow_all": Operation(request=_reps(_MULTIPART_DICOM), response=_reps(negotiation.DICOM_JSON,
                                                                         negotiation.DICOM_XML)),
    "search_patients": _search(PATIENT),
    "search_studies": _search("study"),
    "search_series": _search("series"),
    "search_instances": _search("instance"),
    "search_study_series": _search("series"),
    "search_study_instances": _search("instance"),
    "search_series_instances": _search("instance"),
    "retrieve_study": _retrieve(zip_too=True),
    "retrieve_series": _retrieve(zip_too=True),
    "retrieve_instance": _retrieve(zip_too=False),
    "study_metadata": Operation(response=_reps(*_DATASETS)),
    "frames": _frames(),
    "bulk": Operation(response=_reps('multipart/related; type="application/octet-stream"', negotiation.OCTET_STREAM)),
    "rendered_instance": _rendered(),
    "wado_uri": _wado_uri(),
    "root": _wado_uri(),
    "delete_study": Operation(status=204),
    "change_feed": Operation(query=("offset", "limit", "includemetadata", "timeout"),
                             response=_reps("application/json", "text/event-stream")),
    "change_feed_latest": Operation(query=("includemetadata",), response=_reps("application/json")),
    "reject_study": Operation(status=204),
}
KINDS["stow_study"] = KINDS["stow_all"]
KINDS["series_metadata"] = KINDS["instance_metadata"] = KINDS["study_metadata"]
for _name in ("rendered_frame", "instance_thumbnail", "frame_thumbnail", "series_thumbnail", "study_thumbnail"):
    KINDS[_name] = KINDS["rendered_instance"]
KINDS["delete_series"] = KINDS["delete_instance"] = KINDS["delete_study"]
KINDS["reject_series"] = KINDS["reject_instance"] = KINDS["reject_study"]
OPTIONS_OPERATION = Operation(response=_reps(WADL, JSON))

#: Values a template parameter may take, where they are a fixed list.
TEMPLATE_OPTIONS: dict[str, tuple[str, ...]] = {"code": tuple(f"{v}^{s}" for v, s in REJECTION_CODES)}


# -- the document ------------------------------------------------------------

@dataclass
class Resource:
    path: str  # WADL template, relative to the base: "studies/{study}"
    templates: list[str] = field(default_factory=list)
    methods: list[tuple[str, str, Operation]] = field(default_factory=list)  # (method, endpoint, operation)


_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def wadl_path(rule: str) -> str:
    """``/studies/<study>/bulk/<path:path>`` -> ``studies/{study}/bulk/{path}``."""
    return _ARGUMENT.sub(r"{\1}", rule).lstrip("/")


def resources(url_map: Map, scope: str | None = None) -> list[Resource]:
    """Every routed resource (or those whose rule matches ``scope``), in map order."""
    out: dict[str, Resource] = {}
    for rule in _rules(url_map, scope):
        resource = out.setdefault(rule.rule, Resource(wadl_path(rule.rule), list(rule.arguments and
                                                                                 _argument_order(rule.rule))))
        operation = KINDS.get(str(rule.endpoint), Operation())
        for method in sorted(rule.methods or ()):
            resource.methods.append((method, str(rule.endpoint), operation))
    for resource in out.values():
        resource.methods.append(("OPTIONS", "capabilities", OPTIONS_OPERATION))
    return list(out.values())


def _argument_order(rule: str) -> list[str]:
    return _ARGUMENT.findall(rule)


def _rules(url_map: Map, scope: str | None) -> Iterable[Rule]:
    if scope is None:
        matched = None
    else:  # the rules that route ``scope``, one per method
        adapter = url_map.bind("localhost")
        matched = {id(adapter.match(scope, method, return_rule=True)[0])
                   for method in allowed_methods(url_map, scope)}
    for rule in url_map.iter_rules():
        if not is_options_endpoint(rule.endpoint) and (matched is None or id(rule) in matched):
            yield rule


def allowed_methods(url_map: Map, path: str) -> list[str]:
    """The methods routed for ``path`` (what ``Allow`` lists), HEAD and OPTIONS included."""
    try:
        methods = url_map.bind("localhost").allowed_methods(path)
    except HTTPException:
        return []
    return sorted(set(methods))


def choose_type(accept: bytes | None) -> str:
    """WADL (the PS3.18 default) unless JSON is preferred."""
    if accept is None:
        return WADL
    for media in negotiation.accept_ranges(accept):
        if media.type in (WADL, "application/xml", "text/xml", "*/*", "application/*"):
            return WADL
        if media.type in (JSON, negotiation.DICOM_JSON):
            return JSON
    raise negotiation.not_acceptable(f"the capabilities are described as {WADL} or {JSON}")


def document(url_map: Map, base: str, media: str, scope: str | None = None) -> bytes:
    found = resources(url_map, scope)
    if media == JSON:
        return json.dumps(as_json(found, base), indent=1).encode()
    return as_wadl(found, base)


def as_json(found: list[Resource], base: str) -> dict[str, Any]:
    def reps(items: tuple[Representation, ...]) -> list[dict[str, Any]]:
        return [{"mediaType": r.media_type, **({"transferSyntaxes": list(r.transfer_syntaxes)}
                                               if r.transfer_syntaxes else {})} for r in items]

    return {"base": base + "/", "resources": [
        {"path": r.path, "templates": {t: list(TEMPLATE_OPTIONS.get(t, ())) for t in r.templates},
         "methods": [{"name": m, "id": endpoint, "query": list(op.query), "request": reps(op.request),
                      "status": op.status, "response": reps(op.response)} for m, endpoint, op in r.methods]}
        for r in found]}


def as_wadl(found: list[Resource], base: str) -> bytes:
    ET.register_namespace("", WADL_NS)

    def q(tag: str) -> str:
        return f"{{{WADL_NS}}}{tag}"

    app = ET.Element(q("application"))
    ET.SubElement(app, q("doc"), title="dicomweb DICOMweb service (PS3.18)")
    root = ET.SubElement(app, q("resources"), base=base + "/")
    for resource in found:
        node = ET.SubElement(root, q("resource"), path=resource.path)
        for name in resource.templates:
            param = ET.SubElement(node, q("param"), name=name, style="template", type="xsd:string", required="true")
            for value in TEMPLATE_OPTIONS.get(name, ()):
                ET.SubElement(param, q("option"), value=value)
        for method, endpoint, op in resource.methods:
            _wadl_method(ET.SubElement(node, q("method"), name=method, id=f"{endpoint}-{method}"), op, q)
    document: bytes = ET.tostring(app, encoding="utf-8", xml_declaration=True)
    return document


def _wadl_method(node: ET.Element, op: Operation, q: Any) -> None:
    request = ET.SubElement(node, q("request"))
    for name in op.query:
        ET.SubElement(request, q("param"), name=name, style="query", type="xsd:string")
    _wadl_reps(request, op.request, q)
    _wadl_reps(ET.SubElement(node, q("response"), status=str(op.status)), op.response, q)


def _wadl_reps(parent: ET.Element, reps: tuple[Representation, ...], q: Any) -> None:
    for rep in reps:
        node = ET.SubElement(parent, q("representation"), mediaType=rep.media_type)
        if rep.transfer_syntaxes:
            param = ET.SubElement(node, q("param"), name="transfer-syntax", style="plain", type="xsd:string")
            for ts in rep.transfer_syntaxes:
                ET.SubElement(param, q("option"), value=ts)
