"""One run's outputs replace the previous run's as a set, or not at all — on real traces, with
the real command: failed runs, runs killed with -9 (parse -j2 included), a full disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from spylogs import DATA, header_counts, p11lens

from pipeline.outputs import STAGING_PREFIX
from pipeline.engines import MIN_RANGE_BYTES
from pipeline.store import remove_stale_temps

SAMPLES = Path(__file__).parent.parent / "sample-logs"
SMOKE = SAMPLES / "smoke.log"
MIXED = SAMPLES / "mixed.log"
KEYGEN = DATA / "02-keygen-sign_0.27.1.log"
STAGE_FILES = {f"{s}.parquet" for s in ("latency", "latency_over_time", "errors", "sessions", "processes", "mechanisms", "findings")}
REPORTS = {"report.html", "report.md", "report.txt"}


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def outputs(out: Path) -> set[str]:
    """What a user sees in OUT (the hidden lock file aside)."""
    return {p.name for p in out.iterdir() if not p.name.startswith(".")}


def leftovers(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if p.name.startswith(STAGING_PREFIX) or ".tmp-" in p.name]


def run_ok(*args: str) -> subprocess.CompletedProcess:
    done = p11lens("-q", *args)
    assert done.returncode == 0, done.stderr.decode()
    return done


def one_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    err = done.stderr.decode()
    assert done.returncode == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_failed_run_leaves_the_previous_set_whole(tmp_path):
    out = tmp_path / "out"
    run_ok("run", str(MIXED), "-o", str(out))
    before = digests(out)
    junk = tmp_path / "notes.txt"
    junk.write_text("not a trace\n" * 20)
    one_line(p11lens("-q", "run", str(junk), "-o", str(out)))
    one_line(p11lens("-q", "parse", str(junk), "-o", str(out)))
    assert digests(out) == before and not leftovers(out)


def test_each_command_replaces_what_derives_from_what_it_rewrites(tmp_path):
    """New calls never sit beside old stage files or reports; a new analysis never beside old
    reports; a report joins the analysis it was made from."""
    out = tmp_path / "out"
    run_ok("run", str(MIXED), "-o", str(out))
    assert outputs(out) == {"calls.parquet", "manifest.json"} | STAGE_FILES | REPORTS
    run_ok("parse", str(SMOKE), "-o", str(out))
    assert outputs(out) == {"calls.parquet", "manifest.json"}
    assert pl.read_parquet(out / "calls.parquet").height == header_counts(SMOKE.read_bytes()).total()
    run_ok("analyze", str(out))
    assert outputs(out) == {"calls.parquet", "manifest.json"} | STAGE_FILES
    run_ok("report", str(out), "--format", "md")
    run_ok("report", str(out), "--format", "txt")
    assert outputs(out) == {"calls.parquet", "manifest.json"} | STAGE_FILES | {"report.md", "report.txt"}
    run_ok("analyze", str(out))
    assert outputs(out) == {"calls.parquet", "manifest.json"} | STAGE_FILES
    run_ok("run", str(SMOKE), "-o", str(out), "--formats", "html")
    assert outputs(out) == {"calls.parquet", "manifest.json"} | STAGE_FILES | {"report.html"}
    assert f"<code>{out}</code>" in (out / "report.html").read_text()  # the folder the user named, not the staging one
    assert not leftovers(out)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.fixture(scope="module")
def big_log(tmp_path_factory) -> Path:
    """A real trace large enough for two workers (the driver's sample traces, repeated)."""
    path = tmp_path_factory.mktemp("big") / "big.log"
    chunk = b"".join(p.read_bytes() for p in sorted(SAMPLES.glob("*.log")))
    with open(path, "wb") as fh:
        for _ in range(2 * MIN_RANGE_BYTES // len(chunk) + 2):
            fh.write(chunk)
    return path


def test_parse_j2_killed_mid_parse_leaves_the_old_set_and_the_next_run_cleans_up(tmp_path, big_log):
    out = tmp_path / "out"
    run_ok("run", str(KEYGEN), "-o", str(out))
    before = digests(out)
    # the reference engine's worker processes (the native engine's threads die with their process)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "-q", "parse", "--engine", "reference", str(big_log), "-j", "2", "-o", str(out)])
    deadline = time.time() + 120
    parts: list[Path] = []
    while time.time() < deadline and not parts and proc.poll() is None:
        parts = list(out.glob(f"{STAGING_PREFIX}*/.calls.parquet.tmp-{proc.pid}.part1"))
        time.sleep(0.05)
    assert parts, "the second worker never started its part"
    workers = _children(proc.pid)
    assert workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and not all(_gone(w) for w in workers):
        time.sleep(0.05)
    assert all(_gone(w) for w in workers), "workers outlived the killed parse"
    assert digests(out) == before  # the staging folder is hidden; OUT's set is untouched
    assert leftovers(out)
    run_ok("report", str(out), "--format", "txt", "-o", str(tmp_path / "r.txt"))  # a reader cleans up too
    assert not leftovers(out) and digests(out) == before


def test_remove_stale_temps_knows_parallel_part_names(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = [f".calls.parquet.tmp-{dead.pid}", f".calls.parquet.tmp-{dead.pid}.part1", f".calls.parquet.tmp-{dead.pid}.part12",
             f".calls.parquet.tmp-{os.getpid()}.part1", ".notes.tmp-x"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


KILL_DURING_INSTALL = """
import os, signal, sys
real, moved = os.replace, []
def replace(src, dst):  # the third file moved from the staging folder into OUT is the last
    real(src, dst)
    if ".p11lens-new-" in str(src) and ".p11lens-new-" not in str(dst):
        moved.append(dst)
        if len(moved) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from pipeline.cli import main
main(sys.argv[1:])
"""


def test_a_run_killed_while_installing_is_finished_by_the_next_command(tmp_path):
    """Killed after its commit, midway through the renames: the next command on OUT (here a
    report) installs the rest before reading, so the set is the new run's, whole."""
    out, clean = tmp_path / "out", tmp_path / "clean"
    run_ok("run", str(KEYGEN), "-o", str(out))
    run_ok("run", str(MIXED), "-o", str(clean), "--formats", "md")
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_INSTALL, "-q", "run", str(MIXED), "-o", str(out), "--formats", "md"],
                            capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert leftovers(out)  # committed, partly installed
    done = p11lens("report", str(out), "--format", "txt", "-o", "-")
    assert done.returncode == 0 and "finishing the replacement" in done.stderr.decode()
    assert outputs(out) == outputs(clean) == {"calls.parquet", "manifest.json", "report.md"} | STAGE_FILES
    for name in ["calls.parquet", *STAGE_FILES]:
        assert pl.read_parquet(out / name).equals(pl.read_parquet(clean / name)), name
    assert json.loads((out / "manifest.json").read_text())["inputs"] == json.loads((clean / "manifest.json").read_text())["inputs"]
    assert not leftovers(out)


# -- a full disk: a tmpfs of a few hundred KiB ------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """Mount a tmpfs whose size the test sets (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def make(size: int) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        return mount

    yield make
    subprocess.run(["umount", str(mount)], capture_output=True)


def _fill(disk: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free on ``disk``."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    filler.write_bytes(b"\0" * max(shutil.disk_usage(disk).free - leave, 0))


def test_full_disk_names_the_file_and_the_cause_and_keeps_the_old_set(tmp_path, tiny_disk):
    disk = tiny_disk(2 << 20)
    out = disk / "out"
    run_ok("run", str(SMOKE), "-o", str(out))
    before = digests(out)
    # room for the new calls and stage files, not for the reports: the disk fills while rendering
    sizes = tmp_path / "sizes"
    run_ok("run", str(MIXED), "-o", str(sizes), "--formats", "md")
    data = sum((sizes / n).stat().st_size for n in outputs(sizes) - REPORTS)
    _fill(disk, data + (sizes / "report.md").stat().st_size // 2 + (64 << 10))
    err = one_line(p11lens("-q", "run", str(MIXED), "-o", str(out)))
    assert f"{out}/report." in err and "No space left on device" in err and STAGING_PREFIX not in err, err
    assert digests(out) == before and not leftovers(out)
    # fuller still: the parse itself cannot write calls.parquet
    _fill(disk, 8 << 10)
    for command in ("parse", "run"):
        err = one_line(p11lens("-q", command, str(MIXED), "-o", str(out)))
        assert f"{out}/calls.parquet: cannot write (No space left on device)" in err, err
        assert digests(out) == before and not leftovers(out)
