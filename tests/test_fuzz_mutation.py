"""Mutation fuzz over real traces: a few thousand damaged logs, every invariant, under a minute.

The mutators and invariants are `fuzz/mutations.py` (shared with ``make fuzz``, which runs the
same for 100,000 cases and more).  Each mutator gets its own test (so a failure names the kind
of damage), then a mixed run stacks one to four mutations per case.  The inputs found crashing
by the long fuzz are kept, minimised, in ``tests/data/fuzz-regressions/`` and checked here one
by one, through the parse and through ``run``.

``P11LENS_FUZZ_SEED`` changes the seed (default 15); ``P11LENS_FUZZ_CASES`` scales the count.
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

import mutations as fz  # noqa: E402

SEED = int(os.environ.get("P11LENS_FUZZ_SEED", "15"))
SCALE = float(os.environ.get("P11LENS_FUZZ_CASES", "1"))
SEEDS = fz.load_seeds()
PINS = fz.all_pins(SEEDS)
REGRESSIONS = sorted((ROOT / "tests" / "data" / "fuzz-regressions").glob("*.log"))
PER_MUTATOR = int(100 * SCALE)
MIXED = int(1000 * SCALE)
BATCH = 50
WINDOW = 120  # lines per input at most (the long fuzz takes up to 600): ~2,900 cases in about a minute
# The whole run (analyze, reports: ~1 s each) for a few cases of the mutators whose damage the
# later stages see: impossible stamps, counters and handles, and cut logs.
RUNS = {"bad_timestamp": 3, "huge_digits": 1, "huge_header": 1, "long_hex": 1, "truncate": 1, "cut_head": 1}


def report(findings: list[fz.Finding], cases: list[bytes], names: list[list[str]]) -> str:
    """Distinct findings, each with how often it came and one case's mutations."""
    seen: Counter = Counter()
    first: dict = {}
    for f in findings:
        key = (f.kind, f.message)
        seen[key] += 1
        first.setdefault(key, f)
    lines = [f"{sum(seen.values())} finding(s) in {len(cases)} cases, {len(seen)} distinct:"]
    for (kind, message), n in seen.most_common():
        f = first[(kind, message)]
        lines.append(f"  {n:4d} x {kind}: {message}  (e.g. case {f.case}: {'+'.join(names[f.case])}, {len(cases[f.case])} bytes)")
    return "\n".join(lines)


def fuzz(tmp: Path, rng: random.Random, count: int, mutators=None, runs: int = 1) -> None:
    cases, names = [], []
    for _ in range(count):
        seed = rng.choice(SEEDS)
        if mutators:  # one named mutation on a window of a real log
            raw = fz.window(seed.raw, rng, WINDOW, whole=0)
            other = fz.window(rng.choice(SEEDS).raw, rng, WINDOW, whole=0)
            for fn in mutators:
                raw = fn(raw, rng, other, seed.pins)
            cases.append(raw)
            names.append([fn.__name__ for fn in mutators])
        else:
            raw, mutated = fz.mutate(seed, rng, SEEDS, WINDOW, whole=0)
            cases.append(raw)
            names.append(mutated)
    findings = []
    for start in range(0, count, BATCH):
        result = fz.parse_batch(cases[start : start + BATCH], tmp / "batch", PINS)
        for f in result.findings:
            f.case += start
        findings += result.findings
    failed = {f.case for f in findings}
    for i in [i for i in range(count) if i not in failed][:runs]:  # the whole run on a few cases
        for f in fz.run_one(cases[i], tmp / "run", PINS):
            f.case = i
            findings.append(f)
    assert not findings, report(findings, cases, names)


@pytest.mark.parametrize("mutator", fz.MUTATORS, ids=lambda fn: fn.__name__)
def test_mutator(mutator, tmp_path):
    runs = RUNS.get(mutator.__name__, 0)
    fuzz(tmp_path, random.Random(f"{SEED}:{mutator.__name__}"), PER_MUTATOR, [mutator], runs=runs)


def test_mixed_mutations(tmp_path):
    fuzz(tmp_path, random.Random(SEED), MIXED, runs=3)


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_regression(path, tmp_path):
    """An input the long fuzz found failing: parse and run keep every invariant on it."""
    findings = fz.check_case(path.read_bytes(), tmp_path, PINS, run=True)
    assert not findings, "\n".join(f"{f.kind}: {f.message}\n{f.detail[-1500:]}" for f in findings)


def test_regressions_are_kept_small():
    assert REGRESSIONS, "tests/data/fuzz-regressions/ holds the long fuzz's findings"
    for path in REGRESSIONS:
        assert path.stat().st_size < 16_000, path.name


def test_mutators_change_their_input():
    """Each mutator does damage (on a log that has what it looks for)."""
    rng = random.Random(SEED)
    seed = next(s for s in SEEDS if s.name.startswith("12-mechinfo_0.24"))  # stamps, P:/T:, 0x handles
    for fn in fz.MUTATORS:
        assert any(fn(seed.raw, rng, SEEDS[0].raw, seed.pins) != seed.raw for _ in range(5)), fn.__name__
