"""Which PKCS#11 calls each driver step produces, as far as that is certain.

The sequences are python-pkcs11 0.10's, read from its source and confirmed against the trace by
tests/test_driver.py (a change in python-pkcs11 shows up there first):

* single-part sign, encrypt, decrypt and digest call the final function twice, first with a NULL
  buffer to learn the output size, then for the data (``C_Sign`` x2);
* multi-part encrypt and decrypt call each ``*Update`` twice for the same reason, and ``*Final`` twice;
* multi-part sign and digest call each ``*Update`` once and ``*Final`` twice; verify calls
  ``C_Verify`` / ``C_VerifyFinal`` once;
* python-pkcs11 reads attributes behind the caller's back: after a key is generated or found (to
  pick the Python class) and the first time a key object is used (its key type).  Those
  ``C_GetAttributeValue`` calls are not counted; they go in ``may_also_call``.

A failing step stops at ``fail_at``, which returns the step's ``expect``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.driver.truth import Call

GAV = "C_GetAttributeValue"


@dataclass
class Expectation:
    calls: list[Call]
    exact: bool = True
    may_also: list[str] = field(default_factory=list)


def _single(prefix: str, twice: bool = True) -> list[str]:
    return [f"C_{prefix}Init", f"C_{prefix}", *([f"C_{prefix}"] if twice else [])]


def _multi(prefix: str, parts: int, update_twice: bool, final_twice: bool) -> list[str]:
    updates = [f"C_{prefix}Update"] * (parts * (2 if update_twice else 1))
    finals = [f"C_{prefix}Final"] * (2 if final_twice else 1)
    return [f"C_{prefix}Init", *updates, *finals]


def success_calls(step: dict[str, Any], kind: str | None, parts: int) -> Expectation:
    """The calls of a step that succeeds."""
    op = step["op"]
    if op == "load":
        # 0.10 then probes C_GetInterface for the 3.0 function lists; what it gets depends on the spy
        return Expectation(_calls(["C_GetFunctionList", "C_Initialize", "C_GetInfo"]), False, ["C_GetInterface"])
    if op == "get_token":
        # one C_GetTokenInfo / C_GetMechanismList round per slot with a token: depends on the store
        return Expectation(_calls(["C_GetSlotList", "C_GetSlotList"]), False,
                           ["C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList"])
    simple = {"open_session": "C_OpenSession", "close_session": "C_CloseSession", "login": "C_Login",
              "logout": "C_Logout", "set_pin": "C_SetPIN", "finalize": "C_Finalize",
              "random": "C_GenerateRandom", "set_attr": "C_SetAttributeValue"}
    if op in simple:
        return Expectation(_calls([simple[op]]))
    if op == "gen_key":
        func = "C_GenerateKeyPair" if step["kind"] in ("rsa", "ec") else "C_GenerateKey"
        return Expectation(_calls([func]), False, [GAV])
    if op == "destroy":
        return Expectation(_calls(["C_DestroyObject"] * (2 if kind in ("rsa", "ec") else 1)))
    if op == "get_attr":
        # one call for the size, one for the value; cached type lookups may add more
        return Expectation(_calls([GAV, GAV]), False, [GAV])
    if op == "find":
        return Expectation(_calls(["C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal"]), False, ["C_FindObjects", GAV])
    return Expectation(_calls(_data_calls(op, parts)), False, [GAV])


def _data_calls(op: str, parts: int) -> list[str]:
    prefix = {"sign": "Sign", "verify": "Verify", "encrypt": "Encrypt", "decrypt": "Decrypt",
              "decrypt_raw": "Decrypt", "digest": "Digest"}[op]
    if parts <= 1:
        return _single(prefix, twice=prefix != "Verify")
    crypt = prefix in ("Encrypt", "Decrypt")
    return _multi(prefix, parts, update_twice=crypt, final_twice=prefix != "Verify")


def _calls(funcs: list[str]) -> list[Call]:
    return [Call(f) for f in funcs]


def expectation(step: dict[str, Any], kind: str | None, parts: int) -> Expectation:
    """Expected calls of ``step``; a step planned to fail is cut at its failing call."""
    exp = success_calls(step, kind, parts)
    expect, fail_at = step.get("expect"), step.get("fail_at")
    if not expect or expect == "CKR_OK":
        return exp
    fail_at = fail_at or exp.calls[-1].func
    for i, call in enumerate(exp.calls):
        if call.func == fail_at:
            exp.calls = [*exp.calls[:i], Call(fail_at, expect)]
            return exp
    raise ValueError(f"step {step.get('id')}: {fail_at} is not among its calls")
