"""The driver, end to end and for real: python-pkcs11 → OpenSC pkcs11-spy → SoftHSM2.

Each workload is driven (small) with the ``p11lens drive`` console script, the trace is parsed with
``p11lens parse``, and the parse is held against the driver's ground truth (``LOG.truth.json``):
every operation's calls in its own lines, in order, with the expected return values; sessions
opened, closed and left open; logins; created handles; timestamps inside the driver's clock
window; no PIN in any output.  Nothing is mocked: these tests need ``softhsm2`` and ``opensc``
(``make system-deps``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.cli import main as cli_main
from pipeline.driver import lab as lab_mod
from pipeline.driver.plans import make_plans

BIN = Path(sys.executable).parent
P11LENS = str(BIN / "p11lens")

WORKLOADS = {
    "smoke": [],
    "mixed": ["--ops", "60", "--seed", "7"],
    "errors": ["--seed", "3"],
    "threads": ["--ops", "40", "--threads", "3", "--seed", "5"],
    "processes": ["--ops", "30", "--processes", "3", "--seed", "9"],
}


# -- helpers -----------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([P11LENS, *args], capture_output=True, text=True, timeout=120)


def drive_and_parse(tmp: Path, name: str, *drive_args: str) -> dict[str, Any]:
    """Drive through the CLI, parse through the CLI; everything a test may want to look at."""
    log = tmp / f"{name}.log"
    drove = run_cli("drive", "--workload", name.split("-")[0], *drive_args, "-o", str(log))
    assert drove.returncode == 0, drove.stderr
    out = tmp / f"{name}-parsed"
    parsed = run_cli("parse", str(log), "-o", str(out))
    assert parsed.returncode == 0, parsed.stderr
    truth = json.loads((tmp / f"{name}.log.truth.json").read_text())
    calls = pl.read_parquet(out / "calls.parquet").sort("line")
    return {"log": log, "truth": truth, "calls": calls, "out": out, "outputs": [drove, parsed]}


def rows_of(calls: pl.DataFrame, op: dict[str, Any]) -> list[dict[str, Any]]:
    first, last = op["trace_lines"]
    return calls.filter(pl.col("line").is_between(first, last)).to_dicts()


def match_calls(op: dict[str, Any], rows: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """Pair the op's expected calls with parsed rows, in order; only ``may_also_call`` may come between."""
    expected, may = op["expected_calls"], set(op["may_also_call"])
    pairs, i = [], 0
    for row in rows:
        if i < len(expected) and row["func"] == expected[i]["func"] and (
                expected[i]["rv"] is None or row["rv_name"] == expected[i]["rv"]):
            pairs.append((expected[i], row))
            i += 1
        else:
            assert row["func"] in may, f"op {op['index']} {op['op']} {op['args'].get('id')}: unexpected {row['func']} " \
                                       f"{row['rv_name']} at line {row['line']}; expected {expected}"
    assert i == len(expected), f"op {op['index']} {op['op']}: found {[(r['func'], r['rv_name']) for r in rows]}, " \
                               f"expected {expected}"
    if op["calls_exact"]:
        assert len(rows) == len(expected), f"op {op['index']} {op['op']}: extra calls {rows}"
    return pairs


def pin_forms(pin: str) -> list[bytes]:
    """A PIN as text, as hex (both cases), and the 16-byte pieces the spy's hexdump shows."""
    raw = pin.encode()
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for i in range(0, len(raw), 16):
        piece = raw[i:i + 16]
        if len(piece) >= 6:
            forms += [piece, " ".join(f"{b:02X}" for b in piece).encode()]
    return forms


def sessions_from_calls(calls: pl.DataFrame, truth: dict[str, Any]) -> dict[int, dict[str, set[int]]]:
    """Per truth process (found through the op line ranges): handles opened and closed (rv OK)."""
    proc_of_line = []
    for op in truth["ops"]:
        proc_of_line.append((op["trace_lines"][0], op["trace_lines"][1], op["process"]))
    out: dict[int, dict[str, set[int]]] = {}
    for row in calls.filter(pl.col("func").is_in(["C_OpenSession", "C_CloseSession"]) & (pl.col("rv") == 0)).to_dicts():
        proc = next(p for a, b, p in proc_of_line if a <= row["line"] <= b)
        kind = "opened" if row["func"] == "C_OpenSession" else "closed"
        out.setdefault(proc, {"opened": set(), "closed": set()})[kind].add(row["session"])
    return out


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver_runs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Every workload driven once, small, and parsed (shared by the tests below: ~10 s)."""
    tmp = tmp_path_factory.mktemp("driver")
    with ThreadPoolExecutor(max_workers=3) as pool:  # independent labs and traces: run side by side
        futures = {name: pool.submit(drive_and_parse, tmp, name, *args) for name, args in WORKLOADS.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.fixture(params=list(WORKLOADS))
def driver_run(request, driver_runs) -> dict[str, Any]:
    return driver_runs[request.param]


# -- the parse matches the truth ---------------------------------------------------------------
def test_every_operation_ran_as_planned(driver_run):
    truth = driver_run["truth"]
    assert truth["format"] == "p11lens-truth/1"
    assert truth["summary"]["unexpected"] == []
    assert all(op["error"] is None for op in truth["ops"])


def test_every_operations_calls_are_found_in_order_with_their_return_values(driver_run):
    truth, calls = driver_run["truth"], driver_run["calls"]
    for op in truth["ops"]:
        pairs = match_calls(op, rows_of(calls, op))
        if pairs:  # the call that ended the op returned what the driver got
            expected, row = pairs[-1]
            if op["expected_rv"]["name"] != "CKR_OK":
                assert row["rv"] == op["got_rv"]["value"] == op["expected_rv"]["value"]
        assert all(r["complete"] and not r["uncertain"] for r in rows_of(calls, op))


def test_every_parsed_record_belongs_to_an_operation(driver_run):
    truth, calls = driver_run["truth"], driver_run["calls"]
    covered = sum(len(rows_of(calls, op)) for op in truth["ops"])
    assert covered == calls.height


def test_certain_per_function_counts_match(driver_run):
    truth, calls = driver_run["truth"], driver_run["calls"]
    got = Counter(calls["func"].to_list())
    for func, n in truth["expected_counts"].items():
        assert got[func] == n, func
    assert truth["summary"]["calls_expected_min"] <= calls.height


def test_sessions_opened_closed_and_left_open_match(driver_run):
    truth, calls = driver_run["truth"], driver_run["calls"]
    parsed = sessions_from_calls(calls, truth)
    for proc in {s["process"] for s in truth["sessions"]}:
        mine = [s for s in truth["sessions"] if s["process"] == proc]
        assert parsed[proc]["opened"] == {s["handle"] for s in mine}
        assert parsed[proc]["closed"] == {s["handle"] for s in mine if not s["left_open"]}
        left = parsed[proc]["opened"] - parsed[proc]["closed"]
        assert left == {s["handle"] for s in mine if s["left_open"]}


def test_session_and_created_handles_match(driver_run):
    truth, calls = driver_run["truth"], driver_run["calls"]
    for op in truth["ops"]:
        rows = rows_of(calls, op)
        if op["session_handle"] is not None:
            assert {r["session"] for r in rows if r["session"] is not None} == {op["session_handle"]}, op["index"]
        if op["op"] == "gen_key" and op["created"]:
            gen = [r for r in rows if r["func"].startswith("C_Generate")]
            assert sorted(gen[0]["created"]) == sorted(op["created"])


def _source_step(truth: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    """The args that say what went in: a verify/decrypt's are those of the sign/encrypt it checks."""
    if "of" not in op["args"]:
        return op["args"]
    return next(o["args"] for o in truth["ops"] if o["args"].get("id") == op["args"]["of"])


def test_mechanisms_and_input_lengths_match(driver_run):
    truth, calls = driver_run["truth"], driver_run["calls"]
    checked = 0
    for op in truth["ops"]:
        args, rows = _source_step(truth, op), rows_of(calls, op)
        inits = [r for r in rows if r["func"] in ("C_SignInit", "C_VerifyInit", "C_EncryptInit", "C_DecryptInit", "C_DigestInit")]
        if "mech" in args and inits:
            assert inits[0]["mechanism"] == "CKM_" + args["mech"], (op["index"], inits[0]["line"])
        if op["op"] in ("sign", "digest", "encrypt") and op["as_expected"] and op["expected_rv"]["name"] == "CKR_OK":
            if args["parts"] == 1:  # the size query and the real call both carry the whole input
                whole = [r["in_len"] for r in rows if r["func"] in ("C_Sign", "C_Digest", "C_Encrypt")]
                assert whole == [args["data_len"]] * 2, (op["index"], whole)
            else:  # one Update per part (encrypt: two per part, the size query repeats it)
                ups = [r["in_len"] for r in rows if r["func"].endswith("Update")]
                assert sum(ups[::2] if op["op"] == "encrypt" else ups) == args["data_len"], (op["index"], ups)
            checked += 1
    assert checked or driver_run["truth"]["workload"] == "errors"


def test_logins_and_logouts_match(driver_run):
    truth, calls = driver_run["truth"], driver_run["calls"]
    parsed = calls.filter(pl.col("func").is_in(["C_Login", "C_Logout"])).to_dicts()
    assert [(r["func"], r["session"], r["rv"]) for r in parsed] == \
           [(a["func"], a["session_handle"], a["rv"]["value"]) for a in truth["auth"]]
    assert [r["user_type"] for r in parsed if r["func"] == "C_Login"] == \
           [a["user_type"] for a in truth["auth"] if a["func"] == "C_Login"]


def test_spy_timestamps_fall_inside_the_drivers_clock_window(driver_run):
    """The spy stamps call entry to the ms; it must lie between the op's start and end (local time)."""
    truth, calls = driver_run["truth"], driver_run["calls"]
    for op in truth["ops"]:
        start = datetime.fromisoformat(op["wall_start"]).replace(microsecond=0) + \
            timedelta(milliseconds=datetime.fromisoformat(op["wall_start"]).microsecond // 1000)
        end = datetime.fromisoformat(op["wall_end"])
        for row in rows_of(calls, op):
            assert start <= row["ts"] <= end, (op["index"], row["line"], row["ts"], start, end)
        assert op["start_ns"] <= op["end_ns"]


def test_process_column_is_the_banner_of_the_writing_process(driver_run):
    """Without pids (the Debian 0.23 spy) the parser follows each process's counter.

    Processes that run the same code reach the same counter values; when two of them stand
    at the same value the text cannot say which one wrote the next call, so a pid-less
    multi-process trace is checked only up to the first such tie.
    """
    truth, calls = driver_run["truth"], driver_run["calls"]
    banner = {p["index"]: p["banner_index"] for p in truth["processes"]}
    if len(truth["processes"]) > 1 and calls["pid"].is_null().all():
        first_tie = _first_counter_tie(calls)
        truth = {**truth, "ops": [op for op in truth["ops"] if op["trace_lines"] and op["trace_lines"][1] < first_tie]}
        assert truth["ops"], "no operation before the first tie: nothing checked"
    for op in truth["ops"]:
        assert {r["process"] for r in rows_of(calls, op)} <= {banner[op["process"]]}, op["index"]


def _first_counter_tie(calls) -> int:
    """Line of the first call whose counter value two processes were both waiting for."""
    waiting: dict[int, int] = {}  # process -> next counter value, replayed from the rows
    for line, seq, process in calls.sort("line").select("line", "seq", "process").iter_rows():
        if seq == 0:
            waiting[process] = 0
        if sum(1 for expected in waiting.values() if expected == seq) > 1:
            return line
        waiting[process] = seq + 1
    return 1 << 62


def test_no_pin_in_any_output(driver_run):
    truth = driver_run["truth"]
    trace = driver_run["log"].read_bytes()
    outputs = b"".join(p.read_bytes() for p in driver_run["out"].iterdir())
    outputs += "".join(r.stdout + r.stderr for r in driver_run["outputs"]).encode()
    cells = "\n".join(str(v) for v in driver_run["calls"].drop("source").to_dicts()).encode()
    used = [truth["pins"][a["pin"]] for a in truth["auth"] if a["pin"]]
    assert used, "the workload logged in"
    for pin in used:
        assert any(form in trace for form in pin_forms(pin)), "the spy trace shows the PIN (sanity)"
        for form in pin_forms(pin):
            assert form not in outputs and form not in cells


def test_truth_file_records_the_setup(driver_run):
    truth = driver_run["truth"]
    assert Path(truth["spy"]).name == "pkcs11-spy.so" and "softhsm" in truth["module"]
    assert all(p["pid"] > 0 and p["exit_code"] == 0 for p in truth["processes"])
    assert truth["summary"]["ops"] == len(truth["ops"]) and truth["summary"]["bytes_per_op"] > 0
    assert [op["index"] for op in truth["ops"]] == list(range(len(truth["ops"])))
    starts = [op["start_ns"] for op in truth["ops"]]
    assert starts == sorted(starts)


# -- workload-specific facts -------------------------------------------------------------------
def test_errors_workload_provokes_the_known_return_values(driver_runs):
    run = driver_runs["errors"]
    rvs = set(run["calls"].filter(pl.col("rv") != 0)["rv_name"].to_list())
    assert {"CKR_PIN_INCORRECT", "CKR_USER_ALREADY_LOGGED_IN", "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
            "CKR_SESSION_READ_ONLY", "CKR_MECHANISM_INVALID", "CKR_DATA_LEN_RANGE", "CKR_ENCRYPTED_DATA_LEN_RANGE",
            "CKR_SIGNATURE_INVALID", "CKR_SIGNATURE_LEN_RANGE", "CKR_KEY_TYPE_INCONSISTENT",
            "CKR_OBJECT_HANDLE_INVALID", "CKR_SESSION_HANDLE_INVALID"} <= rvs
    wrong = run["calls"].filter((pl.col("func") == "C_Login") & (pl.col("rv") == 0xA0))
    assert wrong.height == 3
    assert run["calls"].filter((pl.col("func") == "C_SetPIN") & (pl.col("rv") == 0xA0)).height >= 1
    assert any(s["left_open"] for s in run["truth"]["sessions"])
    logins = [a for a in run["truth"]["auth"] if a["func"] == "C_Login" and a["rv"]["value"] == 0]
    assert logins and not [a for a in run["truth"]["auth"] if a["func"] == "C_Logout"]


def test_threads_workload_runs_several_threads_one_record_at_a_time(driver_runs):
    truth = driver_runs["threads"]["truth"]
    assert len({op["thread"] for op in truth["ops"]}) == 4  # main + 3 workers
    assert len({op["tid"] for op in truth["ops"]}) == 4
    order = [op["thread"] for op in truth["ops"] if op["thread"]]
    assert sum(a != b for a, b in zip(order, order[1:])) >= 2, "the threads' operations interleave"


def test_processes_workload_appends_several_banners(driver_runs):
    run = driver_runs["processes"]
    truth = run["truth"]
    assert run["log"].read_bytes().count(b"*************** OpenSC PKCS#11 spy *****************") == 3
    assert sorted(p["banner_index"] for p in truth["processes"]) == [0, 1, 2]
    assert len({p["pid"] for p in truth["processes"]}) == 3
    assert sorted(run["calls"]["process"].unique().to_list()) == [0, 1, 2]


# -- reproducibility ---------------------------------------------------------------------------
def _plan_view(truth: dict[str, Any]) -> list[tuple]:
    """The seeded part of a run: each thread's steps in order (handles and find counts vary)."""
    keyed = sorted(truth["ops"], key=lambda op: (op["process"], op["thread"], op["step"]))
    return [(op["process"], op["thread"], op["op"], json.dumps({k: v for k, v in op["args"].items() if k != "found"},
                                                              sort_keys=True)) for op in keyed]


def test_same_seed_same_operations(driver_runs, tmp_path):
    for name in ("mixed", "threads"):
        log = tmp_path / f"{name}.log"
        assert run_cli("drive", "--workload", name, *WORKLOADS[name], "-o", str(log)).returncode == 0
        again = json.loads(log.with_name(log.name + ".truth.json").read_text())
        assert _plan_view(again) == _plan_view(driver_runs[name]["truth"])
        assert _plan_view(again) != _plan_view(driver_runs["smoke"]["truth"])


def test_plans_depend_on_the_seed_only():
    for workload in ("mixed", "errors", "threads", "processes"):
        a = make_plans(workload, 11, 40, 3, 2)
        assert a == make_plans(workload, 11, 40, 3, 2)
        assert a != make_plans(workload, 12, 40, 3, 2) or workload == "errors"
    ops = [s["op"] for s in make_plans("mixed", 1, 300, 1, 1)[0]["setup"]]
    for op in ("gen_key", "sign", "verify", "encrypt", "decrypt", "digest", "find", "get_attr", "set_attr", "destroy"):
        assert op in ops


# -- options and failures ----------------------------------------------------------------------
def test_trace_is_emptied_unless_append(tmp_path):
    log = tmp_path / "t.log"
    log.write_bytes(b"old content\n")
    assert run_cli("drive", "--workload", "smoke", "-o", str(log)).returncode == 0
    assert not log.read_bytes().startswith(b"old content")
    size = log.stat().st_size
    assert run_cli("drive", "--workload", "smoke", "--append", "-o", str(log)).returncode == 0
    truth = json.loads((tmp_path / "t.log.truth.json").read_text())
    assert truth["trace_offset"] == size and truth["processes"][0]["banner_index"] == 1
    assert truth["ops"][0]["trace_bytes"][0] == size


def test_generic_token_init_with_pkcs11_tool_and_kept_lab(tmp_path):
    lab = tmp_path / "lab"
    run = drive_and_parse(tmp_path, "smoke", "--token-init", "pkcs11-tool", "--lab", str(lab))
    assert run["truth"]["summary"]["unexpected"] == []
    assert (lab / "store" / "softhsm2.conf").exists()
    for op in run["truth"]["ops"]:
        match_calls(op, rows_of(run["calls"], op))


def assert_one_line_error(result: subprocess.CompletedProcess | tuple[int, str], needle: str) -> None:
    code, err = (result.returncode, result.stderr) if isinstance(result, subprocess.CompletedProcess) else result
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


@pytest.mark.parametrize("option,value,needle", [
    ("--module", "/nonexistent/libp11.so", "no such file"),
    ("--module", "README", "cannot be loaded"),
    ("--module", "LIBC", "not a PKCS#11 library"),
    ("--spy", "/nonexistent/pkcs11-spy.so", "no such file"),
])
def test_bad_library_paths_exit_2_with_one_line(tmp_path, capsys, option, value, needle):
    if value == "README":
        value = str(tmp_path / "README")
        Path(value).write_text("not a library\n")
    if value == "LIBC":
        import ctypes.util

        value = ctypes.util.find_library("m")
        value = next(p for p in ("/lib/x86_64-linux-gnu/" + value, "/usr/lib/x86_64-linux-gnu/" + value) if Path(p).exists())
    code = cli_main(["drive", "--workload", "smoke", option, value, "-o", str(tmp_path / "t.log")])
    assert_one_line_error((code, capsys.readouterr().err), needle)


@pytest.mark.parametrize("missing,package", [("SOFTHSM_CANDIDATES", "softhsm2"), ("SPY_CANDIDATES", "opensc")])
def test_missing_libraries_name_the_debian_packages(tmp_path, monkeypatch, capsys, missing, package):
    monkeypatch.setattr(lab_mod, missing, ("/nonexistent/*.so",))
    code = cli_main(["drive", "--workload", "smoke", "-o", str(tmp_path / "t.log")])
    err = capsys.readouterr().err
    assert_one_line_error((code, err), "apt-get install softhsm2 opensc")
    assert ("SoftHSM2" if package == "softhsm2" else "pkcs11-spy") in err


@pytest.mark.parametrize("args,needle", [
    (["--ops", "0"], "--ops must be at least 1"),
    (["-o", "/nonexistent/dir/t.log"], "no such directory"),
])
def test_bad_options_exit_2(tmp_path, capsys, args, needle):
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "t.log")]
    code = cli_main(["drive", "--workload", "smoke", *args])
    assert_one_line_error((code, capsys.readouterr().err), needle)


def test_one_subprocess_error_has_no_traceback(tmp_path):
    """The same through the console script, as a user runs it."""
    result = run_cli("drive", "--workload", "smoke", "--module", "/nonexistent/libp11.so", "-o", str(tmp_path / "t.log"))
    assert_one_line_error(result, "no such file")


def test_a_spy_that_is_not_a_spy_is_reported(tmp_path, capsys):
    """--spy pointing at the module itself: the workload runs, but no trace appears."""
    code = cli_main(["drive", "--workload", "smoke", "--spy", lab_mod.find_module(None).as_posix(),
                     "-o", str(tmp_path / "t.log")])
    assert_one_line_error((code, capsys.readouterr().err), "the spy wrote nothing")


def test_non_empty_lab_is_refused(tmp_path, capsys):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "keep.txt").write_text("mine")
    code = cli_main(["drive", "--workload", "smoke", "--lab", str(tmp_path / "lab"), "-o", str(tmp_path / "t.log")])
    assert_one_line_error((code, capsys.readouterr().err), "new or empty directory")
    assert (tmp_path / "lab" / "keep.txt").read_text() == "mine"


# -- the committed sample logs -----------------------------------------------------------------
SAMPLES = Path(__file__).resolve().parent.parent / "sample-logs"


def test_sample_logs_still_match_their_truth(tmp_path):
    """The traces in sample-logs/ parse to exactly what their truth files say (one parse for all)."""
    logs = sorted(SAMPLES.glob("*.log"))
    assert {p.stem for p in logs} >= {"smoke", "mixed", "errors", "threads"}
    parsed = run_cli("parse", *map(str, logs), "-o", str(tmp_path / "out"))
    assert parsed.returncode == 0, parsed.stderr
    calls = pl.read_parquet(tmp_path / "out" / "calls.parquet")
    for log in logs:
        assert log.stat().st_size < 1_100_000
        truth = json.loads(log.with_name(log.name + ".truth.json").read_text())
        mine = calls.filter(pl.col("source").str.ends_with(log.name)).sort("line")
        assert mine.height == sum(len(rows_of(mine, op)) for op in truth["ops"]) > 0
        for op in truth["ops"]:
            match_calls(op, rows_of(mine, op))
        assert truth["summary"]["unexpected"] == []
