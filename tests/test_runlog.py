"""`make run`'s terminal output (relapse.runlog): one line per finished job and the error lines
from Snakemake's output, the whole output in the log, and Snakemake's exit status kept. The
inputs are real Snakemake 9 output (tests/data/snakemake_output/, a 2-job run of small.yaml and
the same run failing in train_tokenizer)."""

from __future__ import annotations

import io
import sys

from relapse.runlog import compact, run


def snippet(root, name):
    return (root / "tests" / "data" / "snakemake_output" / f"{name}.txt").read_text()


def test_one_line_per_finished_job(root):
    text = snippet(root, "ok")
    assert list(compact(text.splitlines())) == [
        "snakemake: 2 jobs to run",
        "[1/2  50%] prepare_data",
        "[2/2 100%] train_tokenizer",
    ]


def test_a_failure_shows_its_rule_and_log(root):
    shown = list(compact(snippet(root, "failed").splitlines()))
    assert "Error in rule train_tokenizer:" in shown
    assert any("logs/train_tokenizer/small.log" in line for line in shown)
    assert any(line.startswith("Exiting because a job execution failed") for line in shown)
    # the job's resources and wildcards stay in the log only
    assert not any("resources:" in line or "wildcards:" in line for line in shown)


def echo_command(text, status):
    """A command that prints `text` and exits with `status`, as Snakemake would."""
    return [sys.executable, "-c",
            f"import sys; sys.stdout.write({text!r}); sys.stdout.flush(); sys.exit({status})"]


def test_run_keeps_the_whole_output_in_the_log(root, tmp_path):
    text = snippet(root, "ok")
    log = tmp_path / "logs" / "make-run.log"
    out = io.StringIO()
    assert run(log, echo_command(text, 0), out=out) == 0
    assert text in log.read_text()
    assert "[2/2 100%] train_tokenizer" in out.getvalue()
    assert "localrule" not in out.getvalue()

    # a second run appends, under its own header
    assert run(log, echo_command(text, 0), out=io.StringIO()) == 0
    assert log.read_text().count(text) == 2 and log.read_text().count("\n==== ") == 2


def test_a_failed_run_exits_non_zero_and_shows_the_log_tail(root, tmp_path):
    text = snippet(root, "failed")
    log = tmp_path / "make-run.log"
    out = io.StringIO()
    assert run(log, echo_command(text, 1), out=out) == 1
    shown = out.getvalue()
    assert f"failed (exit 1); the last lines of {log}:" in shown
    # the tail: the log's last lines, down to Snakemake's final message
    assert shown.rstrip().endswith("At least one job did not complete successfully.")
    assert "(command exited with non-zero exit code)" in shown
