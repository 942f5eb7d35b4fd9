"""A run killed hard leaves Snakemake's lock behind; `make run` / `make dryrun` remove it when no
Snakemake process works in the directory (relapse.unlock), and never while one does."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from progress_watch import run_watched, snakemake_progress
from relapse.unlock import incomplete_outputs, snakemake_processes, unlock_if_stale

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests" / "data" / "small.yaml"
LOCKED = "Directory cannot be locked"


def stale_lock(workdir: Path, *outputs: str) -> Path:
    """What `kill -9` of a run leaves: lock files listing the run's files (Snakemake's format,
    one path per line) and incomplete markers for the outputs being written."""
    locks = workdir / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("\n".join(outputs) + "\n")
    (locks / "0.input.lock").write_text("\n".join(outputs) + "\n")
    incomplete = workdir / ".snakemake" / "incomplete"
    incomplete.mkdir(parents=True)
    for out in outputs:
        # Snakemake's marker: the path's url-safe base64, cut into parts that fit a file name
        # (all but the last prefixed '@')
        b64 = base64.urlsafe_b64encode(out.encode()).decode()
        parts = [b64[i:i + 254] for i in range(0, len(b64), 254)]
        marker = incomplete.joinpath(*["@" + p for p in parts[:-1]], parts[-1])
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")
    return locks


def make(*args: str) -> subprocess.CompletedProcess:
    # -o: never rebuild the venv from a test (the stamp counts as up to date)
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT),
                           "-o", ".venv/.installed", *args],
                          capture_output=True, text=True, timeout=600)


# A child that says "ready" once it runs its own code: it has exec'd, so /proc shows its own
# command line and working directory. The tests wait for that line, not for a time.
SLEEPER = "print('ready', flush=True)\nimport time\ntime.sleep(120)\n"


def started(proc: subprocess.Popen) -> subprocess.Popen:
    assert proc.stdout.readline() == "ready\n"
    return proc


def fake_snakemake(tmp_path_factory, cwd: Path) -> subprocess.Popen:
    """A process that looks like `.venv/bin/snakemake` (python running a script of that name),
    returned once it runs."""
    script = tmp_path_factory.mktemp("bin") / "snakemake"
    script.write_text(SLEEPER)
    return started(subprocess.Popen([sys.executable, str(script)], cwd=cwd,
                                    stdout=subprocess.PIPE, text=True))


@pytest.fixture
def holder(tmp_path, tmp_path_factory):
    """A process that looks like a Snakemake run working in tmp_path."""
    proc = fake_snakemake(tmp_path_factory, tmp_path)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_the_markers_decode_to_the_outputs(tmp_path):
    stale_lock(tmp_path, "results/small/data", "results/x/" + "y" * 300)
    assert incomplete_outputs(tmp_path) == ["results/small/data", "results/x/" + "y" * 300]


def test_only_snakemake_processes_in_this_directory_hold_it(tmp_path, tmp_path_factory, holder):
    # Python in this directory, but not Snakemake; Snakemake, but elsewhere. All three run.
    other = started(subprocess.Popen([sys.executable, "-c", SLEEPER], cwd=tmp_path,
                                     stdout=subprocess.PIPE, text=True))
    elsewhere = fake_snakemake(tmp_path_factory, tmp_path_factory.mktemp("elsewhere"))
    try:
        assert {h.pid for h in snakemake_processes(tmp_path)} == {holder.pid}
    finally:
        for proc in (other, elsewhere):
            proc.kill()
            proc.wait()


def test_a_live_run_keeps_its_lock(tmp_path, holder):
    locks = stale_lock(tmp_path, "results/tables/metrics.parquet")
    messages = []
    assert not unlock_if_stale(tmp_path, echo=messages.append)
    assert (locks / "0.output.lock").exists()
    assert f"pid {holder.pid}" in "\n".join(messages)
    proc = make("dryrun", f"WORKDIR={tmp_path}")
    assert proc.returncode != 0
    assert "locked by a running Snakemake; not unlocking" in proc.stdout
    assert (locks / "0.output.lock").exists()


def test_make_dryrun_removes_a_stale_lock(tmp_path):
    locks = stale_lock(tmp_path, "results/tables/metrics.parquet")
    proc = make("dryrun", f"WORKDIR={tmp_path}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "removed a stale Snakemake lock (0.input.lock, 0.output.lock)" in out
    assert "1 output(s) of that run are incomplete and will be redone" in out
    assert LOCKED not in out
    assert not list(locks.glob("*.lock"))
    assert "Job stats:" in out


def test_a_killed_run_resumes_without_unlock(tmp_path):
    """The real thing: Snakemake itself refuses to run into a stale lock; through the Makefile's
    steps the run goes ahead and redoes the half-written output."""
    target = "results/small/data"
    stale_lock(tmp_path, target)
    (tmp_path / target).mkdir(parents=True)
    (tmp_path / target / "forget.parquet").write_text("half-written")
    run = [sys.executable, "-m", "snakemake", target, "-s", str(ROOT / "Snakefile"),
           "-d", str(tmp_path), "--workflow-profile", str(ROOT / "workflow/profiles/default"),
           "--cores", "1", "--configfile", str(SMALL)]
    before = run_watched(run, stall_s=600, progress=snakemake_progress(tmp_path))
    assert before.returncode != 0 and LOCKED in before.stdout + before.stderr

    assert unlock_if_stale(tmp_path, echo=print)
    after = run_watched(run, stall_s=600, progress=snakemake_progress(tmp_path),
                        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                                                   f"{os.environ['PATH']}"})
    assert after.returncode == 0, (after.stdout + after.stderr)[-3000:]
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / target / "forget.parquet")) > 0
    assert not incomplete_outputs(tmp_path)
