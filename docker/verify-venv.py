"""Build-time proof that the trimmed venv still works (run by docker/Dockerfile's builder stage).

The builder strips the native libraries and deletes parts of pyarrow; this loads what p11lens
uses and exercises the native code paths (Parquet round trip through polars and pyarrow, an SVG
chart when matplotlib is a dependency), so a bad trim fails the image build, not a user's run.
"""

import importlib.util
import io
import os
import tempfile

import grammars  # noqa: F401
import jinja2  # noqa: F401
import pipeline  # noqa: F401
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
