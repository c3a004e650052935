"""Run a workload end to end: lab, child processes, merged ground truth next to the trace.

The parent never loads a PKCS#11 library itself (it only maps them to check the paths); each
workload process is a fresh interpreter running `pipeline.driver.run`, so a test or a CLI call can
drive any number of workloads, each with its own spy environment.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline
from pipeline.driver.lab import Lab, create_lab, find_module, find_spy
from pipeline.driver.plans import make_plans
from pipeline.driver.truth import FORMAT, line_ranges, read_json, write_json
from pipeline.errors import InputError, OutputError, P11lensError

log = logging.getLogger(__name__)

BANNER = b"*************** OpenSC PKCS#11 spy *****************"


@dataclass
class DriveOptions:
    workload: str
    trace: Path
    ops: int = 50
    seed: int = 0
    threads: int = 4
    processes: int = 3
    module: str | None = None
    spy: str | None = None
    lab: Path | None = None
    append: bool = False
    token_init: str = "auto"


def truth_path(trace: Path) -> Path:
    return trace.with_name(trace.name + ".truth.json")


def drive(opts: DriveOptions) -> dict[str, Any]:
    """Drive one workload; returns the truth it also writes to ``<trace>.truth.json``."""
    _check_sizes(opts)
    _check_client()
    module, spy = find_module(opts.module), find_spy(opts.spy)
    offset0 = _prepare_trace(opts.trace, opts.append)
    root, temporary = _lab_dir(opts.lab)
    try:
        lab = create_lab(root / "store", module, spy, opts.token_init)
        plans = make_plans(opts.workload, opts.seed, opts.ops, opts.threads, opts.processes)
        pins = _pins(lab)
        started = time.time_ns()
        parts = _run_children(lab, opts, plans, root, pins)
        truth = _merge(lab, opts, plans, parts, offset0, started, pins)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    write_json(truth_path(opts.trace), truth)
    return truth


def _check_client() -> None:
    """The expected call sequences are python-pkcs11 0.10's; say so when another one runs them."""
    found = _version("python-pkcs11")
    if found and not found.startswith("0.10."):
        log.warning("python-pkcs11 %s: expected_calls are written for 0.10.x and may not match", found)


def _check_sizes(opts: DriveOptions) -> None:
    for name in ("ops", "threads", "processes"):
        if getattr(opts, name) < 1:
            raise InputError(f"--{name} must be at least 1")


def _prepare_trace(trace: Path, append: bool) -> int:
    """The spy only appends; without --append an existing trace is emptied first."""
    if not trace.parent.is_dir():
        raise OutputError(f"{str(trace.parent)!r}: no such directory for the trace")
    if trace.is_dir():
        raise OutputError(f"{str(trace)!r} is a directory")
    try:
        if append:
            trace.touch()
            return trace.stat().st_size
        trace.write_bytes(b"")
    except OSError as exc:
        raise OutputError(f"cannot write {str(trace)!r}: {exc.strerror}") from None
    return 0


def _lab_dir(lab: Path | None) -> tuple[Path, bool]:
    """A given --lab must be new or empty (it is never wiped); otherwise a temporary one."""
    if lab is None:
        return Path(tempfile.mkdtemp(prefix="p11lens-lab-")), True
    if lab.exists() and (not lab.is_dir() or any(lab.iterdir())):
        raise InputError(f"--lab {str(lab)!r} must be a new or empty directory")
    lab.mkdir(parents=True, exist_ok=True)
    return lab, False


def _pins(lab: Lab) -> dict[str, str]:
    return {"user": lab.user_pin, "so": lab.so_pin, "wrong": f"wrong-{secrets.token_hex(8)}",
            "new": f"new-{secrets.token_hex(8)}"}


def _run_children(lab: Lab, opts: DriveOptions, plans: list[dict[str, Any]], root: Path,
                  pins: dict[str, str]) -> list[dict[str, Any]]:
    """Start one interpreter per process plan (all at once), wait, and read their truths."""
    env = {**os.environ, **lab.spy_env(opts.trace.resolve())}
    src = str(Path(pipeline.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    lock = root / "trace.lock" if len(plans) > 1 else None
    procs = []
    for i, plan in enumerate(plans):
        config = {"spy": str(lab.spy), "trace": str(opts.trace.resolve()), "token_label": lab.token_label, "pins": pins,
                  "process": i, "lock": str(lock) if lock else None, "plan": plan, "out": str(root / f"part-{i}.json"),
                  "log_level": logging.getLogger().getEffectiveLevel()}
        cfg_path = root / f"child-{i}.json"
        write_json(cfg_path, config)
        cmd = [sys.executable, "-m", "pipeline.driver.run", str(cfg_path)]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    parts = [_collect(i, proc, root) for i, proc in enumerate(procs)]
    for i in range(len(plans)):
        (root / f"child-{i}.json").unlink(missing_ok=True)  # it holds the PINs
    return parts


def _collect(i: int, proc: subprocess.Popen, root: Path) -> dict[str, Any]:
    """Wait for a child; pass on its own messages only.

    Anything else on its stderr came from the spy or the module (a spy that cannot open its
    output writes the whole trace, PINs included, to stderr), so it is counted, never echoed.
    """
    _, err = proc.communicate()
    ours = [ln.removeprefix("p11lens: ") for ln in err.splitlines() if ln.startswith("p11lens: ")]
    for line in ours:
        log.warning("process %d: %s", i, line)
    other = sum(1 for ln in err.splitlines() if ln.strip() and not ln.startswith("p11lens: "))
    if other:
        log.warning("process %d: %d other line(s) on stderr from the spy or the module, not shown", i, other)
    part_file = root / f"part-{i}.json"
    if proc.returncode != 0 or not part_file.exists():
        last = ours[-1] if ours else f"exit status {proc.returncode}"
        raise P11lensError(f"workload process {i} failed: {last}")
    part = read_json(part_file)
    part["exit_code"] = proc.returncode
    return part


def _merge(lab: Lab, opts: DriveOptions, plans: list[dict[str, Any]], parts: list[dict[str, Any]],
           offset0: int, started: int, pins: dict[str, str]) -> dict[str, Any]:
    """One truth: every op in the order it ran, indices made global, lines and banners located."""
    ops = sorted((op for part in parts for op in part["ops"]), key=lambda o: (o["start_ns"], o["process"]))
    remap = {(op["process"], op["index"]): n for n, op in enumerate(ops)}
    for n, op in enumerate(ops):
        op["process_op"], op["index"] = op["index"], n
    sessions = sorted((_remap(s, remap, ("opened_op", "closed_op")) for part in parts for s in part["sessions"]),
                      key=lambda s: s["opened_op"])
    auth = sorted((_remap(a, remap, ("op",)) for part in parts for a in part["auth"]), key=lambda a: a["op"])
    data = opts.trace.read_bytes()
    if len(data) == offset0:
        raise P11lensError(f"the spy wrote nothing to {str(opts.trace)!r}: is {str(lab.spy)!r} OpenSC's pkcs11-spy?")
    for op, lines in zip(ops, line_ranges(data, [op["trace_bytes"] for op in ops])):
        op["trace_lines"] = lines
    processes = _processes(parts, ops, plans, data[:offset0].count(BANNER))
    return {
        "format": FORMAT,
        "tool": {"p11lens": pipeline.__version__, "python_pkcs11": _version("python-pkcs11"), "python": sys.version.split()[0]},
        "workload": opts.workload, "seed": opts.seed, "ops_requested": opts.ops,
        "threads": opts.threads if opts.workload == "threads" else 1,
        "processes": processes,
        "trace": str(opts.trace), "append": opts.append, "trace_offset": offset0,
        "spy": str(lab.spy), "module": str(lab.module), "library": parts[0].get("library", {}), "softhsm2_conf_used": lab.softhsm_conf is not None,
        "token_label": lab.token_label,
        "pins": pins,
        "started": started,
        "summary": _summary(ops, len(data) - offset0),
        "expected_counts": _counts(ops)[0],
        "uncertain_functions": _counts(ops)[1],
        "sessions": sessions,
        "auth": auth,
        "ops": ops,
    }


def _remap(item: dict[str, Any], remap: dict[tuple[int, int], int], keys: tuple[str, ...]) -> dict[str, Any]:
    for key in keys:
        if item.get(key) is not None:
            item[key] = remap[(item["process"], item[key])]
    return item


def _processes(parts: list[dict[str, Any]], ops: list[dict[str, Any]], plans: list[dict[str, Any]], banners_before: int) -> list[dict[str, Any]]:
    """Per process: its pid and which banner of the file is its own (banners come in load order)."""
    loads = [op for op in ops if op["op"] == "load"]
    banner_of = {op["process"]: banners_before + n for n, op in enumerate(loads)}
    load_of = {op["process"]: op["index"] for op in loads}
    out = []
    for part in parts:
        i = part["process"]
        out.append({"index": i, "pid": part["pid"], "banner_index": banner_of.get(i), "load_op": load_of.get(i),
                    "ops": sum(1 for op in ops if op["process"] == i), "threads": max(1, len(plans[i]["workers"])),
                    "exit_code": part["exit_code"]})
    return out


def _summary(ops: list[dict[str, Any]], trace_bytes: int) -> dict[str, Any]:
    busy_ns = sum(op["end_ns"] - op["start_ns"] for op in ops)
    span_ns = (ops[-1]["end_ns"] - ops[0]["start_ns"]) if ops else 0
    return {
        "ops": len(ops),
        "as_expected": sum(1 for op in ops if op["as_expected"]),
        "unexpected": [op["index"] for op in ops if not op["as_expected"]],
        "span_s": round(span_ns / 1e9, 6),
        "busy_s": round(busy_ns / 1e9, 6),
        "ops_per_s": round(len(ops) / (span_ns / 1e9), 1) if span_ns else None,
        "trace_bytes": trace_bytes,
        "bytes_per_op": round(trace_bytes / len(ops), 1) if ops else None,
        "calls_expected_min": sum(len(op["expected_calls"]) for op in ops),
    }


def _counts(ops: list[dict[str, Any]]) -> tuple[dict[str, int], list[str]]:
    """Per-function call counts where certain; functions some op may call unannounced are left out."""
    uncertain = sorted({f for op in ops for f in op["may_also_call"]})
    counts = Counter(c["func"] for op in ops for c in op["expected_calls"] if c["func"] not in uncertain)
    return dict(sorted(counts.items())), uncertain


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
