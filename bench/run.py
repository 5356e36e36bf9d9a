"""Side-by-side benchmark of dicomweb against Orthanc (issue 9).

    python bench/run.py [--quick] [--scale] [--big] [--stores embedded,couch] [--server-rev REV]

Starts Orthanc (DICOMweb plugin), our server on each store and a static file
server, loads the cached corpus, measures each operation alternately on every
server, prints one table and appends it to bench/REPORT.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import ops
import pydicom
import report
import servers
from client import LazyMultipart, NotAnswered, Target, get_streamed, stow, stow_body
from corpus import BIG_STUDY, FULL, QUICK, SCALE, Corpus, Layout, Spec, Template, ensure_corpus, make_template, render_layout
from ops import Outcome
from report import MB, Goal, MiB, Row, ms, ratio_row

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclass(frozen=True)
class Plan:
    spec: Spec
    rounds: int  # measured rounds per operation (after one warm-up round)
    samples: int  # requests per round for latency operations
    slow_samples: int  # requests per round for metadata and study retrieve
    duration: float  # seconds per round of the 16-client operation
    stow_rounds: int
    stow_batch: int = 20
    clients: int = 16


PLANS = {"full": Plan(FULL, rounds=5, samples=10, slow_samples=3, duration=10, stow_rounds=5),
         "quick": Plan(QUICK, rounds=1, samples=5, slow_samples=2, duration=3, stow_rounds=1)}


def say(msg: str) -> None:
    print(msg, flush=True)


# -- setup ----------------------------------------------------------------------


def server_checkout(rev: str | None, tmp: Path) -> tuple[Path, str]:
    """The server code to run: this working tree, or ``git archive REV`` in a temp dir."""
    if not rev:
        return REPO, report.describe_commit(REPO, ("dicomweb", "twisted", "setup.py"))
    dest = tmp / "server-src"
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    commit = report.git(REPO, "rev-parse", "--short", rev)
    node_modules = REPO / "node_modules"
    if node_modules.exists():  # pouchdb-server, if installed in this checkout
        (dest / "node_modules").symlink_to(node_modules)
    return dest, f"{commit} ({rev})"


def start_servers(args: argparse.Namespace, repo: Path, tmp: Path, corpus: Corpus) -> tuple[list[servers.Server], list[str]]:
    notes: list[str] = []
    started = [servers.start_orthanc(tmp / "orthanc")]
    for store in args.stores:
        if store == "embedded":
            started.append(servers.start_ours(repo, tmp / "ours-embedded", store))
        elif store == "couch":
            couch = start_couch(repo, tmp, notes)
            if couch:
                started.append(couch)
        else:
            raise SystemExit(f"unknown store {store!r}")
    started.append(servers.start_static(corpus.root, tmp / "static"))
    if servers.ensure_nginx(say):
        started.append(servers.start_nginx(corpus.root, tmp / "nginx"))
    else:
        notes.append("nginx not available: only twisted.web.static.File as the static baseline")
    return started, notes


def start_couch(repo: Path, tmp: Path, notes: list[str]) -> servers.Server | None:
    if not servers.supports_option(repo, "--couchdb"):
        notes.append("couch store skipped: this server has no --couchdb option yet")
        return None
    pouch = servers.start_pouchdb(repo, tmp / "pouchdb")
    if pouch is None:
        notes.append("couch store skipped: node_modules/.bin/pouchdb-server not found (npm ci --ignore-scripts)")
        return None
    ours = servers.start_ours(repo, tmp / "ours-couch", "couch", ["--couchdb", pouch.url])
    ours.children.append(pouch)
    return ours


# -- the benchmark ----------------------------------------------------------------


class Bench:
    def __init__(self, plan: Plan, corpus: Corpus, started: list[servers.Server]) -> None:
        self.plan, self.corpus = plan, corpus
        kinds = {"Orthanc": "orthanc", "twisted static": "static", "nginx": "static"}
        self.targets = [Target(s.name, s.url, kinds.get(s.name, "ours")) for s in started]
        self.servers = [t for t in self.targets if t.kind != "static"]
        self.ours = [t for t in self.servers if t.kind == "ours"]
        self.statics = [t for t in self.targets if t.kind == "static"]
        self.sampler = servers.RSSSampler([s for s in started if kinds.get(s.name) != "static"])
        self.results: dict[str, Outcome] = {}
        self.copies = 1  # copies of the main corpus stored (each STOW round adds one)
        self.transfers: dict[str, dict[str, ops.Transfer | str]] = {}
        self.only: set[str] = set()  # measure just these operations (--only); empty: all

    def wanted(self, key: str) -> bool:
        return not self.only or key.split("@")[0] in self.only or key in ("stow_load", "load_rest")

    def step(self, key: str, label: str, fn: ops.OpFn, targets: list[Target] | None = None,
             rounds: int | None = None, warmup: int = 1) -> Outcome:
        if not self.wanted(key):
            return Outcome()
        say(f"  {label} ...")
        out = self.results.setdefault(key, Outcome())
        ops.alternate(targets or self.servers, fn, self.plan.rounds if rounds is None else rounds, warmup, say, out)
        return out

    # The corpus load is the STOW warm-up round; the measured rounds come later.
    def load(self) -> None:
        say("loading the corpus (STOW warm-up round) ...")
        main = self.corpus.group("main")
        self.step("stow_load", "STOW corpus", ops.stow_round(self.corpus, main, self.plan.stow_batch, 0),
                  rounds=1, warmup=0)
        rest = self.corpus.group("big") + self.corpus.group("j2k")
        self.step("load_rest", "STOW big series + JPEG 2000", ops.stow_round(self.corpus, rest, self.plan.stow_batch, 0),
                  rounds=1, warmup=0)

    def reads(self, suffix: str = "") -> None:
        p, c = self.plan, self.corpus
        main = c.group("main")
        self.step("qido_studies" + suffix, "QIDO studies",
                  ops.qido_studies(c.expected_qido_matches() * self.copies, self._out("qido_studies" + suffix), p.samples))
        self.step("qido_instances" + suffix, "QIDO instances",
                  ops.qido_instances(len(main), self._out("qido_instances" + suffix), p.samples))
        if suffix:
            return
        big = c.group("big")
        self.step("metadata", "study metadata", ops.study_metadata(big[0].study, len(big), self._out("metadata"),
                                                                    p.slow_samples))
        studies = list(c.studies("main").values())
        ops.study_bodies(c)
        self.step("retrieve", "study retrieve", ops.study_retrieve(studies, self._out("retrieve"), p.slow_samples),
                  targets=self.servers + self.statics)
        native = min(i.size for i in main) - 2048  # at least the pixel bytes of a 512² 16-bit frame
        self.step("frame_native", "native frame",
                  ops.frame_latency(lambda k: (main[(k * 37) % len(main)], 1), native, p.samples))
        j2k = c.group("j2k")[0]
        self.step("frame_j2k", "JPEG 2000 frame",
                  ops.frame_latency(lambda k: (j2k, (j2k.frames + 1) // 2), 1000, p.samples))
        self.step("concurrent", f"{p.clients} clients",
                  ops.concurrent_frames(main, p.clients, p.duration), rounds=max(1, p.rounds // 2 + 1))

    def _out(self, key: str) -> Outcome:
        return self.results.setdefault(key, Outcome())

    def stow_rounds(self) -> None:
        main = self.corpus.group("main")
        for r in range(self.plan.stow_rounds if self.wanted("stow") else 0):
            # variant 1 + r: fresh UIDs every round, so every round really stores
            self.step("stow", f"STOW round {r + 1}", ops.stow_round(self.corpus, main, self.plan.stow_batch, 1 + r),
                      rounds=1, warmup=0)
            self.copies += 1
        for name, samples in self._out("stow").samples.items():
            say(f"    {name}: " + ", ".join(f"{v:.0f}" for v in samples) + " inst/s per round")

    def scale(self) -> None:
        say(f"scale: storing {SCALE.total:,} small instances in each server (this takes a while) ...")
        tpl = make_template(64)
        for t in self.servers:
            seconds = self._load_layout(t, tpl, SCALE, 100)
            if seconds:
                self._out("scale_load").samples[t.name] = [SCALE.total / seconds]
        self.reads(suffix="@scale")

    def _load_layout(self, t: Target, tpl: Template, layout: Layout, per_request: int, start: int = 0) -> float | None:
        total = layout.total
        elapsed, step = 0.0, max(per_request, total // 10)
        for i in range(start, total, per_request):
            body = stow_body(list(render_layout(tpl, layout, i, min(i + per_request, total))))
            try:
                elapsed += ops.timed(lambda b=body: stow(t, b))  # type: ignore[misc]
            except (NotAnswered, OSError) as exc:
                say(f"    {t.name}: load failed at {i}: {exc}")
                return None
            if (i + per_request) % step < per_request:
                say(f"    {t.name}: {i + per_request:,}/{total:,} ({(i + per_request - start) / elapsed:.0f} inst/s)")
        return elapsed

    def big(self) -> None:
        """One ~1 GB STOW request, then the rest of a ~2 GB study, then retrieve it whole."""
        tpl = make_template(512)
        first = next(render_layout(tpl, BIG_STUDY, 0, 1))
        study_uid = pydicom.dcmread(io.BytesIO(first), stop_before_pixels=True).StudyInstanceUID
        for t in self.servers:
            self._big_one(t, tpl, study_uid)

    def _big_one(self, t: Target, tpl: Template, study_uid: str) -> None:
        res = self.transfers.setdefault(t.name, {})
        half = BIG_STUDY.total // 2
        body = LazyMultipart(half, tpl.size, lambda k: next(render_layout(tpl, BIG_STUDY, k, k + 1)))
        say(f"  {t.name}: one STOW request of {len(body) / MB:,.0f} MB ...")
        try:
            res["stow_1gb"] = ops.with_rss(self.sampler, t.name, lambda: (stow(t, body, 3600), len(body))[1])
        except (NotAnswered, OSError) as exc:
            res["stow_1gb"] = str(exc)
            return
        if self._load_layout(t, tpl, BIG_STUDY, 50, start=half) is None:
            return
        say(f"  {t.name}: retrieving the {BIG_STUDY.total * tpl.size / MB:,.0f} MB study ...")
        try:
            res["retrieve_2gb"] = ops.with_rss(
                self.sampler, t.name, lambda: get_streamed(t, f"/studies/{study_uid}", ops.ACCEPT_INSTANCES, 3600))
        except (NotAnswered, OSError) as exc:
            res["retrieve_2gb"] = str(exc)


# -- the table --------------------------------------------------------------------


class Table:
    def __init__(self, bench: Bench) -> None:
        self.b = bench
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.orthanc = "Orthanc"

    def build(self) -> tuple[list[Row], list[str]]:
        for t in self.b.ours:
            self.for_store(t.name)
        self.memory()
        for key, out in self.b.results.items():
            for name, texts in out.notes.items():
                self.notes += [f"{key}, {name}: {text}" for text in texts]
        return self.rows, self.notes

    def pair(self, key: str, ours: str) -> tuple[float | None, float | None, str | None, str | None, str | None]:
        out = self.b.results.get(key, Outcome())
        wrong = "; ".join(out.notes.get(ours, [])) or None
        return out.median(ours), out.median(self.orthanc), out.na.get(ours), out.na.get(self.orthanc), wrong

    def add(self, key: str, label: str, ours: str, goal: Goal, fmt: Callable[[float], str], **kw: object) -> None:
        o, x, ona, xna, wrong = self.pair(key, ours)
        if key in self.b.results and self.b.wanted(key):
            self.rows.append(ratio_row(f"{label} [{store(ours)}]", o, x, goal, fmt, ona, xna, wrong, **kw))  # type: ignore[arg-type]

    def for_store(self, ours: str) -> None:
        c, p = self.b.corpus, self.b.plan
        main = c.group("main")
        mean_mb = sum(i.size for i in main) / len(main) / MB
        self.add("stow", f"STOW-RS {len(main):,} inst. in requests of {p.stow_batch} (inst/s, MB/s)", ours,
                 Goal(2.0, True), lambda v: f"{v:.1f} inst/s, {v * mean_mb:.1f} MB/s")
        self.add("qido_studies", "QIDO studies PatientName wildcard + StudyDate range (p50)", ours, Goal(0.5, False), ms)
        self.add("qido_instances", f"QIDO /instances no filter, limit={len(main)} (p50)", ours, Goal(0.1, False), ms)
        self.add("metadata", f"study metadata, {len(c.group('big'))}-instance series (p50)", ours, Goal(0.2, False), ms)
        self._retrieve(ours)
        self.add("frame_native", "one native frame 512² (p50)", ours, Goal(1.0, False), ms)
        self.add("frame_j2k", f"middle frame of the {c.group('j2k')[0].frames}-frame JPEG 2000 object (p50)", ours,
                 Goal(1.0, False), ms)
        self.add("concurrent", f"{p.clients} concurrent clients fetching native frames (req/s)", ours,
                 Goal(1.0, True), lambda v: f"{v:.0f} req/s")
        self._scale(ours)

    def _retrieve(self, ours: str) -> None:
        """MB/s ratio to Orthanc, and share of the fastest static server (the ceiling)."""
        if not self.b.wanted("retrieve"):
            return
        out = self.b.results.get("retrieve", Outcome())
        statics = {t.name: out.median(t.name) for t in self.b.statics if out.median(t.name)}
        ceiling = max(statics.values(), default=None)
        o = out.median(ours)
        share = o / ceiling if o is not None and ceiling else None
        extra = ("≥ 50% of static", share is not None and share >= 0.5)
        n = len(next(iter(self.b.corpus.studies().values())))
        self.add("retrieve", f"study retrieve, {n} instances (MB/s)", ours, Goal(1.5, True), lambda v: f"{v:.1f} MB/s",
                 extra_goal=extra)
        if o is not None and statics:
            self.rows[-1].ours += " (" + ", ".join(f"{o / v:.0%} of {k}" for k, v in statics.items()) + ")"
        x = out.median(self.orthanc)
        for name, value in statics.items():
            label = f"static baseline: {name}, the same study as one multipart file (MB/s)"
            if not any(r.operation == label for r in self.rows):
                self.rows.append(Row(label, f"{value:.1f} MB/s", f"Orthanc: {x / value:.0%} of it" if x else "",
                                     "-", "ceiling", "-"))

    def _scale(self, ours: str) -> None:
        for key, label in (("qido_studies", "QIDO filtered study search"), ("qido_instances", "QIDO /instances limit")):
            if key + "@scale" not in self.b.results:
                continue
            small = self.b.results[key].median(ours)
            o, x, ona, xna, wrong = self.pair(key + "@scale", ours)
            row = ratio_row(f"{label} with {SCALE.total:,} more instances stored (p50) [{store(ours)}]", o, x,
                            Goal(2.0, False), ms, ona, xna, wrong)
            if o is not None and small:
                growth = o / small
                row.ratio += f"; x{growth:.2f} own @{len(self.b.corpus.group('main')):,}"
                row.target, row.met = "≤ 2x own figure at 1,200", "yes" if growth <= 2 and not wrong else "no"
            self.rows.append(row)
        load = self.b.results.get("scale_load")
        if load:
            o, x = load.median(ours), load.median(self.orthanc)
            self.notes.append(f"scale load ({SCALE.total:,} x 64² in requests of 100): {ours} "
                              f"{o or 0:.0f} inst/s, Orthanc {x or 0:.0f} inst/s")

    def memory(self) -> None:
        peak = self.b.sampler.peak
        for t in self.b.ours:
            self.rows.append(Row(f"peak RSS, whole run [{store(t.name)}]", f"{peak[t.name] / MiB:.0f} MiB",
                                 f"{peak[self.orthanc] / MiB:.0f} MiB", "-", "-", "-"))
            self._transfer(t.name, "stow_1gb", "RSS growth while STOW receives one ~1 GB request", 100, growth=True)
            self._transfer(t.name, "retrieve_2gb", "peak RSS while one client retrieves a ~2 GB study", 150, growth=False)

    def _transfer(self, ours: str, key: str, label: str, limit_mib: int, growth: bool) -> None:
        a, b = self.b.transfers.get(ours, {}).get(key), self.b.transfers.get(self.orthanc, {}).get(key)
        if a is None and b is None:
            return

        def cell(v: ops.Transfer | str | None) -> str:
            if not isinstance(v, ops.Transfer):
                return na_reason(v)
            mib = (v.growth if growth else v.rss_peak) / MiB
            return f"{mib:.0f} MiB ({v.bytes / v.seconds / MB:.0f} MB/s)"

        ok = isinstance(a, ops.Transfer) and (a.growth if growth else a.rss_peak) / MiB < limit_mib
        what = "growth" if growth else "peak"
        self.rows.append(Row(f"{label} [{store(ours)}]", cell(a), cell(b), "-", f"{what} < {limit_mib} MB",
                             ("yes" if ok else "no") if isinstance(a, ops.Transfer) else "n/a"))


def store(name: str) -> str:
    return name.split("[", 1)[1].rstrip("]") if "[" in name else name


def na_reason(v: object) -> str:
    return f"n/a ({v})" if v else "n/a"


# -- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small corpus, one round: a smoke test (< 3 min)")
    ap.add_argument("--scale", action="store_true", help="also 100,000 small instances and the 2 GB / 1 GB transfers")
    ap.add_argument("--big", action="store_true", help="the 2 GB retrieve and 1 GB STOW memory figures only")
    ap.add_argument("--stores", default="embedded", help="comma list of our stores: embedded,couch")
    ap.add_argument("--server-rev", default=None, help="benchmark this git revision (git archive) instead of the working tree")
    ap.add_argument("--only", default="", help="comma list of operations to measure (e.g. stow,retrieve); "
                    "default all: stow, qido_studies, qido_instances, metadata, retrieve, frame_native, "
                    "frame_j2k, concurrent")
    ap.add_argument("--stow-rounds", type=int, default=None, help="measured STOW rounds (default: 5, --quick 1)")
    ap.add_argument("--no-report", action="store_true", help="print only; do not append to bench/REPORT.md")
    args = ap.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    return args


def run_all(bench: Bench, args: argparse.Namespace) -> None:
    bench.load()
    say("measuring (A, B, A, B ...; first round discarded) ...")
    bench.reads()
    say("STOW rounds ...")
    bench.stow_rounds()
    if args.scale:
        bench.scale()
    if args.scale or args.big:
        say("big transfers (memory) ...")
        bench.big()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = PLANS["quick" if args.quick else "full"]
    if args.stow_rounds is not None:
        plan = replace(plan, stow_rounds=args.stow_rounds)
    t0 = time.monotonic()
    corpus = ensure_corpus(plan.spec, say)
    servers.ensure_orthanc(say)
    tmp = Path(tempfile.mkdtemp(prefix="dicomweb-bench-"))
    started: list[servers.Server] = []
    try:
        repo, commit = server_checkout(args.server_rev, tmp)
        started, notes = start_servers(args, repo, tmp, corpus)
        bench = Bench(plan, corpus, started)
        bench.only = {o.strip() for o in args.only.split(",") if o.strip()}
        say("servers: " + ", ".join(f"{s.name} {s.url}" for s in started))
        try:
            run_all(bench, args)
        finally:
            bench.sampler.stop()
        rows, more = Table(bench).build()
        orthanc = next(s for s in started if s.name == "Orthanc")
        facts = facts_for(args, plan, corpus, commit, orthanc.version, time.monotonic() - t0)
        text = report.section(title(args), facts, rows, notes + more)
        say("\n" + text)
        if not args.no_report:
            report.append_report(text)
            say(f"appended to {report.REPORT}")
    finally:
        for s in reversed(started):
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def title(args: argparse.Namespace) -> str:
    mode = "quick" if args.quick else "full"
    return mode + (" + scale" if args.scale else "") + (" + big" if args.big and not args.scale else "")


def facts_for(args: argparse.Namespace, plan: Plan, corpus: Corpus, commit: str, orthanc: str, seconds: float) -> list[str]:
    main = corpus.group("main")
    return [
        f"machine: {report.machine()}",
        f"dicomweb: {commit}, stores {', '.join(args.stores)}; {orthanc}; bench at "
        f"{report.describe_commit(REPO, ('bench',))}",
        f"corpus '{corpus.spec.name}': {len(main):,} main instances ({sum(i.size for i in main) / MB:,.0f} MB), "
        f"{len(corpus.group('big'))}-instance series, {corpus.group('j2k')[0].frames}-frame JPEG 2000",
        f"{plan.rounds} measured round(s) after 1 warm-up, alternating servers; latency = median of "
        f"{plan.samples} requests x rounds; STOW = median of {plan.stow_rounds} round(s) after the load; "
        f"run took {seconds / 60:.1f} min",
    ]


if __name__ == "__main__":
    sys.exit(main())

