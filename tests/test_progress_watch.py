"""The progress-bounded runner the workflow and SLURM tests use instead of a wall-clock timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from progress_watch import Stalled, run_watched, running_jobs, snakemake_progress

SNAKEMAKE_OUTPUT = """\
[Tue Dec  1 10:00:00 2026]
rule prepare_data:
    output: results/small/data
    jobid: 1
    wildcards: bench=small
    resources: tmpdir=/tmp

Job 1 has been submitted with SLURM jobid 41 (log: x).
[Tue Dec  1 10:00:01 2026]
rule train_reference:
    output: results/small/reference/target
    jobid: 3
    wildcards: bench=small, role=target

Job 3 has been submitted with SLURM jobid 43 (log: y).
[Tue Dec  1 10:00:02 2026]
Finished jobid: 1 (Rule: prepare_data)
"""


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_running_jobs_are_the_started_and_unfinished_ones():
    assert running_jobs(SNAKEMAKE_OUTPUT) == [
        "train_reference (jobid 3, wildcards bench=small, role=target, SLURM jobid 43)"]
    assert running_jobs(SNAKEMAKE_OUTPUT + "Finished jobid: 3 (Rule: train_reference)\n") == []


class VirtualClock:
    """run_watched's clock, advanced by the test only: the checks below hold however slowly a
    loaded machine starts and runs the child processes."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_run_that_keeps_progressing_outlives_the_stall_bound():
    """Ten lines 0.25 s apart on the clock (2.5 s in all) under a 1 s bound: a bound on the whole
    run's time would stop it. The child prints a line each time it is asked; the clock moves on
    0.25 s only once the last answer is in, so the gaps are exactly 0.25 s on any machine."""
    clock, child = VirtualClock(), {"asked": 0}

    def progress(text):
        if len(text.split()) == child["asked"] < 10:      # answered: 0.25 s pass, ask again
            clock.now += 0.25
            child["proc"].stdin.write("next\n")
            child["proc"].stdin.flush()
            child["asked"] += 1
        return len(text)

    proc = run_watched(python("import sys\nfor i in range(10):\n    sys.stdin.readline()\n"
                              "    print(i, flush=True)"),
                       stall_s=1.0, poll_s=0.05, clock=clock, progress=progress,
                       started=lambda p: child.update(proc=p), stdin=subprocess.PIPE)
    assert proc.returncode == 0
    assert proc.stdout.split() == [str(i) for i in range(10)]
    assert clock.now == 2.5 > 1.0


def test_a_stalled_run_is_stopped_and_names_the_running_job(tmp_path):
    """The child writes Snakemake's output and then nothing: once all of it is in, each poll
    moves the clock 0.5 s, so the 1.5 s bound is passed after a few polls, never before the
    output (however slowly the child starts)."""
    pid_file = tmp_path / "grandchild.pid"
    code = (f"import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            f"sys.stderr.write({SNAKEMAKE_OUTPUT!r}); sys.stderr.flush()\n"
            f"time.sleep(300)")
    clock = VirtualClock()

    def progress(text):
        if text.endswith(SNAKEMAKE_OUTPUT):
            clock.now += 0.5
        return len(text)

    with pytest.raises(Stalled) as err:
        run_watched(python(code), stall_s=1.5, poll_s=0.05, grace_s=30, clock=clock,
                    progress=progress)
    assert clock.now <= 2.5            # stopped at the first poll past the bound (2 s)
    message = str(err.value)
    assert "made no progress for 2 s" in message
    assert "running: train_reference (jobid 3, wildcards bench=small, role=target, " \
           "SLURM jobid 43)" in message
    # the whole process group went down, the job's own children included (SIGINT ends a
    # sleeping Python at once; the bound only keeps a failure from hanging)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild survived")


def test_snakemake_progress_counts_job_events_and_log_growth(tmp_path):
    progress = snakemake_progress(tmp_path)
    first = progress(SNAKEMAKE_OUTPUT)
    assert progress(SNAKEMAKE_OUTPUT) == first
    assert progress(SNAKEMAKE_OUTPUT + "Finished jobid: 3 (Rule: train_reference)\n") != first
    # status-check chatter is not progress
    assert progress(SNAKEMAKE_OUTPUT + "Checking status of 1 jobs.\n" * 5) == first
    log = tmp_path / "logs" / "train_reference" / "small.log"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1\n")
    second = progress(SNAKEMAKE_OUTPUT)
    assert second != first
    log.write_text("epoch 1\nepoch 2\n")
    assert progress(SNAKEMAKE_OUTPUT) != second
