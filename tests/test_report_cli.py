"""`p11lens report` and `p11lens run` as a user or cron job runs them."""

from __future__ import annotations

import shutil

import subprocess

from spylogs import DATA, p11lens
from test_report_runs import SAMPLES, run_dir

from pipeline.cli import main


def inproc(capsysbinary, *args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (no interpreter start-up), with what it wrote to stdout/stderr."""
    code = main(list(args))
    out = capsysbinary.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def one_line_error(result, needle):
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert needle in err


def test_run_writes_three_reports_and_names_them(tmp_path):
    logs = [str(p) for p in SAMPLES if p.name in ("smoke.log", "errors.log")] or [str(DATA / "02-keygen-sign_0.27.1.log")]
    out = tmp_path / "out"
    result = p11lens("run", *logs, "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    files = [out / "report.html", out / "report.md", out / "report.txt"]
    assert result.stdout.decode().strip().splitlines()[-1] == "reports: " + " ".join(map(str, files))
    assert all(f.stat().st_size > 1000 for f in files)
    for stage in ("calls", "latency", "errors", "sessions", "findings"):
        assert (out / f"{stage}.parquet").exists()
    err = result.stderr.decode()
    assert "parsing" in err and "analyzing" in err and "rendering" in err  # progress on stderr


def test_run_quiet_and_formats(tmp_path, capsysbinary):
    result = inproc(capsysbinary, "-q", "run", str(DATA / "02-keygen-sign_0.27.1.log"), "-o", str(tmp_path), "--formats", "md")
    assert result.returncode == 0 and result.stderr == b""
    assert (tmp_path / "report.md").exists() and not (tmp_path / "report.html").exists()
    one_line_error(inproc(capsysbinary, "run", str(DATA / "02-keygen-sign_0.27.1.log"), "-o", str(tmp_path), "--formats", "pdf"), "--formats")


def test_run_missing_log(tmp_path, capsysbinary):
    one_line_error(inproc(capsysbinary, "run", str(tmp_path / "nope.log"), "-o", str(tmp_path / "o")), "no such file")


def test_report_formats_and_destinations(tmp_path, capsysbinary):
    out = tmp_path / "out"
    shutil.copytree(run_dir("keygen"), out)
    result = inproc(capsysbinary, "report", str(out))
    assert result.returncode == 0 and result.stdout.decode().strip() == str(out / "report.html")
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    result = inproc(capsysbinary, "report", str(out), "-o", str(tmp_path / "r.md"))  # format from the extension
    assert (tmp_path / "r.md").read_text().startswith("## p11lens report")
    result = inproc(capsysbinary, "report", str(out), "--format", "txt", "-o", "-")
    assert result.returncode == 0 and result.stdout.decode().startswith("p11lens report:")


def test_report_errors(tmp_path, capsysbinary):
    one_line_error(inproc(capsysbinary, "report", str(tmp_path / "missing")), "no such output folder")
    parsed = tmp_path / "parsed"
    assert inproc(capsysbinary, "parse", str(DATA / "02-keygen-sign_0.27.1.log"), "-o", str(parsed)).returncode == 0
    one_line_error(inproc(capsysbinary, "report", str(parsed)), "run `p11lens analyze")
    bad = p11lens("report", str(run_dir("keygen")), "--format", "pdf")  # argparse: usage + one error line
    assert bad.returncode == 2 and "invalid choice: 'pdf'" in bad.stderr.decode()
    assert "Traceback" not in bad.stderr.decode()
