"""Real logs, damaged: CRLF, cut, spliced, duplicated, bytes injected; and a 1 MiB hexdump.

The mutations start from real spy output; the invariants hold for any input:
no exception, every line accounted for, one record per header line, no PIN in the output.
"""

from __future__ import annotations

import re

import polars as pl
import pyarrow.parquet as pq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from spylogs import DATA, EXAMPLE_LOGS, PINS, header_counts, line_count, pin_patterns

from pipeline.assemble import Assembler
from pipeline.stream import iter_blocks
from pipeline.parse import parse_logs
from pipeline.store import BATCH_ROWS, BATCH_TEXT, records_frame

SOURCES = [p.read_bytes() for p in EXAMPLE_LOGS if p.stat().st_size > 1000]
_HEADER_LINE = re.compile(rb"^\d+: \S+[ \t\r]*$", re.M)  # trailing blanks are a copy's (spy.WS)


def parse_bytes(raw: bytes, block_size: int = 1 << 20):
    import io

    records = []
    assembler = Assembler("mem", records.append)
    for block in iter_blocks(io.BytesIO(raw), block_size=block_size):
        assembler.feed(block)
    assembler.finish()
    return assembler, records


def assert_invariants(raw: bytes, block_size: int = 1 << 20) -> None:
    assembler, records = parse_bytes(raw, block_size)
    cov = assembler.coverage
    folded = raw.replace(b"\r\n", b"\n")
    assert cov.lines == line_count(folded)
    assert cov.lines == cov.record_lines + cov.banner_lines + cov.blank_lines + cov.unparsed_lines
    assert len(records) == len(_HEADER_LINE.findall(folded))
    assert all(r.end_line >= r.line for r in records)  # a call's lines end after its header
    frame = records_frame(records)  # the batch conversion accepts whatever was read
    assert frame.height == len(records)
    text = "\n".join(str(v) for v in frame.select("func", "rv_name", "mechanism", "user_type").to_dicts())
    for pin in PINS:
        assert pin_patterns(pin)[0] not in text


mutation = st.sampled_from(["cut", "splice", "duplicate", "inject", "crlf"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.integers(0, len(SOURCES) - 1),
    other=st.integers(0, len(SOURCES) - 1),
    kind=mutation,
    at=st.floats(0, 1),
    at2=st.floats(0, 1),
    junk=st.binary(min_size=1, max_size=64),
    block=st.sampled_from([256, 4096, 1 << 20]),
)
# A Latin-1 0xA0 inside a header: Unicode-aware \s took it for a space (the header was lost).
@example(base=33, other=0, kind="inject", at=1.0, at2=0.46484375, junk=b"\xa0", block=256)
def test_mutated_real_logs_keep_the_invariants(base, other, kind, at, at2, junk, block):
    raw = SOURCES[base]
    i, j = sorted((int(at * len(raw)), int(at2 * len(raw))))
    if kind == "cut":
        raw = raw[:i]
    elif kind == "splice":
        raw = raw[:i] + SOURCES[other][int(at2 * len(SOURCES[other])) :]
    elif kind == "duplicate":
        raw = raw[:j] + raw[i:j] + raw[j:]
    elif kind == "inject":
        raw = raw[:i] + junk + b"\x00\xff\xfe" + raw[i:]
    else:
        raw = raw.replace(b"\n", b"\r\n")
    assert_invariants(raw, block)


def test_crlf_log_parses_like_the_original():
    raw = (DATA / "06-multithread_0.27.1.log").read_bytes()
    _, plain = parse_bytes(raw)
    _, crlf = parse_bytes(raw.replace(b"\n", b"\r\n"))
    assert crlf == plain


def test_small_blocks_parse_like_large_ones():
    """Block boundaries never change the records (they are cut at blank lines); only the order
    they are handed on in, which the writer sorts by line."""
    for path in EXAMPLE_LOGS:
        raw = path.read_bytes()
        small, large = (sorted(parse_bytes(raw, size)[1], key=lambda r: r.line) for size in (512, 1 << 20))
        assert small == large, path.name


def _digest_log(repeat: int = 1) -> bytes:
    """A real log whose C_Digest record (seq 49) dumps 1 MiB of data, ``repeat`` times over.

    Constructed from the real record by repeating its dump rows to 1 MiB (labelled fragment).
    """
    raw = (DATA / "02-keygen-sign_0.27.1.log").read_bytes()
    start = raw.index(b"\n49: C_Digest\n")
    end = raw.index(b"Returned:", start)
    record = raw[start:end]
    head, rows = record.split(b"[in] pData[ulDataLen] ", 1)
    first_row = rows.split(b"\n")[1][14:]  # the row body after "    00000000  "
    dump = b"".join(b"\n    %08X  " % (16 * k) + first_row for k in range(65536))
    big = head + b"[in] pData[ulDataLen] 00007f10848f8c50 / 1048576" + dump + b"\n[out] pDigest[*pulDigestLen] 00007f10848f8c70 / 32\n"
    digest_rows = raw[raw.index(b"[out] pDigest", start) :].split(b"\n")[1:3]
    returned = raw[end : raw.index(b"\n", end) + 1]
    whole = big + b"\n".join(digest_rows) + b"\n" + returned
    return raw[:start] + whole * repeat + raw[end + len(returned) :]


def test_one_mebibyte_hexdump_in_one_record():
    log = _digest_log()
    assembler, records = parse_bytes(log, 1 << 16)
    digest = records_frame(records).row(by_predicate=pl.col("seq") == 49, named=True)
    assert digest["complete"] and digest["in_len"] == 1048576 and digest["out_len"] == 32
    assert len(records) == header_counts(log).total()
    assert assembler.coverage.unparsed_lines == 0


def test_big_records_are_written_in_several_batches(tmp_path):
    """Bodies are held until their batch is converted, so a batch is cut by the text it
    holds, not only by its row count: 16 records of 4.6 MB each make several row groups."""
    log = tmp_path / "big.log"
    log.write_bytes(_digest_log(repeat=16))
    manifest = parse_logs([str(log)], tmp_path / "out")
    parquet = pq.ParquetFile(tmp_path / "out" / "calls.parquet")
    assert manifest["counts"]["records"] == header_counts(log.read_bytes()).total() < BATCH_ROWS
    assert log.stat().st_size > 4 * BATCH_TEXT and parquet.metadata.num_row_groups >= 4
    digests = pl.read_parquet(tmp_path / "out" / "calls.parquet").filter(pl.col("seq") == 49)
    assert digests.height == 16 and (digests["in_len"] == 1048576).all()
