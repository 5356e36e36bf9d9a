"""The results table (issue 9's targets), machine facts, and the REPORT.md section."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

REPORT = Path(__file__).resolve().parent / "REPORT.md"
MB = 1e6
MiB = 1 << 20


@dataclass
class Row:
    operation: str
    ours: str
    orthanc: str
    ratio: str
    target: str
    met: str


@dataclass(frozen=True)
class Goal:
    """A target on the ratio ours/Orthanc: ``ratio >= value`` or ``ratio <= value``."""

    value: float
    higher_is_better: bool

    def text(self) -> str:
        return f"{'≥' if self.higher_is_better else '≤'} {self.value:g}x"

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.higher_is_better else ratio <= self.value


def ratio_row(operation: str, ours: float | None, orthanc: float | None, goal: Goal, fmt: Callable[[float], str],
              ours_na: str | None = None, orthanc_na: str | None = None, wrong: str | None = None,
              extra_goal: tuple[str, bool] | None = None) -> Row:
    """One table row; ``extra_goal`` is (text, met) for a second condition (e.g. % of static)."""
    ours_s = na_text(ours_na) if ours is None else fmt(ours)
    orthanc_s = na_text(orthanc_na) if orthanc is None else fmt(orthanc)
    target = goal.text() + (f", {extra_goal[0]}" if extra_goal else "")
    if ours is None or orthanc is None or orthanc == 0:
        return Row(operation, ours_s, orthanc_s, "-", target, "n/a")
    ratio = ours / orthanc
    ok = goal.met(ratio) and (extra_goal is None or extra_goal[1])
    met = "no (wrong result)" if wrong else ("yes" if ok else "no")
    return Row(operation, ours_s, orthanc_s, f"{ratio:.2f}", target, met)


def na_text(reason: str | None) -> str:
    return f"n/a ({reason})" if reason else "n/a"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def markdown_table(rows: list[Row]) -> str:
    head = ["operation", "ours", "Orthanc", "ratio ours/Orthanc", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.operation, r.ours, r.orthanc, r.ratio, r.target, r.met]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def describe_commit(repo: Path, paths: tuple[str, ...] = ()) -> str:
    commit = git(repo, "rev-parse", "--short", "HEAD")
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    dirty = git(repo, "status", "--porcelain", "--", *paths)
    return f"{commit} ({branch}{', uncommitted changes' if dirty and dirty != '?' else ''})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine() -> str:
    ram = psutil.virtual_memory().total / (1 << 30)
    return (f"{os.cpu_count()} cores (nproc), {ram:.1f} GiB RAM, {cpu_model()}, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def section(title: str, facts: list[str], rows: list[Row], notes: list[str]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    parts = [f"## {stamp} — {title}", "", *[f"- {f}" for f in facts], "", markdown_table(rows), ""]
    if notes:
        parts += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(parts) + "\n"


def append_report(text: str) -> None:
    if not REPORT.exists():
        REPORT.write_text("# Benchmark reports\n\nWritten by `python bench/run.py` (see `bench/README.md`); "
                          "one dated section per run, newest last.\n\n")
    with open(REPORT, "a", encoding="utf-8") as fp:
        fp.write(text)
