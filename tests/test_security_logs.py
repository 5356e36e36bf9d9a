"""Nothing secret or patient-identifying reaches the server's log file.

Real servers, real traffic (good and bad passwords, valid, forged and opaque
tokens, introspection with a client secret, QIDO and WADO-URI queries with a
distinctive patient name and ID, a STOW of that patient), then a grep of the
log file the operator would read.
"""

from __future__ import annotations

import base64

import requests

from tests.idp import CLIENT_SECRET
from tests.security_fixtures import (  # noqa: F401  # fixtures
    PATIENT_ID,
    PATIENT_NAME,
    READER,
    READER_PASSWORD,
    WRITER,
    WRITER_PASSWORD,
    SecureServer,
    basic,
    basic_server_fixture,
    bearer,
    idp_thread_fixture,
    oidc_server_fixture,
)

WRONG_PASSWORD = "wrong-pw-Vb55qe"
FAMILY, GIVEN = PATIENT_NAME.split("^")


def _queries(server: SecureServer, headers: dict[str, str]) -> None:
    s = server.study
    for path in (f"/studies?PatientName={FAMILY}*&PatientID={PATIENT_ID}&includefield=all",
                 f"/studies?00100010={FAMILY}%5E{GIVEN}&00100020={PATIENT_ID}",
                 f"/series?PatientName={FAMILY}",
                 f"/wado?requestType=WADO&studyUID={s.study}&seriesUID={s.series}&objectUID={s.sop}"
                 f"&PatientName={FAMILY}"):
        requests.get(server.url + path, headers=headers, timeout=30)


def _assert_clean(server: SecureServer, secrets: list[str]) -> None:
    log = server.proc.log()
    # Positive control: the traffic was logged (access lines with the user).
    assert '"GET /studies HTTP/1.1" 200' in log
    for secret in [*secrets, FAMILY, GIVEN, PATIENT_ID, CLIENT_SECRET]:
        assert secret not in log, f"{secret!r} found in the server log"
    assert "Authorization" not in log and "authorization" not in log


def test_basic_auth_logs_no_password_and_no_patient(basic_server: SecureServer) -> None:
    good, bad = basic(READER, READER_PASSWORD), basic(WRITER, WRONG_PASSWORD)
    _queries(basic_server, good)
    _queries(basic_server, bad)
    requests.get(basic_server.url + "/studies", headers={"Authorization": "Basic " + base64.b64encode(
        f"{WRONG_PASSWORD}".encode()).decode()}, timeout=10)
    log = basic_server.proc.log()
    assert f'"{READER}"' in log  # the principal's name is the only identity logged
    headers = [h["Authorization"].split()[1] for h in (good, bad, basic(WRITER, WRITER_PASSWORD))]
    _assert_clean(basic_server, [READER_PASSWORD, WRITER_PASSWORD, WRONG_PASSWORD, *headers])


def test_oidc_logs_no_token_no_client_secret_and_no_patient(oidc_server: SecureServer) -> None:
    idp = oidc_server.provider
    tokens = [idp.token(roles=["read"]), idp.token(aud="someone-else"), idp.unsigned_token(),
              idp.opaque_token(roles=["read"]), "f" * 64]
    for token in tokens:
        _queries(oidc_server, bearer(token))
    assert idp.introspections > 0  # the client secret was really used
    parts = [p for t in tokens for p in t.split(".") if len(p) > 16]
    _assert_clean(oidc_server, [*tokens, *parts])
