"""The measured operations and the alternating runner.

An operation is a function ``fn(target, round_no) -> list[float]``: latency
operations return seconds per request, throughput operations return one rate.
``alternate`` runs it on every target in turn (A, B, A, B, ...), discards the
warm-up rounds and keeps the rest. A target that answers an operation with a
wrong status is marked "n/a (status ...)" and not asked again.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

import requests
from client import (
    ACCEPT_FRAMES,
    ACCEPT_INSTANCES,
    NotAnswered,
    Target,
    decode,
    get,
    get_body,
    get_streamed,
    new_session,
    stow,
    stow_body,
)
from corpus import QIDO_DATES, QIDO_NAME, Corpus, Instance

OpFn = Callable[[Target, int], list[float]]


@dataclass
class Outcome:
    """Samples per target name, plus why a target has none, plus remarks."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def median(self, name: str) -> float | None:
        values = self.samples.get(name)
        return statistics.median(values) if values else None

    def note(self, name: str, text: str) -> None:
        if text not in self.notes.setdefault(name, []):
            self.notes[name].append(text)


def alternate(targets: list[Target], fn: OpFn, rounds: int, warmup: int = 1, say: Callable[[str], None] = print,
              outcome: Outcome | None = None) -> Outcome:
    out = outcome or Outcome()
    for r in range(warmup + rounds):
        for t in targets:
            if t.name in out.na:
                continue
            try:
                samples = fn(t, r)
            except NotAnswered as exc:
                out.na[t.name] = str(exc)
                say(f"    {t.name}: n/a ({exc})")
                continue
            except requests.RequestException as exc:
                out.na[t.name] = f"error: {type(exc).__name__}"
                say(f"    {t.name}: error {exc}")
                continue
            if r >= warmup:
                out.samples.setdefault(t.name, []).extend(samples)
    return out


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# -- STOW -----------------------------------------------------------------------


def stow_round(corpus: Corpus, instances: list[Instance], per_request: int, variant: int) -> OpFn:
    """Store ``instances`` (as UID variant ``variant + round``) in requests of ``per_request``.

    Only the POST round trips are timed; reading files and building bodies is not.
    Returns instances/s; MB/s follows from the mean instance size.
    """

    def run(t: Target, r: int) -> list[float]:
        elapsed = 0.0
        for i in range(0, len(instances), per_request):
            body = stow_body([corpus.read(inst, variant + r) for inst in instances[i:i + per_request]])
            elapsed += timed(lambda b=body: stow(t, b))  # type: ignore[misc]
        return [len(instances) / elapsed]

    return run


# -- QIDO -----------------------------------------------------------------------


def json_latency(path: str, params: dict[str, str] | None, expected: int, what: str,
                 out: Outcome, samples: int) -> OpFn:
    """GET ``path`` as DICOM JSON ``samples`` times; the clock stops when the
    answer has arrived, and the number of items is checked (``what`` names them)."""

    def run(t: Target, r: int) -> list[float]:
        times = []
        found: list[object] = []
        for _ in range(samples):
            start = time.perf_counter()
            body = get_body(t, path, params)
            times.append(time.perf_counter() - start)
            found = decode(body)
        if len(found) != expected:
            out.note(t.name, f"returned {len(found)} {what}, expected {expected}")
        return times

    return run


def qido_studies(expected: int, out: Outcome, samples: int) -> OpFn:
    """GET /studies?PatientName=Smith*&StudyDate=20180101-20221231 (result count checked).

    ``*`` is sent as is, as browsers (OHIF's encodeURIComponent) do: Orthanc 1.10
    does not decode ``%2A`` and would match nothing.
    """
    query = f"PatientName={quote(QIDO_NAME, safe='*')}&StudyDate={'-'.join(QIDO_DATES)}"
    return json_latency(f"/studies?{query}", None, expected, "studies", out, samples)


def qido_instances(limit: int, out: Outcome, samples: int) -> OpFn:
    """GET /instances?limit=N, no filter (N = the 1,200 of the main corpus)."""
    return json_latency("/instances", {"limit": str(limit)}, limit, "instances", out, samples)


# -- WADO -----------------------------------------------------------------------


def study_metadata(study: str, expected: int, out: Outcome, samples: int) -> OpFn:
    """GET /studies/{study}/metadata (Accept: application/dicom+json)."""
    return json_latency(f"/studies/{study}/metadata", None, expected, "instances", out, samples)


def study_retrieve(studies: list[list[Instance]], out: Outcome, samples: int) -> OpFn:
    """GET /studies/{study}, multipart as stored, streamed; MB/s per study.

    On a static server: one GET of the same instances as one multipart body
    prepared on disk (``study_bodies``): the same bytes with no DICOM work.
    """

    def run(t: Target, r: int) -> list[float]:
        rates = []
        for k in range(samples):
            study = studies[(r * samples + k) % len(studies)]
            payload = sum(i.size for i in study)
            start = time.perf_counter()
            if t.kind == "static":
                got = get_streamed(t, f"/{STUDY_BODIES}/{study[0].study}.multipart", "*/*")
            else:
                got = get_streamed(t, f"/studies/{study[0].study}", ACCEPT_INSTANCES)
            elapsed = time.perf_counter() - start
            if got < payload:
                raise NotAnswered(f"short body: {got} < {payload} bytes")
            rates.append(payload / elapsed / 1e6)
        return rates

    return run


STUDY_BODIES = "study-bodies"


def study_bodies(corpus: Corpus) -> None:
    """Write each main study as one multipart body (once), for the static servers."""
    folder = corpus.root / STUDY_BODIES
    folder.mkdir(exist_ok=True)
    for uid, study in corpus.studies("main").items():
        path = folder / f"{uid}.multipart"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(stow_body([corpus.read(i) for i in study]))
            tmp.replace(path)


def frame_path(inst: Instance, frame: int) -> str:
    return f"/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}/frames/{frame}"


def frame_latency(pick: Callable[[int], tuple[Instance, int]], min_bytes: int, samples: int) -> OpFn:
    """GET .../frames/{n}, Accept multipart octet-stream, transfer-syntax=* (as stored)."""

    def run(t: Target, r: int) -> list[float]:
        times = []
        for k in range(samples):
            inst, frame = pick(r * samples + k)
            start = time.perf_counter()
            resp = get(t, frame_path(inst, frame), ACCEPT_FRAMES)
            times.append(time.perf_counter() - start)
            if len(resp.content) < min_bytes:
                raise NotAnswered(f"frame body of {len(resp.content)} bytes, expected >= {min_bytes}")
        return times

    return run


def concurrent_frames(instances: list[Instance], clients: int, duration: float) -> OpFn:
    """``clients`` threads, each with its own session, fetch native frames for ``duration`` s."""

    def client(t: Target, seed: int, stop: float, errors: list[str]) -> int:
        worker = Target(t.name, t.url, t.kind, new_session())
        done, k = 0, seed * 7919
        while time.perf_counter() < stop:
            inst = instances[k % len(instances)]
            k += 1
            try:
                get(worker, frame_path(inst, 1), ACCEPT_FRAMES)
                done += 1
            except (NotAnswered, requests.RequestException) as exc:
                errors.append(str(exc))
                break
        return done

    def run(t: Target, r: int) -> list[float]:
        get(t, frame_path(instances[0], 1), ACCEPT_FRAMES)  # probe: n/a before 16 threads fail
        errors: list[str] = []
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            counts = list(pool.map(lambda i: client(t, i, start + duration, errors), range(clients)))
        elapsed = time.perf_counter() - start
        if errors:
            raise NotAnswered(f"{len(errors)} client(s) failed: {errors[0]}")
        return [sum(counts) / elapsed]

    return run


# -- big transfers (memory) -----------------------------------------------------


@dataclass
class Transfer:
    seconds: float
    bytes: int
    rss_start: int
    rss_peak: int

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_start


def with_rss(sampler: object, name: str, call: Callable[[], int]) -> Transfer:
    """Run ``call`` (returns bytes moved) while sampling ``name``'s RSS."""
    with sampler.window() as (start, peak):  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        moved = call()
        seconds = time.perf_counter() - t0
    return Transfer(seconds, moved, start[name], peak[name])
