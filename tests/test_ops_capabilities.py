"""Capabilities (PS3.18 8.9): OPTIONS with Allow, and a WADL document that
lists exactly the routes that answer.

The document and the Allow headers come from the routing table alone: they
are checked in this process (tests/inprocess.py). That every listed method
answers on real data is checked against the real server, on each store.
"""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import requests

from dicomweb.web import capabilities
from dicomweb.web.app import DICOMwebApp
from tests.httpclient import session, stow
from tests.inprocess import Client
from tests.ops_helpers import COUCH_QIDO, Study, is_couch, store_study
from tests.server import ServerProcess

NS = {"w": capabilities.WADL_NS}
READS = {"GET", "HEAD", "OPTIONS"}


def _document(target: str | Client, accept: str | None = None) -> ET.Element:
    """The capabilities document of a server URL or an in-process client."""
    http, url = session(target)
    headers = {"Accept": accept} if accept else {}
    response = http.options(url + "/", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == capabilities.WADL
    return ET.fromstring(response.content)


def _methods(root: ET.Element) -> dict[str, set[str]]:
    return {r.get("path", ""): {m.get("name", "") for m in r.findall("w:method", NS)}
            for r in root.findall("w:resources/w:resource", NS)}


def test_every_route_has_a_description() -> None:
    rules = [r for r in DICOMwebApp.app.url_map.iter_rules() if not capabilities.is_options_endpoint(r.endpoint)]
    assert [r.endpoint for r in rules if r.endpoint not in capabilities.KINDS] == []


def test_document_lists_every_klein_rule(http: Client) -> None:
    listed = _methods(_document(http))
    for rule in DICOMwebApp.app.url_map.iter_rules():
        if capabilities.is_options_endpoint(rule.endpoint):
            continue
        path = capabilities.wadl_path(rule.rule)
        assert path in listed, rule.rule
        assert set(rule.methods or ()) | {"OPTIONS"} <= listed[path], rule.rule


def test_document_names_media_types_syntaxes_and_query_keys(http: Client) -> None:
    root = _document(http, "application/vnd.sun.wadl+xml")
    studies = root.find("w:resources/w:resource[@path='studies']", NS)
    assert studies is not None
    get = studies.find("w:method[@name='GET']", NS)
    assert get is not None
    keys = {p.get("name") for p in get.findall("w:request/w:param", NS)}
    assert {"PatientName", "StudyDate", "ModalitiesInStudy", "includefield", "limit", "offset",
            "fuzzymatching"} <= keys
    assert "Modality" not in keys  # a series key is not matchable at /studies
    retrieve = root.find("w:resources/w:resource[@path='studies/{study}']/w:method[@name='GET']", NS)
    assert retrieve is not None
    syntaxes = {o.get("value") for o in retrieve.findall(".//w:option", NS)}
    assert {"*", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"} <= syntaxes
    assert '"1.2.840.10008.1.2"' not in json.dumps(sorted(syntaxes))  # implicit VR is never produced
    reject = root.find("w:resources/w:resource[@path='studies/{study}/series/{series}/reject/{code}']", NS)
    assert reject is not None
    assert {o.get("value") for o in reject.findall("w:param[@name='code']/w:option", NS)} >= {"113001^DCM"}


def test_json_form(http: Client) -> None:
    response = http.options("/", headers={"Accept": "application/json"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    paths = {r["path"] for r in response.json()["resources"]}
    assert "studies/{study}/series/{series}/instances/{sop}/frames/{frames}" in paths
    assert http.options("/", headers={"Accept": "image/png"}, timeout=30).status_code == 406


def test_allow_headers(http: Client) -> None:
    cases = {
        "/": "GET, HEAD, OPTIONS",
        "/studies": "GET, HEAD, OPTIONS, POST",
        "/studies/1.2.3": "DELETE, GET, HEAD, OPTIONS, POST",
        "/studies/1.2.3/series/4.5": "DELETE, GET, HEAD, OPTIONS",
        "/studies/1.2.3/series/4.5/reject/113001%5EDCM": "OPTIONS, POST",
        "/studies/1.2.3/series/4.5/instances/6.7/frames/1": "GET, HEAD, OPTIONS",
        "/health": "GET, HEAD, OPTIONS",
    }
    for path, allow in cases.items():
        response = http.options(path, timeout=30)
        assert response.status_code == 200, path
        assert response.headers["Allow"] == allow, path
        if path == "/":
            continue  # the base URL describes the whole service
        # A scoped document describes exactly the resource(s) of that path.
        methods = set().union(*_methods(ET.fromstring(response.content)).values())
        assert methods == set(allow.split(", ")), path
    assert http.options("/nothing/here", timeout=30).status_code == 404
    assert http.put("/studies", timeout=30).status_code == 405


def _fill(path: str, study: Study) -> str:
    series = study.series[0]
    values = {"{study}": study.uid, "{series}": series.uid, "{sop}": series.sops[0], "{frames}": "1",
              "{path}": "7FE00010", "{code}": "113001%5EDCM"}
    for name, value in values.items():
        path = path.replace(name, value)
    return "/" + path


def test_every_listed_method_answers(server: ServerProcess) -> None:
    """For every resource and method of the document, a request is routed:
    never 404 (on data that exists) nor 405."""
    url = server.url
    keep = store_study(url, (("CT", 1),))
    for resource in _document(url).findall("w:resources/w:resource", NS):
        path = resource.get("path", "")
        for node in resource.findall("w:method", NS):
            method = node.get("name", "")
            if is_couch(server) and not COUCH_QIDO and node.get("id", "").startswith("search_"):
                continue  # QIDO on the CouchDB store comes with the couchq branch
            if method in READS:
                target = _fill(path, keep)
            else:  # changes data: on a study of its own
                target = _fill(path, store_study(url, (("CT", 1),)))
            response = _call(method, url + target, keep)
            assert response.status_code not in (404, 405), (method, path, response.status_code, response.text)
    assert requests.delete(f"{url}/studies/{keep.uid}", timeout=30).status_code == 204


def _call(method: str, target: str, study: Study) -> requests.Response:
    if method == "POST" and "/reject/" not in target:
        base, _, _ = target.partition("/studies")
        uid = target.rsplit("/", 1)[-1] if target.count("/studies/") else None
        return stow(base, study.all_parts(), uid)
    return requests.request(method, target, timeout=60)
