"""Build-time proof that the trimmed venv still works (run by docker/Dockerfile's builder stage).

The builder strips the native libraries and deletes parts of pyarrow; this loads what p11lens
uses and exercises the native code paths (the p11lens native engine parsing a small log into
calls.parquet, a Parquet round trip through polars and pyarrow, an SVG chart when matplotlib is a
dependency), so a bad trim fails the image build, not a user's run.
"""

import importlib.util
import io
import os
import tempfile
from pathlib import Path

import grammars  # noqa: F401
import jinja2  # noqa: F401
import pipeline  # noqa: F401
import pipeline._native  # noqa: F401  (the compiled engine, from the wheel)
import pkcs11  # noqa: F401
import polars as pl
import pyarrow.compute  # noqa: F401
import pyarrow.dataset  # noqa: F401
import pyarrow.fs  # noqa: F401
import pyarrow.parquet as pq
import pyparsing  # noqa: F401

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "t.parquet")
    pl.DataFrame({"func": ["C_Sign", "C_Sign", "C_Login"], "ms": [1, 2, 3]}).write_parquet(path)
    table = pq.read_table(path)
    assert table.num_rows == 3
    assert pl.from_arrow(table).height == 3
    assert pl.scan_parquet(path).group_by("func").agg(pl.col("ms").quantile(0.5)).collect().height == 2

# The native engine (the default of `p11lens parse`) on a two-call log: rows in calls.parquet.
LOG = """

*************** OpenSC PKCS#11 spy *****************
Loaded: "/usr/lib/softhsm/libsofthsm2.so"

0: C_GetFunctionList
2026-11-28 16:27:47.384
Returned:  0 CKR_OK

1: C_Initialize
2026-11-28 16:27:47.384
[in] pInitArgs = (nil)
Returned:  0 CKR_OK
"""
from pipeline.parse import parse_logs  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    log = os.path.join(tmp, "t.log")
    with open(log, "w") as f:
        f.write(LOG)
    parse_logs([log], Path(tmp) / "out", engine="native")
    calls = pq.read_table(os.path.join(tmp, "out", "calls.parquet"))
    assert calls.num_rows == 2, calls.num_rows
    assert calls.column("func").to_pylist() == ["C_GetFunctionList", "C_Initialize"], calls.column("func")

if importlib.util.find_spec("matplotlib") is not None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar(["C_Sign", "C_Login"], [2, 1])
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    assert "<svg" in buf.getvalue()

print("venv ok")
