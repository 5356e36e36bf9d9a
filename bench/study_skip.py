"""How long the embedded store takes to find where a deep unfiltered page
begins: ``python bench/study_skip.py`` (in-process, a few seconds).

An in-memory index holds ``--studies`` study rows (default 20,000) of 50
instances in 2 series each, dated like bench/qido.py's layout (2015-01-01 +
3n days, 10:15:00), i.e. the studies of a million instances. The figure is the
median time of ``sqlsearch._study_skip`` for ``/instances?limit=100&offset=N``
with N half the instances (the deep page of bench/qido.py's query d), then the
whole page (skip + SELECT), over ``--runs`` calls each. Last, what the
index's triggers on ``studies`` (if any) cost a writer: the median time of
one study's count update (what a STOW batch does per study), with them and
with them dropped.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dicomweb.dicom.query import parse_query
from dicomweb.store import sqlschema, sqlsearch

PER_STUDY, SERIES_PER_STUDY = 50, 2


def build(studies: int) -> sqlite3.Connection:
    """Study, series and instance rows (no match keys: the skip reads none)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlschema.migrate(conn)
    conn.execute("BEGIN")
    for n in range(studies):
        uid = f"1.2.826.0.1.3680043.10.1.1.{1000000 + n}"
        day = (date(2015, 1, 1) + timedelta(days=3 * n)).strftime("%Y%m%d")
        conn.execute("INSERT INTO studies (study_uid, study_date, study_time, attrs, updated_at, sort_date,"
                     " num_series, num_instances) VALUES (?,?,?,'{}',0,?,?,?)",
                     (uid, day, "101500", f"{day}101500.000000", SERIES_PER_STUDY, PER_STUDY))
        for s in range(SERIES_PER_STUDY):
            series = f"{uid}.{s}"
            conn.execute("INSERT INTO series (series_uid, study_uid, attrs, updated_at, num_instances, sort_number)"
                         " VALUES (?,?,'{}',0,?,?)", (series, uid, PER_STUDY // SERIES_PER_STUDY, s))
            conn.executemany(
                "INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, transfer_syntax_uid,"
                " size, path, bulk, attrs, stored_at, sort_number) VALUES (?,?,?,'1.2.3','1.2.840.10008.1.2.1',"
                " 1,'x','{}','{}',0,?)",
                [(f"{series}.{i}", series, uid, i) for i in range(PER_STUDY // SERIES_PER_STUDY)])
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    return conn


def median_ms(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def update_us(conn: sqlite3.Connection, studies: int, runs: int) -> float:
    """Median microseconds of one study's count update, in its own transaction."""
    times = []
    for n in range(runs):
        uid = f"1.2.826.0.1.3680043.10.1.1.{1000000 + n * 7 % studies}"
        began = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("UPDATE studies SET num_instances = num_instances + 1 WHERE study_uid = ?", (uid,))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    began = time.perf_counter()
    conn = build(args.studies)
    built = time.perf_counter() - began
    offset = args.studies * PER_STUDY // 2
    query = parse_query("instance", [("limit", "100"), ("offset", str(offset))])
    start = sqlsearch._study_skip(conn, query)
    skip = median_ms(lambda: sqlsearch._study_skip(conn, query), args.runs)
    page = median_ms(lambda: sqlsearch.fetch(conn, query), args.runs)
    print(f"{args.studies} studies, {args.studies * PER_STUDY} instances (built in {built:.1f} s);"
          f" offset {offset} starts at {start}")
    print(f"study skip p50 {skip:.3f} ms; whole page (skip + SELECT) p50 {page:.3f} ms; {args.runs} runs")
    triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='studies'")]
    with_triggers = update_us(conn, args.studies, 20 * args.runs)
    for name in triggers:
        conn.execute(f"DROP TRIGGER {name}")
    without = update_us(conn, args.studies, 20 * args.runs)
    print(f"one study's count update p50 {with_triggers:.1f} us with the {len(triggers)} triggers on studies,"
          f" {without:.1f} us without")


if __name__ == "__main__":
    main()
