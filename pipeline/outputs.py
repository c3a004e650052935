"""One command's outputs replace the previous ones in an output folder as a set, or not at all.

An output folder OUT holds one *set*: ``calls.parquet`` and ``manifest.json`` (parse), the
stage files (analyze) and the reports, each derived from the ones before it.  A failed or
killed run must not leave new calls beside old reports, nor old reports beside new calls.
So a command builds everything it writes in a staging folder and swaps it in (`replacing`):

1. **build** into ``OUT/.p11lens-new-<pid>-<n>/``.  It is inside OUT, not beside it: same
   filesystem (renames are atomic), and OUT may be a mount point (the Docker image's
   ``/reports``) whose parent is another filesystem or not writable.  A failure here (full
   disk, bad input, a bug) or a kill leaves OUT as it was; the staging folder is removed by
   this run, or by the next one when this one was killed.
2. **commit**: ``.commit.json`` in the staging folder lists the files to install and the
   previous set's files that the new set makes stale (stage files and reports derived from
   older calls or stages, when the new set does not rewrite them).  It is written atomically
   and fsynced: from then on the new set is the one that counts.
3. **install** under a lock (``OUT/.p11lens-lock``, so that two runs into one folder install
   one after the other, never interleaved): rename each file into OUT, delete the stale ones,
   fsync OUT, remove the staging folder.  A run killed during these renames (microseconds)
   leaves a committed staging folder of a dead pid; the next p11lens command on OUT (parse,
   run, analyze, report, job) finishes the install before it reads or writes anything
   (`recover`), and a staging folder that was never committed is deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import InputError, OutputError
from pipeline.parse import source_label
from pipeline.store import ensure_dir, fsync_dir, process_alive, remove_stale_temps, write_json

log = logging.getLogger(__name__)

STAGING_PREFIX = ".p11lens-new-"
JOURNAL = ".commit.json"
LOCK = ".p11lens-lock"
_STAGING = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-\d+")
_PLAIN_NAME = re.compile(r"[\w.-]+\.parquet")  # a stage file a manifest may list (never a path)
_serial = itertools.count()  # staging folders of one process (tests run several commands in one)


@contextlib.contextmanager
def replacing(out: Path, *, keep_derived: bool = False, create: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder for a command's outputs; when the block succeeds, they
    replace OUT's as a set (stage files and reports of the previous set that the new set does
    not rewrite are removed with them, unless ``keep_derived``: a report added to the same
    stage outputs).  ``create``: make OUT if missing, else it must exist (analyze, report)."""
    out = Path(out)
    if source_label(str(out)) != str(out):
        raise OutputError(f"output folder {source_label(str(out))}: its name is not UTF-8, which Arrow and Polars cannot open")
    if not create and not out.is_dir():
        raise InputError(f"{out}: no such output folder (run `p11lens run LOG -o {out}` first)")
    ensure_dir(out)
    recover(out)
    stage = out / f"{STAGING_PREFIX}{os.getpid()}-{next(_serial)}"
    try:
        stage.mkdir()
        yield stage
        _commit(out, stage, keep_derived)
    except BaseException as exc:
        if (stage / JOURNAL).is_file():  # committed: the next run finishes the install
            raise
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OutputError):  # name the file as the user knows it, and what became of OUT
            raise OutputError(f"{str(exc).replace(str(stage), str(out))}; {out} is unchanged") from None
        raise


def recover(out: Path) -> None:
    """Finish the install of a killed run's committed set; delete its uncommitted staging
    folders and temporary files.  Runs of live pids are left alone, and a folder with nothing
    to recover is only read (``report OUT -o FILE`` may read a folder it cannot write)."""
    out = Path(out)
    dead = [stage for stage in sorted(out.glob(f"{STAGING_PREFIX}*"))
            if (pid := _STAGING.fullmatch(stage.name)) and not process_alive(int(pid[1]))]
    if dead:
        with _locked(out):
            for stage in dead:
                _finish_or_drop(out, stage)
    remove_stale_temps(out)


def _finish_or_drop(out: Path, stage: Path) -> None:
    journal = stage / JOURNAL
    if not journal.is_file():
        shutil.rmtree(stage, ignore_errors=True)
        return
    log.warning("%s: finishing the replacement of its outputs that an interrupted run had committed", out)
    try:
        plan = json.loads(journal.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{journal}: unreadable ({exc}); move {stage} away") from None
    _install(out, stage, plan)


def derived_outputs(out: Path) -> set[str]:
    """Names of the outputs in OUT derived from its calls: stage files and reports (those the
    stages know now, and any other stage file OUT's manifest lists, by an older version)."""
    from pipeline.analyze import OUTPUTS
    from reports.render import EXTENSIONS

    names = {f"{stage}.parquet" for stage in OUTPUTS} | {f"report{ext}" for ext in EXTENSIONS.values()}
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):  # no manifest, or not ours
        listed = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["outputs"].values()
        names |= {name for name in listed if isinstance(name, str) and _PLAIN_NAME.fullmatch(name)}
    names.discard("calls.parquet")
    return names


def report_of(stage: Path, out: Path):
    """The report of a staged set, naming OUT as its folder (the staging folder is transient)."""
    from reports.model import load_report

    report = load_report(stage)
    report.run = dataclasses.replace(report.run, out_dir=str(out))
    return report


def _commit(out: Path, stage: Path, keep_derived: bool) -> None:
    names = sorted(p.name for p in stage.iterdir() if p.is_file() and not p.name.startswith("."))
    fsync_dir(stage)
    with _locked(out):
        stale = set() if keep_derived else derived_outputs(out) - set(names)
        plan = {"install": names, "remove": sorted(stale)}
        write_json(stage / JOURNAL, plan)
        fsync_dir(stage)
        _install(out, stage, plan)


def _install(out: Path, stage: Path, journal: dict) -> None:
    """Move a committed set into OUT; safe to repeat after a kill (files already moved are gone
    from the staging folder, files already removed are gone from OUT)."""
    try:
        for name in journal["install"]:
            with contextlib.suppress(FileNotFoundError):
                os.replace(stage / name, out / name)
        for name in journal["remove"]:
            (out / name).unlink(missing_ok=True)
        fsync_dir(out)
    except OSError as exc:
        raise OutputError(
            f"{out}: could not finish installing the new outputs ({exc.strerror or exc}); "
            "the next p11lens command on this folder finishes it"
        ) from None
    shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    try:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{out / LOCK}: cannot open ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
