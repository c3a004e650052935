"""Scheduled report jobs: ``p11lens job CONFIG.toml`` (see ``docs/jobs.md``).

Incremental (a checkpoint per input file), idempotent (a run with nothing new changes nothing)
and safe under cron (one run at a time, every write atomic, the checkpoint committed only after
the data it covers is durable).

    config.py       CONFIG.toml → `JobConfig` (validated; errors are one line, exit 2)
    lock.py         the exclusive run lock (exit 3 when held)
    state.py        checkpoints and the list of dataset parts (``OUT/job/state.json``)
    incremental.py  parse one file from its checkpoint: committed rows + a replaceable tail
    dataset.py      the hive-partitioned calls dataset ``OUT/calls/date=YYYY-MM-DD/part-*.parquet``
    run.py          one run: lock, parse, commit, analyze, report, thresholds, ``runs.jsonl``
"""
