"""The long mutation fuzz (``make fuzz``): real traces, damaged, 100,000 cases and more.

    .venv/bin/python fuzz/run.py --cases 100000 --seed 1 [--run-every 200] [--save DIR]

Each case is a window of a real trace with one to four mutations (`fuzz/mutations.py`);
cases are parsed in-process in batches (`parse_logs` over many inputs at once, halved on an
error until each finding names its input), and every ``--run-every``-th case also goes through
the whole ``p11lens run``.  The invariants are the issue's: no exception, every line accounted
for, every Parquet file readable, no PIN in any output, ``run`` exits 0 with three reports.

Findings are grouped by signature (kind + message with values masked); for each, the first
input is minimised (line delta debugging) and written to ``--save`` (default ``out/fuzz/``,
which git ignores) as ``<kind>-<hash>.log``, beside a ``summary.json`` with the counts.  Copy
the small ones to ``tests/data/fuzz-regressions/``: ``tests/test_fuzz_mutation.py`` checks each.
Exit 1 when anything was found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mutations as fz  # noqa: E402

log = logging.getLogger("fuzz")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=50, help="inputs per parse call (default 50)")
    p.add_argument("--run-every", type=int, default=200, help="take every N-th case through `run` too (0: never)")
    p.add_argument("--save", type=Path, default=Path(__file__).resolve().parent.parent / "out" / "fuzz")
    p.add_argument("--window", type=int, default=300, help="lines per input at most (default 300)")
    p.add_argument("--minimise", type=int, default=300, help="parse attempts per finding's minimisation")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="fuzz: %(message)s", stream=sys.stderr)
    logging.getLogger("p11lens").setLevel(logging.ERROR)
    logging.getLogger("pipeline").setLevel(logging.ERROR)

    seeds = fz.load_seeds()
    pins = fz.all_pins(seeds)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="p11lens-fuzz-"))
    counts: Counter = Counter()
    examples: dict[tuple[str, str], tuple[bytes, list[str], str]] = {}
    mutator_hits: Counter = Counter()
    done = not_spy = runs = 0
    started = time.monotonic()
    try:
        while done < args.cases:
            n = min(args.batch, args.cases - done)
            cases, names = zip(*(fz.mutate(rng.choice(seeds), rng, seeds, args.window) for _ in range(n)))
            result = fz.parse_batch(list(cases), work / "batch", pins)
            not_spy += result.not_spy
            findings = result.findings
            failed = {f.case for f in findings}
            if args.run_every:
                for i in range(n):
                    if (done + i) % args.run_every == 0 and i not in failed:
                        runs += 1
                        for f in fz.run_one(cases[i], work / "run", pins):
                            f.case = i
                            findings.append(f)
            for f in findings:
                key = (f.kind, f.message)
                counts[key] += 1
                mutator_hits.update(set(names[f.case]))
                if key not in examples:
                    examples[key] = (cases[f.case], names[f.case], f.detail)
                    log.info("new finding after %d cases: %s: %s (%s)", done + f.case, f.kind, f.message, "+".join(names[f.case]))
            done += n
            if done % (args.batch * 40) == 0 or done == args.cases:
                rate = done / (time.monotonic() - started)
                log.info("%d cases (%.0f/s), %d findings, %d distinct, %d runs, %d refused as not a spy log",
                         done, rate, sum(counts.values()), len(counts), runs, not_spy)
        saved = _save(args, examples, counts, pins, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "cases": done,
        "seed": args.seed,
        "runs": runs,
        "not_a_spy_log": not_spy,
        "seconds": round(time.monotonic() - started, 1),
        "findings": sum(counts.values()),
        "distinct": [
            {"kind": k, "message": m, "count": c, "mutations": "+".join(examples[(k, m)][1]), "input": saved.get((k, m))}
            for (k, m), c in counts.most_common()
        ],
        "mutators_in_findings": dict(mutator_hits.most_common()),
    }
    args.save.mkdir(parents=True, exist_ok=True)
    (args.save / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("cases", "runs", "not_a_spy_log", "seconds", "findings")}))
    for d in summary["distinct"]:
        print(f"{d['count']:6d} x {d['kind']}: {d['message']}  -> {d['input']}")
    return 1 if counts else 0


def _save(args, examples, counts, pins, work: Path) -> dict:
    """Minimise the first input of each distinct finding and write it."""
    args.save.mkdir(parents=True, exist_ok=True)
    saved = {}
    for (kind, message), (raw, names, detail) in examples.items():
        run = kind == "run"

        def still_fails(candidate: bytes, kind=kind, message=message, run=run) -> bool:
            return any((f.kind, f.message) == (kind, message) for f in fz.check_case(candidate, work / "min", pins, run=run))

        budget = args.minimise // (10 if run else 1)  # a run costs ~30 parses
        small = fz.minimise(raw, still_fails, budget=budget) if still_fails(raw) else raw
        digest = hashlib.sha256(f"{kind}:{message}".encode()).hexdigest()[:10]
        path = args.save / f"{kind}-{digest}.log"
        path.write_bytes(small)
        (args.save / f"{kind}-{digest}.txt").write_text(
            f"{kind}: {message}\nmutations: {'+'.join(names)}\ncount: {counts[(kind, message)]}\n"
            f"size: {len(raw)} -> {len(small)} bytes\n\n{detail}\n"
        )
        saved[(kind, message)] = str(path)
        log.info("saved %s (%d -> %d bytes)", path.name, len(raw), len(small))
    return saved


if __name__ == "__main__":
    sys.exit(main())
