"""Analysis stages: pure functions over Polars LazyFrames.

One module per stage; ``pipeline.analyze`` runs them all and writes ``OUT/<name>.parquet``.
``common.derive_batches`` reads the calls in bounded batches and adds the per-call facts the
stages share (latency, category, family, mechanism, session life); each stage reduces the
batches to a small summary (a ``common.Reduction``: one function per batch, one to combine)
and computes its output from the combined summaries.
"""
