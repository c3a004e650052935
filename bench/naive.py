"""The baseline the benchmark divides by: a naive line-by-line pure-Python regex parser.

It reads the same fields a reviewer would grep for (header, timestamp, return value,
session, slot, mechanism) with one regex test per line, the way a first script would.
Kept deliberately plain; it is a yardstick, not part of p11lens.
"""

from __future__ import annotations

import re
import sys

HEADER = re.compile(r"^(\d+): (\S+)$")
TS = re.compile(r"^(?:P:(\d+); T:(?:0x)?(\d+) )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})$")
RV = re.compile(r"Returned:  (-?\d+) (\S+)$")
SESSION = re.compile(r"^\[in\] hSession = 0x([0-9a-f]+)$")
SLOT = re.compile(r"^\[in\] slotID = 0x([0-9a-f]+)$")
MECH = re.compile(r"^\[in\] pMechanism->type = (\S+)")


def parse(path: str) -> int:
    records = []
    current = None
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            m = HEADER.match(line)
            if m:
                current = {"seq": int(m.group(1)), "func": m.group(2)}
                records.append(current)
                continue
            if current is None:
                continue
            if "ts" not in current and (m := TS.match(line)):
                current["ts"] = m.group(3)
            elif m := RV.search(line):
                current["rv"] = int(m.group(1))
            elif m := SESSION.match(line):
                current["session"] = int(m.group(1), 16)
            elif m := SLOT.match(line):
                current["slot"] = int(m.group(1), 16)
            elif m := MECH.match(line):
                current["mechanism"] = m.group(1)
    return len(records)


if __name__ == "__main__":
    print(parse(sys.argv[1]))
