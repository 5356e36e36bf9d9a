"""Who may use the DIMSE listener: the exposure rule, known peers, User
Identity negotiation checked by the HTTP authenticators (basic and JWT), and
DICOM TLS.  The policy does not depend on the store: the embedded store runs
it (tests/test_dimse.py runs the data paths on every store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from twisted.python import usage

from dicomweb.config import load_settings
from dicomweb.dimse.peers import Peer, ae_title, bind, peer
from dicomweb.dimse.server import check_exposure
from tests.dicomgen import ct_instance
from tests.dimse_helpers import VERIFICATION, DimseServer, associate, c_store, identifier
from tests.idp import AUDIENCE
from tests.security_fixtures import (
    PATIENT_NAME,
    READER,
    READER_PASSWORD,
    WRITER,
    WRITER_PASSWORD,
    ThreadedIdp,
    write_tls_files,
    write_users_file,
)

USERNAME_PASSCODE, JWT = 2, 5


# -- parsing and the exposure rule ---------------------------------------------------------------


def test_peers_and_addresses_parse() -> None:
    assert peer("ORTHANC=10.0.0.5:4242") == Peer("ORTHANC", "10.0.0.5", 4242)
    assert peer(" PACS = [::1]:104") == Peer("PACS", "::1", 104)
    assert peer("SECURE=tls://pacs.example:2762") == Peer("SECURE", "pacs.example", 2762, tls=True)
    assert str(peer("SECURE=TLS://[::1]:2762")) == "SECURE=tls://::1:2762"
    assert bind("11112") == ("127.0.0.1", 11112)
    assert bind("0.0.0.0:104") == ("0.0.0.0", 104)
    assert ae_title("  STORESCU ") == "STORESCU"
    for bad in ("", "A" * 17, "BACK\\SLASH"):
        with pytest.raises(ValueError):
            ae_title(bad)
    for bad in ("NOPORT", "A=host", "A=host:0", "A=host:99999", "=h:1", "A=tls://", "A=tls://host"):
        with pytest.raises(ValueError):
            peer(bad)


@pytest.mark.parametrize("args, refused", [
    (["--dimse-port", "11112"], False),
    (["--dimse-port", "127.0.0.1:11112"], False),
    (["--dimse-port", "0.0.0.0:11112"], True),
    (["--dimse-port", "0.0.0.0:11112", "--allow-remote"], False),
    (["--dimse-port", "0.0.0.0:11112", "--dimse-refuse-unknown", "--dimse-peer", "A=10.0.0.1:104"], False),
    (["--dimse-port", "0.0.0.0:11112", "--dimse-tls-cert", "c.pem", "--dimse-tls-key", "k.pem"], False),
])
def test_the_exposure_rule(args: list[str], refused: bool) -> None:
    command_line: dict[str, object] = {}
    it = iter(args)
    for arg in it:
        name = arg[2:]
        if name in ("allow-remote", "dimse-refuse-unknown"):
            command_line[name] = True
        elif name == "dimse-peer":
            command_line[name] = [next(it)]
        else:
            command_line[name] = next(it)
    settings = load_settings(command_line, {})
    if refused:
        with pytest.raises(usage.UsageError):
            check_exposure(settings)
    else:
        check_exposure(settings)


# -- known peers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseServer]:
    base = tmp_path_factory.mktemp("dimse-restricted")
    with DimseServer(str(base / "data"), str(base / "server.log"), "--dimse-refuse-unknown",
                     "--dimse-peer", "GOOD=127.0.0.1:1", "--dimse-peer", "ELSEWHERE=192.0.2.1:104") as proc:
        yield proc


def test_unknown_calling_ae_is_rejected(restricted: DimseServer) -> None:
    assoc = associate(restricted.dimse_port, [(VERIFICATION, [])], ae_title="BAD")
    assert assoc.is_rejected
    assert "DIMSE association refused: the calling AE is not a known peer (calling AE BAD" in restricted.log()


def test_a_known_ae_from_another_address_is_rejected(restricted: DimseServer) -> None:
    assoc = associate(restricted.dimse_port, [(VERIFICATION, [])], ae_title="ELSEWHERE")
    assert assoc.is_rejected


def test_a_known_peer_is_served(restricted: DimseServer) -> None:
    assoc = associate(restricted.dimse_port, [(VERIFICATION, [])], ae_title="GOOD")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


# -- authentication ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_dimse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseServer]:
    base = tmp_path_factory.mktemp("dimse-basic")
    users = write_users_file(base / "users")
    with DimseServer(str(base / "data"), str(base / "server.log"), "--auth", "basic", "--users-file",
                     str(users), "--dimse-peer", "MODALITY=127.0.0.1:1") as proc:
        yield proc
    assert "Traceback" not in proc.log()


def _user(name: str, password: str) -> tuple[int, bytes, bytes]:
    return USERNAME_PASSCODE, name.encode(), password.encode()


def test_auth_without_user_identity_is_rejected(basic_dimse: DimseServer) -> None:
    assoc = associate(basic_dimse.dimse_port, [(VERIFICATION, [])])
    assert assoc.is_rejected
    assert "no user identity (authentication is on)" in basic_dimse.log()


def test_auth_with_a_bad_password_is_rejected(basic_dimse: DimseServer) -> None:
    assoc = associate(basic_dimse.dimse_port, [(VERIFICATION, [])], user=_user(WRITER, "wrong"))
    assert assoc.is_rejected
    assert "wrong" not in basic_dimse.log()


def test_a_writer_stores_and_a_reader_only_reads(basic_dimse: DimseServer) -> None:
    study = generate_uid()
    data = ct_instance(study, generate_uid(), 1, patient_name=PATIENT_NAME)
    assert c_store(basic_dimse.dimse_port, data, user=_user(READER, READER_PASSWORD)).Status == 0x0124
    assert c_store(basic_dimse.dimse_port, data, user=_user(WRITER, WRITER_PASSWORD)).Status == 0
    assoc = associate(basic_dimse.dimse_port, [("1.2.840.10008.5.1.4.1.2.2.1", [])],
                      user=_user(READER, READER_PASSWORD))
    assert assoc.is_established
    answers = [ident for status, ident in assoc.send_c_find(identifier("STUDY", StudyInstanceUID=study),
                                                             "1.2.840.10008.5.1.4.1.2.2.1")
               if status.Status == 0xFF00]
    assoc.release()
    assert len(answers) == 1
    assert PATIENT_NAME not in basic_dimse.log() and PATIENT_NAME.split("^")[0] not in basic_dimse.log()


def test_a_known_peer_needs_no_user_identity(basic_dimse: DimseServer) -> None:
    data = ct_instance(generate_uid(), generate_uid(), 1)
    assert c_store(basic_dimse.dimse_port, data, ae_title="MODALITY").Status == 0


@pytest.fixture(scope="module")
def jwt_dimse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DimseServer, ThreadedIdp]]:
    idp = ThreadedIdp()
    base = tmp_path_factory.mktemp("dimse-oidc")
    try:
        with DimseServer(str(base / "data"), str(base / "server.log"), "--auth", "oidc",
                         "--oidc-issuer", idp.provider.issuer, "--oidc-audience", AUDIENCE) as proc:
            yield proc, idp
    finally:
        idp.stop()


def test_a_jwt_user_identity_is_checked_like_a_bearer_token(jwt_dimse: tuple[DimseServer, ThreadedIdp]) -> None:
    server, idp = jwt_dimse
    data = ct_instance(generate_uid(), generate_uid(), 1)
    writer = idp.provider.token(roles=["read", "write"]).encode()
    reader = idp.provider.token(roles=["read"]).encode()
    assert c_store(server.dimse_port, data, user=(JWT, writer, b"")).Status == 0
    assert c_store(server.dimse_port, data, user=(JWT, reader, b"")).Status == 0x0124
    expired = idp.provider.token(exp=1).encode()
    assoc = associate(server.dimse_port, [(VERIFICATION, [])], user=(JWT, expired, b""))
    assert assoc.is_rejected
    assoc = associate(server.dimse_port, [(VERIFICATION, [])], user=_user("alice", "secret"))
    assert assoc.is_rejected  # a password is no bearer token


# -- DICOM TLS -----------------------------------------------------------------------------------


def test_dicom_tls_with_client_certificates(tmp_path: Path) -> None:
    import ssl

    from pynetdicom import AE

    tls = write_tls_files(tmp_path)
    with DimseServer(str(tmp_path / "data"), str(tmp_path / "server.log"), "--dimse-tls-cert", tls.cert,
                     "--dimse-tls-key", tls.key, "--dimse-tls-ca", tls.ca) as proc:
        assert "DIMSE listener (AE DICOMWEB, TLS)" in proc.log()
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
        ae = AE("TLSSCU")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", proc.dimse_port, ae_title="DICOMWEB", tls_args=(client, "localhost"))
        assert not assoc.is_established  # no client certificate
        client.load_cert_chain(tls.cert, tls.key)  # a certificate the CA signed
        assoc = ae.associate("127.0.0.1", proc.dimse_port, ae_title="DICOMWEB", tls_args=(client, "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()


@pytest.mark.parametrize("trusted", [True, False])
def test_cmove_to_a_tls_peer(tmp_path: Path, trusted: bool) -> None:
    """``--dimse-peer AE=tls://host:port``: the server opens the C-MOVE
    sub-association over DICOM TLS and checks the peer's certificate against
    ``--dimse-tls-ca``; a peer it cannot verify gets nothing."""
    import io
    import ssl

    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from tests.dicomgen import ct_instance
    from tests.dimse_helpers import PeerSCP, c_move, c_store, identifier

    tls = write_tls_files(tmp_path)
    (tmp_path / "other").mkdir()
    other = write_tls_files(tmp_path / "other")
    peer_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    peer_ctx.load_cert_chain(tls.cert, tls.key)
    study = generate_uid()
    data = ct_instance(study, generate_uid(), 1)
    with PeerSCP("TLSPEER", ssl_context=peer_ctx) as tls_peer, \
            DimseServer(str(tmp_path / "data"), str(tmp_path / "server.log"), "--dimse-peer", tls_peer.option,
                        "--dimse-tls-ca", tls.ca if trusted else other.ca) as server:
        assert c_store(server.dimse_port, data).Status == 0
        statuses = c_move(server.dimse_port, identifier("STUDY", StudyInstanceUID=study), "TLSPEER")
        if trusted:
            assert statuses[-1].Status == 0
            (received,) = tls_peer.received.files.values()
            assert dcmread(io.BytesIO(received)).PixelData == dcmread(io.BytesIO(data)).PixelData
        else:
            assert statuses[-1].Status != 0
            assert tls_peer.received.files == {}
        assert "Traceback" not in server.log()
