"""Units of dicomweb.dimse that need no server: the bridge's accounting of
work in flight, identifier -> Query, and the choice of what to send."""

from __future__ import annotations

from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred

from dicomweb.dimse.bridge import Bridge, Stopping
from dicomweb.dimse.find import FindError, answer, build_query, identifier_pairs
from dicomweb.dimse.retrieve import EXPLICIT_LE, IMPLICIT_LE, choose_syntax
from dicomweb.twistedtypes import IReactor
from tests.dimse_helpers import identifier

J2K = "1.2.840.10008.1.2.4.90"

#: the bridge paths tested here never reach the reactor
NO_REACTOR = cast(IReactor, None)


def test_close_waits_for_the_work_in_flight_and_refuses_new_work() -> None:
    bridge = Bridge(reactor=NO_REACTOR)
    inner: Deferred[str] = Deferred()
    outer = bridge._start(lambda: inner, ())  # what call() runs on the reactor
    assert bridge.in_flight == 1
    closed = bridge.close()
    assert not closed.called
    with pytest.raises(Stopping):
        bridge.call(lambda: None)
    inner.callback("stored")
    assert closed.called and bridge.in_flight == 0
    results: list[Any] = []
    outer.addCallback(results.append)
    assert results == ["stored"]


def test_a_coroutine_runs_as_a_deferred() -> None:
    bridge = Bridge(reactor=NO_REACTOR)

    async def work(x: int) -> int:
        return x + 1

    results: list[Any] = []
    bridge._start(work, (1,)).addCallback(results.append)
    assert results == [2] and bridge.close().called


def test_identifier_to_query() -> None:
    ds = identifier("SERIES", StudyInstanceUID=["1.2.3", "1.2.4"], Modality="CT", SeriesDate="20200101-",
                     SeriesDescription="")
    query = build_query(ds)
    kinds = {f.keyword: f.kind for f in query.filters}
    assert query.level == "series"
    assert kinds == {"StudyInstanceUID": "list", "Modality": "single", "SeriesDate": "range",
                     "SeriesDescription": "universal"}
    assert ("0020000D", "1.2.3\\1.2.4") in identifier_pairs(ds)


def test_specific_character_set_is_decoded() -> None:
    ds = identifier("STUDY", SpecificCharacterSet="ISO_IR 100")
    ds.add_new(0x00100010, "PN", "Müller*".encode("latin-1"))
    assert ("00100010", "Müller*") in identifier_pairs(ds)


@pytest.mark.parametrize("level, keys", [("WARD", {}), ("", {}), ("STUDY", {"StudyDate": "2020-2019x"})])
def test_bad_identifiers(level: str, keys: dict[str, str]) -> None:
    with pytest.raises(FindError):
        build_query(identifier(level, **keys))


def test_the_patient_level_belongs_to_the_patient_root_model() -> None:
    patient_root_find, study_root_find = "1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"
    assert build_query(identifier("PATIENT", PatientID="P1"), model=patient_root_find).level == "patient"
    with pytest.raises(FindError) as refused:
        build_query(identifier("PATIENT", PatientID="P1"), model=study_root_find)
    assert refused.value.code == 0xA900


def test_an_answer_has_exactly_the_requested_keys() -> None:
    ds = identifier("STUDY", PatientName="", StudyInstanceUID="", RetrieveAETitle="", AccessionNumber="")
    found = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
             "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
             "00080061": {"vr": "CS", "Value": ["CT"]},
             "00081190": {"vr": "UR", "Value": ["studies/1.2.3"]}}
    out = answer(found, ds, "STUDY", "DICOMWEB")
    assert {e.keyword for e in out} == {"SpecificCharacterSet", "QueryRetrieveLevel", "PatientName",
                                        "StudyInstanceUID", "RetrieveAETitle", "AccessionNumber"}
    assert out.RetrieveAETitle == "DICOMWEB" and out.AccessionNumber in (None, "")


@pytest.mark.parametrize("stored, accepted, chosen", [
    (J2K, [J2K, EXPLICIT_LE], J2K),  # as stored
    (IMPLICIT_LE, [EXPLICIT_LE], IMPLICIT_LE),  # pynetdicom re-encodes native syntaxes itself
    (J2K, [EXPLICIT_LE], EXPLICIT_LE),  # transcoded
    (J2K, [], None),
])
def test_what_is_sent(stored: str, accepted: list[str], chosen: str | None) -> None:
    assert choose_syntax(stored, accepted) == chosen


def test_the_dimse_service_sits_beside_the_http_listener_only_when_configured() -> None:
    from twisted.application import service

    from dicomweb.config import Settings
    from dicomweb.dimse.server import DimseService, with_dimse

    listener = service.Service()
    assert with_dimse(listener, Settings(), object(), None, None) is listener  # type: ignore[arg-type]
    both = with_dimse(listener, Settings(dimse_port="0"), object(), None, None)  # type: ignore[arg-type]
    assert isinstance(both, service.MultiService)
    assert [type(s) for s in both] == [service.Service, DimseService]
