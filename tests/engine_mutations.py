"""Mutated spy logs for the engines' differential test: real logs cut and damaged the ways
real ones are (lines lost, repeated, glued or interleaved, stray bytes, huge numbers, bad dates)."""

from __future__ import annotations

import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "sample-logs").glob("*.log")) + sorted((ROOT / "tests" / "data" / "spy-examples").glob("*.log"))

_SNIPPETS = [
    b"", b"\r", b"\t", b" ", b"\xa0", b"\xff\xfe", b"Returned:  0 CKR_OK", b"Returned:  -1 (null)",
    b"2024-02-30 10:00:00.000", b"P:1; T:0x2 2024-01-01 00:00:60.000", b"0000-01-01 00:00:00.000",
    b"99999999999999999999999", b"18446744073709551616", b"0xffffffffffffffffff", b"-9223372036854775809",
    b"*************** OpenSC PKCS#11 spy *****************", b'Loaded: "x.so"', b"Error: nope",
    b"[compat]", b"[in] pTemplate[2]: ", b"    CKA_VALUE                 00007f00 / 4",
    b"    00000000  30 31 32 33                                      0123", b"12: C_Sign", b"5: C_Login",
    b"[in] hSession = 0x", b"[out] *phSession = 0x1f", b"[in] pMechanism->type = 0x00000252",
    b"0000abcd / 5", b"debug: application output", b"\n\n", b"Unknown Mechanism (80000000)",
    b"Returned: 0 CKR_OK", b"Returned:   7   CKR_X \t", b"   ", b" \t\r", b"  Returned:  0 CKR_OK", b"  R sums",
    b"NULL [size : 0x10 (16)]", b"NULL [size : 0x", b"[in] pMechanism->pParameter = NULL", b"  indented prose",
    b"[in] flags = 0x6 \t", b"[in] pTemplate[1]: \t",
]


_NUMBERS = [b"0", b"-1", b"-2147483648", b"-2147483649", b"-9223372036854775808", b"-9223372036854775809",
            b"9223372036854775807", b"9223372036854775808", b"18446744073709551615", b"18446744073709551616",
            b"99999999999999999999999999999999999999999999"]
_DATES = [b"2024-13-01", b"2023-02-29", b"2024-02-29", b"0000-01-01", b"9999-12-31", b"2024-00-10", b"2024-04-31"]
_TIMES = [b"24:00:00.000", b"23:59:60.999", b"23:60:00.000", b"00:00:61.000", b"12:34:56.789"]
_HEX = re.compile(rb"0x[0-9a-f]+")
_DECIMAL = re.compile(rb"(?<=Returned:  )-?\d+|(?<=^P:)\d+|(?<=T:0x)\d+|^\d+(?=: )|(?<= / )\d+|(?<=\()\d+(?=\)\])")
_STAMP = re.compile(rb"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d{3})")


def _number(line: bytes, rng: random.Random) -> bytes:
    """A number of the line (counter, pid, rv, length, handle) made huge, negative or a bad date."""
    choice = rng.randrange(3)
    if choice == 0 and _HEX.search(line):
        return _HEX.sub(lambda m: m.group(0) + b"f" * rng.randrange(1, 20), line, count=1)
    if choice == 1 and _STAMP.search(line):
        return _STAMP.sub(lambda m: rng.choice([rng.choice(_DATES) + b" " + m.group(2), m.group(1) + b" " + rng.choice(_TIMES)]), line)
    return _DECIMAL.sub(lambda m: rng.choice(_NUMBERS), line, count=1)


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four damages to a slice of a real log."""
    lines = _lines(data)
    if len(lines) > 400:
        start = rng.randrange(len(lines) - 200)
        lines = lines[start : start + rng.randrange(20, 400)]
    for _ in range(rng.randint(1, 4)):
        if not lines:
            lines = [b""]
        i = rng.randrange(len(lines))
        kind = rng.randrange(14)
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif kind == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == 3 and i + 1 < len(lines):
            lines[i : i + 2] = [lines[i] + lines[i + 1]]
        elif kind == 4:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i : i + 1] = [lines[i][:cut], lines[i][cut:]]
        elif kind == 5:
            lines.insert(i, rng.choice(_SNIPPETS))
        elif kind == 6:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:cut] + rng.choice(_SNIPPETS) + lines[i][cut:]
        elif kind == 7:  # another call's lines interleaved (a second thread)
            j = rng.randrange(len(lines))
            block = lines[j : j + rng.randint(1, 6)]
            lines[i:i] = block
        elif kind == 8:  # digits made huge
            lines[i] = bytes(b if not chr(b).isdigit() else rng.choice(b"9123456789") for b in lines[i]) + (
                b"9" * rng.randrange(25) if lines[i][-1:].isdigit() else b""
            )
        elif kind == 9:
            for _ in range(rng.choice([1, 1, 5, 40])):  # padding on one line, or on many (a copy)
                j = rng.randrange(len(lines))
                lines[j] = lines[j] + rng.choice([b" ", b"\t", b"\r", b"  ", b" \t\r "])
        elif kind == 10:
            del lines[i : i + rng.randint(1, 30)]
        elif kind == 11:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        else:
            for _ in range(rng.randint(1, 8)):
                j = rng.randrange(len(lines))
                lines[j] = _number(lines[j], rng)
    out = b"\n".join(lines)
    if rng.random() < 0.1:
        out = out.replace(b"\n", b"\r\n")
    if rng.random() < 0.2:
        out = out[: rng.randrange(len(out) + 1)]
    return out


def cases(count: int, seed: int = 16) -> list[bytes]:
    rng = random.Random(seed)
    sources = [p.read_bytes() for p in SOURCES]
    return [mutate(rng.choice(sources), rng) for _ in range(count)]
