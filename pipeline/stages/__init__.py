"""Analysis stages: pure functions from the calls LazyFrame (and options) to a LazyFrame.

One module per stage; ``pipeline.analyze`` runs them all and writes ``OUT/<name>.parquet``.
``common.derive`` adds the per-call facts they share (latency, category, family, mechanism).
"""
