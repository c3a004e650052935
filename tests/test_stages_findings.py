"""Each finding code is raised by a real trace that contains the problem and not by one that
does not; a finding's ``source:line`` is the header of a record in that trace."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from pipeline.analyze import analyze
from pipeline.parse import parse_logs

DATA = Path(__file__).parent / "data" / "spy-examples"
SAMPLES = Path(__file__).parent.parent / "sample-logs"

# code -> (trace that has it, trace that does not)
CASES = {
    "secret-pin-in-trace": ("01-basic-session_0.27.1", "07-multiprocess-append_0.27.1"),
    "secret-key-material": ("05-secrets_0.27.1", "01-basic-session_0.27.1"),
    "plaintext-in-trace": ("02-keygen-sign_0.27.1", "03-wrong-pin_0.27.1"),
    "wrapped-key-in-trace": ("05-secrets_0.23.0-debian", "02-keygen-sign_0.27.1"),
    "operation-state-in-trace": ("13-coverage_0.27.1", "02-keygen-sign_0.27.1"),
    "data-in-trace": ("02-keygen-sign_0.24.0", "03-wrong-pin_0.27.1"),
    "random-in-trace": ("09-stderr-mixed_0.27.1", "02-keygen-sign_0.27.1"),
    "pin-failures-repeated": ("03-wrong-pin_0.27.1", "13-coverage_0.27.1"),
    "pin-failure": ("13-coverage_0.27.1", "03-wrong-pin_0.23.0-debian"),
    "pin-admin": ("04-pin-admin_0.23.0-debian", "01-basic-session_0.23.0-debian"),
    "session-leaked": ("08-truncated-kill-file_0.27.1", "01-basic-session_0.27.1"),
    "login-without-logout": ("08-truncated-kill-file_0.23.0-debian", "02-keygen-sign_0.27.1"),
    "no-finalize": ("08-truncated-kill-stderr_0.27.1", "02-keygen-sign_0.27.1"),
    "weak-mechanism": ("13-coverage_0.23.0", "02-keygen-sign_0.27.1"),
    "rsa-key-small": ("02-keygen-sign_0.20.0", "05-secrets_0.27.1"),
    "key-not-sensitive": ("02-keygen-sign_0.26.1", "01-basic-session_0.27.1"),
    "key-extractable": ("05-secrets_0.27.1", "01-basic-session_0.27.1"),
    "incomplete-records": ("08-truncated-exit-midcall_0.27.1", "02-keygen-sign_0.27.1"),
    "uncertain-records": ("06-multithread_0.27.1", "02-keygen-sign_0.27.1"),
    "other-text": ("09-stderr-mixed_0.23.0-debian", "02-keygen-sign_0.27.1"),
}
RECORD_CODES = set(CASES) - {"other-text", "no-finalize"}


@pytest.fixture(scope="module")
def findings_of(tmp_path_factory):
    root = tmp_path_factory.mktemp("findings")
    cache: dict[str, pl.DataFrame] = {}

    def get(name: str) -> pl.DataFrame:
        if name not in cache:
            out = root / name
            log = DATA / f"{name}.log" if (DATA / f"{name}.log").exists() else SAMPLES / f"{name}.log"
            parse_logs([str(log)], out)
            analyze(out)
            cache[name] = pl.read_parquet(out / "findings.parquet")
        return cache[name]

    return get


@pytest.mark.parametrize("code", sorted(CASES))
def test_code_present_and_absent(findings_of, code):
    has, hasnt = CASES[code]
    found = findings_of(has).filter(pl.col("code") == code)
    assert found.height >= 1, f"{code} not raised on {has}"
    assert findings_of(hasnt).filter(pl.col("code") == code).height == 0, f"{code} raised on {hasnt}"
    assert found["count"].min() >= 1
    assert set(found["severity"]) <= {"high", "medium", "low", "info"}


@pytest.mark.parametrize("code", sorted(RECORD_CODES))
def test_finding_points_at_a_record_header(findings_of, code):
    name = CASES[code][0]
    lines = (DATA / f"{name}.log").read_text(encoding="latin-1").split("\n")
    for row in findings_of(name).filter(pl.col("code") == code).iter_rows(named=True):
        assert row["source"].endswith(f"{name}.log")
        for line in row["lines"] or [row["line"]]:
            text = lines[line - 1]
            assert re.fullmatch(r"\d+: (C_\w+|SetOperationState)", text), (code, line, text)


def test_other_text_points_at_foreign_text(findings_of):
    name = "09-stderr-mixed_0.23.0-debian"
    row = findings_of(name).filter(pl.col("code") == "other-text").row(0, named=True)
    text = (DATA / f"{name}.log").read_text(encoding="latin-1").split("\n")[row["line"] - 1]
    assert not text.startswith(("[in]", "[out]", "Returned:")) and text.strip()


def test_pin_failures_counted_from_the_log(findings_of):
    name = "03-wrong-pin_0.27.1"
    raw = (DATA / f"{name}.log").read_text(encoding="latin-1")
    wrong = raw.count("Returned:  160 CKR_PIN_INCORRECT")
    row = findings_of(name).filter(pl.col("code") == "pin-failures-repeated").row(0, named=True)
    assert row["count"] == wrong == 2


def test_key_findings_name_the_right_records(findings_of):
    """02-keygen-sign: the AES key has CKA_SENSITIVE=False and CKA_EXTRACTABLE=True, the RSA pair 1024 bits."""
    name = "02-keygen-sign_0.27.1"
    lines = (DATA / f"{name}.log").read_text(encoding="latin-1").split("\n")
    f = findings_of(name)
    for code, func in (("key-not-sensitive", "C_GenerateKey"), ("key-extractable", "C_GenerateKey"), ("rsa-key-small", "C_GenerateKeyPair")):
        row = f.filter(pl.col("code") == code).row(0, named=True)
        assert lines[row["line"] - 1].endswith(": " + func)
    small = f.filter(pl.col("code") == "rsa-key-small").row(0, named=True)
    assert small["subject"] == "1024 bits" and small["severity"] == "medium"


def test_messages_hold_no_secret_values(findings_of):
    pins = ("123456", "87654321", "11112222", "33334444", "31 32 33 34 35 36")
    for name in ("01-basic-session_0.27.1", "04-pin-admin_0.23.0-debian", "05-secrets_0.27.1", "13-coverage_0.27.1"):
        for message in findings_of(name)["message"]:
            assert not any(p in message for p in pins)


def test_most_severe_first(findings_of):
    sev = findings_of("02-keygen-sign_0.27.1")["severity"].to_list()
    order = {"high": 0, "medium": 1, "low": 2, "info": 3}
    assert sev == sorted(sev, key=order.get)
