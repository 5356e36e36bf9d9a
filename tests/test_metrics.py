"""/health, /ready and /metrics, in this process (tests/inprocess.py: the
real app, wrapper and metered site). The real server processes answer the
probes and /metrics in tests/test_security_matrix.py."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from dicomweb.web.metrics import route_label
from tests import dicomgen
from tests.httpclient import stow
from tests.inprocess import Client


def _samples(http: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = http.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_health_and_ready_answer(http: Client) -> None:
    assert http.get("/health").text == "ok\n"
    assert http.get("/ready").status_code == 200


def test_metrics_count_requests_by_route_and_status_without_patient_data(http: Client) -> None:
    parts = list(dicomgen.ct_series(2, patient_name="Secret^Patient"))
    assert stow(http, parts).status_code == 200
    http.get("/studies", params={"PatientName": "Secret*"})
    http.get("/studies/1.2.3.4/metadata")
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "Secret" not in response.text and "1.2.3.4" not in response.text
    samples = _samples(http)
    assert samples[("dicomweb_http_requests_total",
                    (("method", "POST"), ("route", "/studies"), ("status", "200")))] >= 1
    assert samples[("dicomweb_http_requests_total",
                    (("method", "GET"), ("route", "/studies/{study}/metadata"), ("status", "404")))] >= 1
    assert samples[("dicomweb_instances_stored_total", (("outcome", "stored"),))] >= 2
    assert samples[("dicomweb_http_request_bytes_total", (("route", "/studies"),))] > 0
    assert any(name == "dicomweb_store_operation_duration_seconds_count" and ("operation", "store_batch") in labels
               for name, labels in samples)


def test_route_labels_replace_uids_by_their_role() -> None:
    assert route_label(b"/studies/1.2.3/series/4.5/instances/6.7/frames/1,2,3") == \
        "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"
    assert route_label("/studies/1.2/series/3.4/instances/5.6/bulk/00540016/0/00181072") == \
        "/studies/{study}/series/{series}/instances/{instance}/bulk/{path}"
    assert route_label("/wado?studyUID=1.2.3") == "/wado"
