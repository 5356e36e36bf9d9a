"""The embedded store's small reads: tried on the reactor thread, run in the
thread pool when they would hold the reactor too long or meet a lock, with
the same answers either way.

In-process, on a store opened in a temporary directory; the HTTP behaviour
of the same reads is in test_qido_conformance.py and test_wado_*.py.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.python.threadpool import ThreadPool

from dicomweb.dicom.query import parse_query
from dicomweb.store import NotFound, embedded
from dicomweb.store.embedded import EmbeddedStore
from dicomweb.twistedtypes import global_reactor
from tests.test_sqlsearch import corpus

reactor = global_reactor()

INFOS = corpus()
ONE = INFOS[0]


@pytest_twisted.async_yield_fixture(name="store")
async def _store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test-embedded-reads")
    pool.start()
    store = EmbeddedStore(str(tmp_path / "data"), reactor, pool)
    await store.open()
    files = []
    for n, _ in enumerate(INFOS):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(b"\0")
        files.append(str(path))
    store.index.link(INFOS, files)
    yield store
    await store.close()
    pool.stop()


@pytest.fixture(name="in_pool")
def _in_pool(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads each pool read ran on (a read that left the reactor)."""
    threads: list[str] = []
    run = EmbeddedStore._run

    def spy(self: EmbeddedStore, fn: Any, *args: Any) -> Any:
        def recorded(*inner: Any) -> Any:
            threads.append(threading.current_thread().name)
            return fn(*inner)
        return run(self, recorded, *args)

    monkeypatch.setattr(EmbeddedStore, "_run", spy)
    return threads


def studies_query() -> Any:
    return parse_query("study", [("ModalitiesInStudy", "")])


@pytest_twisted.ensureDeferred
async def test_a_quick_search_is_answered_on_the_reactor_thread(store: EmbeddedStore, in_pool: list[str]) -> None:
    answers = await store.search(studies_query())
    assert answers and in_pool == []


@pytest_twisted.ensureDeferred
async def test_one_instance_is_read_on_the_reactor_thread(store: EmbeddedStore, in_pool: list[str]) -> None:
    records = await store.instances(ONE.study_uid, ONE.series_uid, ONE.sop_uid)
    metadata = await store.metadata(ONE.study_uid, ONE.series_uid, ONE.sop_uid)
    assert [r.sop_uid for r in records] == [ONE.sop_uid] and len(metadata) == 1
    assert in_pool == []


@pytest_twisted.ensureDeferred
async def test_a_read_over_the_budget_is_interrupted_and_answered_from_the_pool(
        store: EmbeddedStore, in_pool: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    quick = await store.search(studies_query())
    record = (await store.instances(ONE.study_uid, ONE.series_uid, ONE.sop_uid))[0]
    monkeypatch.setattr(embedded, "INLINE_BUDGET", -1.0)  # every budget check says "too long"
    monkeypatch.setattr(embedded, "_PROGRESS_STEPS", 1)
    assert await store.search(studies_query()) == quick
    assert (await store.instances(ONE.study_uid, ONE.series_uid, ONE.sop_uid))[0] == record
    assert in_pool and all(name.startswith("PoolThread-test-embedded-reads") for name in in_pool)


@pytest_twisted.ensureDeferred
async def test_after_a_slow_search_the_next_ones_of_its_shape_go_straight_to_the_pool(
        store: EmbeddedStore, in_pool: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "POOL_AFTER_SLOW", 2)
    with monkeypatch.context() as slow:
        slow.setattr(embedded, "INLINE_BUDGET", -1.0)
        slow.setattr(embedded, "_PROGRESS_STEPS", 1)
        await store.search(studies_query())  # interrupted: answered from the pool
    assert len(in_pool) == 1
    other_shape = parse_query("study", [("PatientID", "*")])
    await store.search(other_shape)
    assert len(in_pool) == 1, "another shape is still tried on the reactor"
    await store.search(studies_query())
    await store.search(studies_query())
    assert len(in_pool) == 3, "the same shape went to the pool twice without trying"
    await store.search(studies_query())
    assert len(in_pool) == 3, "then it is tried on the reactor again"


@pytest_twisted.ensureDeferred
async def test_many_answers_are_built_in_the_pool(
        store: EmbeddedStore, in_pool: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    quick = await store.search(studies_query())
    monkeypatch.setattr(embedded, "INLINE_ROWS", 0)
    assert await store.search(studies_query()) == quick
    assert len(in_pool) == 1


@pytest_twisted.ensureDeferred
async def test_a_locked_database_sends_the_read_to_the_pool(
        store: EmbeddedStore, in_pool: list[str]) -> None:
    expected = await store.search(studies_query())
    inline = store._inline_conn()
    assert inline is not None

    class Busy:
        """The reactor connection as it is while another process holds a lock."""

        def __getattr__(self, name: str) -> Any:
            return getattr(inline, name)

        def execute(self, *args: Any) -> Any:
            raise _busy()

    store._reactor_conn = cast(sqlite3.Connection, Busy())
    assert await store.search(studies_query()) == expected
    assert in_pool


@pytest_twisted.ensureDeferred
async def test_not_found_is_not_retried(store: EmbeddedStore, in_pool: list[str]) -> None:
    with pytest.raises(NotFound):
        await store.instances(ONE.study_uid, ONE.series_uid, "1.2.3.4.5.6.7.8.9")
    assert in_pool == []


@pytest_twisted.ensureDeferred
async def test_the_reactor_connection_cannot_write(store: EmbeddedStore) -> None:
    await store.search(studies_query())
    inline = store._inline_conn()
    assert inline is not None
    with pytest.raises(sqlite3.OperationalError):
        inline.execute("DELETE FROM studies")


@pytest_twisted.ensureDeferred
async def test_a_search_sees_what_was_stored_just_before(store: EmbeddedStore, tmp_path: Path) -> None:
    """Read-your-writes: the reactor's connection starts a fresh snapshot per read."""
    before = {a["0020000D"]["Value"][0] for a in await store.search(studies_query())}
    extra = tmp_path / "extra.dcm"
    extra.write_bytes(b"\0")
    info = _renamed(ONE, "1.2.826.0.1.3680043.8.498.999")
    await store._run(store.index.link, [info], [str(extra)])
    after = {a["0020000D"]["Value"][0] for a in await store.search(studies_query())}
    assert after == before | {info.study_uid}


def _busy() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = sqlite3.SQLITE_BUSY
    return error


def _renamed(info: Any, study_uid: str) -> Any:
    import dataclasses

    study = {**info.study, "0020000D": {"vr": "UI", "Value": [study_uid]}}
    series = {**info.series, "0020000E": {"vr": "UI", "Value": [study_uid + ".1"]}}
    instance = {**info.instance, "00080018": {"vr": "UI", "Value": [study_uid + ".1.1"]}}
    return dataclasses.replace(info, study_uid=study_uid, series_uid=study_uid + ".1", sop_uid=study_uid + ".1.1",
                               study=study, series=series, instance=instance,
                               metadata={**info.metadata, **study, **series, **instance})
