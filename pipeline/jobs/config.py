"""The job's configuration file (TOML), read with the standard library and validated up front.

Every problem is a `ConfigError`: one line naming the file and the key, exit code 2.  Paths in
the file are relative to the file's own folder, so a job behaves the same from any working
directory (cron's is ``$HOME``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import P11lensError
from reports.formats import FORMATS
from reports.thresholds import Threshold, parse_fail_on_list


class ConfigError(P11lensError):
    """A job configuration that cannot be used (exit 2)."""


KEYS = ("inputs", "output", "formats", "fail_on", "baseline", "retention_days", "window_days", "bucket", "compact_parts", "strict")

EXAMPLE = '''\
# p11lens job configuration: `p11lens job THIS_FILE` (e.g. nightly from cron).
# Paths are relative to this file's folder. See docs/jobs.md.

# Spy logs to read: globs, matched every run. Files that grew are parsed from their
# checkpoint; a rotated or replaced file is parsed from its start; the data of a file that
# disappeared stays in the dataset.
inputs = ["logs/*.log"]

# Output folder: calls/ (Parquet, partitioned by day), the stage files, the reports,
# manifest.json, runs.jsonl (one line per run) and job/ (checkpoints, lock).
output = "out"

# Reports written every run that brought new data: any of "html", "md", "txt".
formats = ["html", "md"]

# Exit 1 when one of these is crossed (the --fail-on specs of `p11lens compare`), comparing
# this run's analysis with `baseline`, or, without a baseline, with the previous run's.
fail_on = ["p95=+20%"]

# An output folder of an earlier `p11lens run` / `p11lens job` to compare against (optional).
# baseline = "baseline-out"

# Exit 1 while any input holds unreadable call records: lines shaped like spy output that
# could not be read into a call (optional; default: a warning when they first appear).
# strict = true

# Drop days older than this many days before the newest day in the dataset (optional;
# default: keep everything).
# retention_days = 90

# Analyze and report only the last N days of data (optional; default: the whole dataset).
# window_days = 7

# Time bucket of the over-time figures, e.g. "10s", "1m", "1h" (optional; default: automatic).
# bucket = "1h"
'''


@dataclass(frozen=True)
class JobConfig:
    path: Path  # the config file
    inputs: list[str]  # globs, absolute or relative to the config's folder (as written)
    output: Path  # absolute
    formats: list[str] = field(default_factory=lambda: ["html", "md"])
    fail_on: list[Threshold] = field(default_factory=list)
    fail_on_specs: list[str] = field(default_factory=list)
    baseline: Path | None = None
    retention_days: int | None = None
    window_days: int | None = None
    bucket: str | None = None
    compact_parts: int = 16  # merge a day's committed parts once it has more than this many
    strict: bool = False  # exit 1 while any input has unreadable call-record lines

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _err(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _string_list(path: Path, data: dict, key: str, default: list[str] | None = None) -> list[str]:
    value = data.get(key, default)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _err(path, f"'{key}' must be a list of non-empty strings, e.g. {key} = [\"...\"]")
    return list(value)


def _positive_int(path: Path, data: dict, key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _err(path, f"'{key}' must be a whole number >= 1, got {value!r}")
    return value


def load_config(path: str | Path) -> JobConfig:
    """Read and validate a job configuration; raise `ConfigError` (one line) on any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (write an example with `p11lens job --init {path}`)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _err(path, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise _err(path, f"not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise _err(path, f"unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(KEYS)})")
    path = path.resolve()
    base = path.parent
    if "inputs" not in data:
        raise _err(path, "'inputs' is required, e.g. inputs = [\"logs/*.log\"]")
    inputs = _string_list(path, data, "inputs")
    if "output" not in data or not isinstance(data["output"], str) or not data["output"].strip():
        raise _err(path, "'output' is required and must be a folder path, e.g. output = \"out\"")
    output = (base / data["output"]).resolve()
    formats = [f.lower() for f in _string_list(path, data, "formats", ["html", "md"])] if data.get("formats") != [] else []
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise _err(path, f"'formats': unknown format(s) {', '.join(map(repr, bad))} (choose from html, md, txt)")
    specs = _string_list(path, data, "fail_on", []) if data.get("fail_on") != [] else []
    try:
        thresholds = parse_fail_on_list(specs)
    except P11lensError as exc:
        raise _err(path, f"'fail_on': {exc}") from None
    baseline = data.get("baseline")
    if baseline is not None:
        if not isinstance(baseline, str) or not baseline.strip():
            raise _err(path, "'baseline' must be the path of an output folder")
        baseline = (base / baseline).resolve()
    bucket = data.get("bucket")
    if bucket is not None:
        if not isinstance(bucket, str):
            raise _err(path, "'bucket' must be a string such as \"1h\"")
        from pipeline.stages.latency import parse_bucket

        try:
            parse_bucket(bucket)
        except P11lensError as exc:
            raise _err(path, f"'bucket': {exc}") from None
    compact = _positive_int(path, data, "compact_parts") or 16
    strict = data.get("strict", False)
    if not isinstance(strict, bool):
        raise _err(path, f"'strict' must be true or false, got {strict!r}")
    return JobConfig(
        path=path,
        inputs=inputs,
        output=output,
        formats=formats,
        fail_on=thresholds,
        fail_on_specs=[str(t) for t in thresholds],
        baseline=baseline,
        retention_days=_positive_int(path, data, "retention_days"),
        window_days=_positive_int(path, data, "window_days"),
        bucket=bucket,
        compact_parts=compact,
        strict=strict,
    )


def write_example(path: str | Path) -> Path:
    """Write the commented example configuration; never overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path}: already exists (not overwritten)")
    try:
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(EXAMPLE)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror})") from None
    return path
