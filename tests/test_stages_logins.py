"""When is a login left over?  PKCS#11 ends a login when the application's last session with
the token closes (C_CloseSession of the last one, C_CloseAllSessions, C_Finalize), so
``login-without-logout`` must fire only for a login that neither C_Logout nor that close ended.

Real traces: the driver's ``smoke.log`` (login, logout, close, finalize) with records cut out,
its ``errors.log`` (login, sessions left to C_Finalize), and the example ``01-basic-session``
(login, no logout, last session closed, C_Finalize).
"""

from __future__ import annotations

import polars as pl
import pytest
from spylogs import DATA
from test_report_runs import SAMPLES, records, run_log, stage, without_records

SMOKE = next((p for p in SAMPLES if p.name == "smoke.log"), None)
ERRORS = next((p for p in SAMPLES if p.name == "errors.log"), None)
needs_samples = pytest.mark.skipif(SMOKE is None or ERRORS is None, reason="sample-logs/ is empty")


def login_findings(out) -> pl.DataFrame:
    return stage(out, "findings").filter(pl.col("code") == "login-without-logout")


def login_line(raw: bytes) -> int:
    """1-based line of the first C_Login record's header."""
    at = next(at for at, name in records(raw) if name == "C_Login")
    return raw[:at].count(b"\n") + 1


@needs_samples
def test_closing_the_last_session_ends_the_login(tmp_path):
    """smoke.log without its C_Logout: C_Login, ..., C_CloseSession (the only session), C_Finalize."""
    raw = without_records(SMOKE.read_bytes(), {"C_Logout"})
    out = run_log(raw, tmp_path)
    assert login_findings(out).is_empty()
    procs = stage(out, "processes").row(0, named=True)
    assert (procs["logins"], procs["logouts"], procs["logins_without_logout"], procs["logins_ended_by_close"]) == (1, 0, 0, 1)


@needs_samples
def test_a_login_with_a_session_still_open_is_reported(tmp_path):
    """The same trace cut before its C_Logout: the session, and so the login, are still open."""
    raw = SMOKE.read_bytes()
    raw = raw[: next(at for at, name in records(raw) if name == "C_Logout")]
    out = run_log(raw, tmp_path)
    found = login_findings(out)
    assert found.height == 1 and found["line"][0] == login_line(raw) and found["count"][0] == 1
    procs = stage(out, "processes").row(0, named=True)
    assert (procs["logins_without_logout"], procs["logins_ended_by_close"]) == (1, 0)


@needs_samples
def test_finalize_ends_the_login_of_sessions_left_open(tmp_path):
    """errors.log: a successful login, two sessions never closed, then C_Finalize (the truth
    file says they were left open: C_Finalize closed them, and the login with them)."""
    out = run_log(ERRORS.read_bytes(), tmp_path)
    assert login_findings(out).is_empty()
    ses = stage(out, "sessions")
    assert "C_Finalize" in set(ses["ended_by"])
    assert stage(out, "processes")["logins_ended_by_close"].sum() == 1


def test_example_log_login_closed_with_its_session(tmp_path):
    """01-basic-session (a real 0.27.1 spy log): two processes each C_Login, no C_Logout,
    C_CloseSession, C_Finalize."""
    out = run_log((DATA / "01-basic-session_0.27.1.log").read_bytes(), tmp_path)
    assert login_findings(out).is_empty()
    procs = stage(out, "processes")
    assert procs["logins"].sum() == procs["logins_ended_by_close"].sum() == 2 and procs["logouts"].sum() == 0


@needs_samples
def test_logout_before_any_login_means_logged_in_before_the_log(tmp_path):
    """smoke.log from its C_Sign on: the C_Logout comes with no C_Login in the log."""
    from test_report_runs import cut_before

    out = run_log(cut_before(SMOKE.read_bytes(), "C_Sign"), tmp_path)
    procs = stage(out, "processes").row(0, named=True)
    assert procs["logged_in_before_log"] and procs["logins"] == 0 and procs["logouts"] == 1
    assert login_findings(out).is_empty()
