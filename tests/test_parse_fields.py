"""Known answers for typed fields, read off chosen records of the real example logs.

Each expected value below was read from the log text at the record's line (the test also
re-reads that line, so a wrong line number cannot pass).
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest
from spylogs import DATA

from pipeline.parse import parse_logs


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    out = tmp_path_factory.mktemp("fields")
    names = [
        "02-keygen-sign_0.27.1.log", "02-keygen-sign_0.20.0.log", "05-secrets_0.23.0-debian.log",
        "12-mechinfo_0.23.0-debian.log", "13-coverage_0.27.1.log", "11-unknown-rv-rawbytes_0.27.1.log",
        "04-pin-admin_0.23.0-debian.log", "06-multithread_0.27.1.log",
    ]
    parse_logs([str(DATA / n) for n in names], out)
    return pl.read_parquet(out / "calls.parquet")


def record(calls: pl.DataFrame, name: str, seq: int, func: str, process: int = 0) -> dict:
    rows = calls.filter(
        (pl.col("source") == str(DATA / name)) & (pl.col("seq") == seq) & (pl.col("func") == func) & (pl.col("process") == process)
    )
    assert rows.height == 1, rows
    row = rows.row(0, named=True)
    line = (DATA / name).read_bytes().split(b"\n")[row["line"] - 1]
    assert line == f"{seq}: {func}".encode()
    return row


def test_open_session_login_and_keygen_0_27(calls):
    log = "02-keygen-sign_0.27.1.log"
    opened = record(calls, log, 15, "C_OpenSession")
    assert (opened["slot"], opened["session"], opened["rv_name"]) == (0x5603BE34, 1, "CKR_OK")
    assert (opened["pid"], opened["tid"]) == (8853, 139708942257024)
    assert opened["ts"] == datetime(2026, 11, 28, 15, 13, 15, 954000)
    login = record(calls, log, 16, "C_Login")
    assert (login["user_type"], login["in_len"], login["session"]) == ("CKU_USER", 6, 1)
    assert login["secrets"] == ["pin:pPin"]
    keygen = record(calls, log, 17, "C_GenerateKeyPair")
    assert keygen["mechanism"] == "CKM_RSA_PKCS_KEY_PAIR_GEN"
    assert keygen["created"] == [2, 3]
    assert "CKA_MODULUS_BITS" in keygen["attributes"] and "CKA_SENSITIVE" in keygen["attributes"]
    assert len(keygen["attributes"]) == 19  # 9 public + 10 private template entries


def test_sign_and_crypt_lengths(calls):
    log = "02-keygen-sign_0.27.1.log"
    sign_init = record(calls, log, 31, "C_SignInit")
    assert (sign_init["mechanism"], sign_init["object"]) == ("CKM_SHA256_RSA_PKCS_PSS", 3)
    sign = record(calls, log, 32, "C_Sign")
    assert (sign["in_len"], sign["out_len"]) == (19, 128)
    encrypt = record(calls, log, 41, "C_Encrypt")
    assert (encrypt["in_len"], encrypt["out_len"], encrypt["secrets"]) == (40, 48, ["plaintext:pData"])
    read_back = record(calls, log, 46, "C_GetAttributeValue")
    assert read_back["attributes"] == ["CKA_VALUE"] and read_back["secrets"] == ["key:CKA_VALUE"]


def test_0_20_mechanism_wording(calls):
    log = "02-keygen-sign_0.20.0.log"
    rows = calls.filter((pl.col("source") == str(DATA / log)) & pl.col("func").is_in(["C_SignInit", "C_GenerateKeyPair"]))
    assert set(rows["mechanism"].to_list()) == {"CKM_RSA_PKCS_KEY_PAIR_GEN", "CKM_SHA256_RSA_PKCS", "CKM_SHA256_RSA_PKCS_PSS"}
    assert rows["pid"].null_count() == rows.height


def test_0_23_mechinfo_newline_bug(calls):
    """0.23 prints ``[in] type = NAME`` without a newline; the glued ``Returned:`` still counts."""
    rows = calls.filter(
        (pl.col("source") == str(DATA / "12-mechinfo_0.23.0-debian.log")) & (pl.col("func") == "C_GetMechanismInfo")
    )
    assert rows.height > 10 and rows["complete"].all()
    assert rows["mechanism"].null_count() == 0
    assert all(m.startswith(("CKM_", "0x")) for m in rows["mechanism"].to_list())


def test_unknown_and_vendor_return_codes_kept_as_written(calls):
    rows = calls.filter(pl.col("source") == str(DATA / "11-unknown-rv-rawbytes_0.27.1.log"))
    pairs = set(zip(rows["rv"].to_list(), rows["rv_name"].to_list()))
    assert (0x80000001, "(null)") in pairs
    assert (0x80000000, "CKR_VENDOR_DEFINED") in pairs


def test_set_operation_state_header_and_unknown_mechanism(calls):
    rows = calls.filter(pl.col("source") == str(DATA / "13-coverage_0.27.1.log"))
    assert "SetOperationState" in rows["func"].to_list()
    mechs = set(rows["mechanism"].drop_nulls().to_list())
    assert any(m.startswith("0x") for m in mechs)  # vendor mechanism: python-pkcs11 has no name
    assert "CKM_AES_GCM" in mechs


def test_pin_admin_records_name_secrets_not_values(calls):
    rows = calls.filter(pl.col("source") == str(DATA / "04-pin-admin_0.23.0-debian.log"))
    by_func = {f: s for f, s in zip(rows["func"].to_list(), rows["secrets"].to_list())}
    assert by_func["C_InitToken"] == ["pin:pPin"]
    assert by_func["C_InitPIN"] == ["pin:pPin"]
    assert by_func["C_SetPIN"] == ["pin:pOldPin", "pin:pNewPin"]
    set_pin = rows.filter(pl.col("func") == "C_SetPIN").row(0, named=True)
    assert set_pin["in_len"] == 16  # 8-byte old + 8-byte new PIN


def test_interleaved_record_keeps_its_session(calls):
    """06 line 446: ``39: C_Encrypt`` whose timestamp and lines arrive after another call's."""
    row = record(calls, "06-multithread_0.27.1.log", 39, "C_Encrypt")
    assert row["uncertain"] and row["complete"]


def test_non_secret_values_in_flags(calls):
    """02-keygen-sign 0.27.1: the RSA pair's templates and the session's read-write flag."""
    log = "02-keygen-sign_0.27.1.log"
    assert record(calls, log, 15, "C_OpenSession")["flags"] == ["CKF_RW_SESSION=True"]  # [in] flags = 0x6
    flags = record(calls, log, 17, "C_GenerateKeyPair")["flags"]
    assert "pPublicKeyTemplate.CKA_MODULUS_BITS=1024" in flags
    assert "pPrivateKeyTemplate.CKA_SENSITIVE=True" in flags and "pPrivateKeyTemplate.CKA_CLASS=CKO_PRIVATE_KEY" in flags
    aes = record(calls, log, 34, "C_GenerateKey")["flags"]
    assert "CKA_VALUE_LEN=16" in aes and "CKA_EXTRACTABLE=True" in aes  # dump row "10 00 00 00 ..."
    assert record(calls, log, 16, "C_Login")["flags"] is None
