"""Ground truth: what the driver did, measured on its side of the PKCS#11 boundary.

A trace says what the spy saw; the truth file says what the driver issued, with its own clocks,
so the parser can be checked against it and latency estimates calibrated.  The format is plain
JSON (``LOG.truth.json``, ``"format": "p11lens-truth/1"``); docs/driver.md describes every key.

Certainty is explicit: ``expected_calls`` lists the calls an operation must produce, in order,
and ``calls_exact`` says whether that list is complete.  python-pkcs11 also makes calls of its
own (``C_GetAttributeValue`` to learn a key's type, extra ``C_FindObjects`` batches); those are
named in ``may_also_call`` instead of being guessed.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "p11lens-truth/1"

# The return values the driver provokes or may meet (PKCS#11 v3.1 §5.1 numbers).
CKR: dict[str, int] = {
    "CKR_OK": 0x0,
    "CKR_HOST_MEMORY": 0x2,
    "CKR_SLOT_ID_INVALID": 0x3,
    "CKR_GENERAL_ERROR": 0x5,
    "CKR_FUNCTION_FAILED": 0x6,
    "CKR_ARGUMENTS_BAD": 0x7,
    "CKR_ATTRIBUTE_READ_ONLY": 0x10,
    "CKR_ATTRIBUTE_SENSITIVE": 0x11,
    "CKR_ATTRIBUTE_TYPE_INVALID": 0x12,
    "CKR_ATTRIBUTE_VALUE_INVALID": 0x13,
    "CKR_DATA_INVALID": 0x20,
    "CKR_DATA_LEN_RANGE": 0x21,
    "CKR_DEVICE_ERROR": 0x30,
    "CKR_ENCRYPTED_DATA_INVALID": 0x40,
    "CKR_ENCRYPTED_DATA_LEN_RANGE": 0x41,
    "CKR_FUNCTION_NOT_SUPPORTED": 0x54,
    "CKR_KEY_HANDLE_INVALID": 0x60,
    "CKR_KEY_SIZE_RANGE": 0x62,
    "CKR_KEY_TYPE_INCONSISTENT": 0x63,
    "CKR_KEY_FUNCTION_NOT_PERMITTED": 0x68,
    "CKR_MECHANISM_INVALID": 0x70,
    "CKR_MECHANISM_PARAM_INVALID": 0x71,
    "CKR_OBJECT_HANDLE_INVALID": 0x82,
    "CKR_OPERATION_ACTIVE": 0x90,
    "CKR_OPERATION_NOT_INITIALIZED": 0x91,
    "CKR_PIN_INCORRECT": 0xA0,
    "CKR_PIN_INVALID": 0xA1,
    "CKR_PIN_LEN_RANGE": 0xA2,
    "CKR_PIN_LOCKED": 0xA4,
    "CKR_SESSION_CLOSED": 0xB0,
    "CKR_SESSION_COUNT": 0xB1,
    "CKR_SESSION_HANDLE_INVALID": 0xB3,
    "CKR_SESSION_READ_ONLY": 0xB5,
    "CKR_SESSION_EXISTS": 0xB6,
    "CKR_SESSION_READ_ONLY_EXISTS": 0xB7,
    "CKR_SESSION_READ_WRITE_SO_EXISTS": 0xB8,
    "CKR_SIGNATURE_INVALID": 0xC0,
    "CKR_SIGNATURE_LEN_RANGE": 0xC1,
    "CKR_TEMPLATE_INCOMPLETE": 0xD0,
    "CKR_TEMPLATE_INCONSISTENT": 0xD1,
    "CKR_TOKEN_NOT_PRESENT": 0xE0,
    "CKR_TOKEN_NOT_RECOGNIZED": 0xE1,
    "CKR_TOKEN_WRITE_PROTECTED": 0xE2,
    "CKR_USER_ALREADY_LOGGED_IN": 0x100,
    "CKR_USER_NOT_LOGGED_IN": 0x101,
    "CKR_USER_PIN_NOT_INITIALIZED": 0x102,
    "CKR_USER_TYPE_INVALID": 0x103,
    "CKR_USER_ANOTHER_ALREADY_LOGGED_IN": 0x104,
    "CKR_USER_TOO_MANY_TYPES": 0x105,
    "CKR_BUFFER_TOO_SMALL": 0x150,
    "CKR_CRYPTOKI_NOT_INITIALIZED": 0x190,
    "CKR_CRYPTOKI_ALREADY_INITIALIZED": 0x191,
}
CKR_NAMES: dict[int, str] = {v: k for k, v in CKR.items()}

# python-pkcs11 exception class names whose CamelCase does not spell the CKR name.
_EXCEPTION_SPELLING = {
    "AnotherUserAlreadyLoggedIn": "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    "TokenNotRecognised": "CKR_TOKEN_NOT_RECOGNIZED",
    "FunctionCancelled": "CKR_FUNCTION_CANCELED",
    "SlotIDInvalid": "CKR_SLOT_ID_INVALID",
}


def rv_json(value: int | None) -> dict[str, Any] | None:
    """A return value as the truth file writes it: name, number and the hex the spy uses."""
    if value is None:
        return None
    return {"name": CKR_NAMES.get(value, f"0x{value:08X}"), "value": value, "hex": hex(value)}


def rv_of_exception(exc: BaseException) -> int | None:
    """The CKR code behind a python-pkcs11 exception; None when no PKCS#11 call failed."""
    from pkcs11.exceptions import PKCS11Error

    if not isinstance(exc, PKCS11Error):
        return None
    name = type(exc).__name__
    if name in _EXCEPTION_SPELLING:
        return CKR[_EXCEPTION_SPELLING[name]]
    if name == "PKCS11Error":  # "Unmapped error code 0x68" and friends
        m = re.search(r"0x([0-9a-fA-F]+)", str(exc))
        return int(m.group(1), 16) if m else None
    snake = "CKR_" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()
    return CKR.get(snake)


def wall_clock(ns: int) -> str:
    """Local wall time like the spy's stamp, with microseconds (the spy prints milliseconds)."""
    return _dt.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="microseconds")


@dataclass
class Call:
    """One PKCS#11 call an operation is expected to produce; ``rv`` None means 'not checked'."""

    func: str
    rv: str | None = "CKR_OK"


@dataclass
class OpTruth:
    """One driver operation: what it asked for, what the token said, and where it is in the trace."""

    index: int
    process: int
    pid: int
    thread: int
    tid: int
    op: str
    args: dict[str, Any]
    step: int  # position in its own thread's plan (the reproducible part)
    session: str | None = None
    session_handle: int | None = None
    key_handles: list[int] = field(default_factory=list)
    created: list[int] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)
    expected_calls: list[Call] = field(default_factory=list)
    calls_exact: bool = True
    may_also_call: list[str] = field(default_factory=list)
    expected_rv: dict[str, Any] | None = None
    got_rv: dict[str, Any] | None = None
    as_expected: bool = True
    error: str | None = None
    start_ns: int = 0
    end_ns: int = 0
    wall_start_ns: int = 0
    wall_end_ns: int = 0
    wall_start: str = ""
    wall_end: str = ""
    trace_bytes: list[int] = field(default_factory=list)  # [start, end) byte offsets in the trace
    trace_lines: list[int] = field(default_factory=list)  # [first, last] 1-based, filled at the end


@dataclass
class SessionTruth:
    id: str
    process: int
    pid: int
    thread: int
    handle: int | None
    rw: bool
    opened_op: int
    closed_op: int | None = None
    left_open: bool = True


@dataclass
class AuthTruth:
    """A C_Login or C_Logout the driver issued (PINs are named by role, never copied here)."""

    op: int
    process: int
    func: str
    session_handle: int | None
    user_type: str | None
    pin: str | None  # "user", "so", "wrong", ... : a key of the file's "pins"
    rv: dict[str, Any] | None


@dataclass
class ProcessTruth:
    index: int
    pid: int
    banner_index: int | None = None  # order of this process's banner in the trace, 0-based
    load_op: int | None = None
    ops: int = 0
    threads: int = 1
    exit_code: int | None = None


def now_pair() -> tuple[int, int]:
    return time.perf_counter_ns(), time.time_ns()


def to_jsonable(obj: Any) -> Any:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a truth file next to a finished trace."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=to_jsonable) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def line_ranges(trace: bytes, spans: list[list[int]]) -> list[list[int]]:
    """[first, last] 1-based line numbers covering each byte span [a, b) of the trace.

    The spy flushes at every ``Returned:`` line, so an operation's records are exactly the
    bytes the file grew by while it ran; counting newlines turns those bytes into lines.
    """
    import bisect

    newlines = _newline_positions(trace)
    out = []
    for a, b in spans:
        first = bisect.bisect_left(newlines, a) + 1  # lines fully before a, plus one
        last = bisect.bisect_left(newlines, b)  # newlines before b = last complete line
        out.append([first, last])
    return out


def _newline_positions(data: bytes) -> list[int]:
    pos, out = data.find(b"\n"), []
    while pos != -1:
        out.append(pos)
        pos = data.find(b"\n", pos + 1)
    return out
