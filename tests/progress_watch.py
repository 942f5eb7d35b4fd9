"""Run a long command with a bound on progress, not on wall-clock time.

A fixed wall-clock bound on a whole workflow run kills a run that is progressing, only slowly,
on a loaded machine (CI shares its cores). Here a run is stopped only when its progress signal
has not changed for `stall_s` seconds; the error then names the jobs that were running.

    proc = run_watched(cmd, stall_s=600, progress=snakemake_progress(workdir))
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Hashable
from pathlib import Path

STARTED = re.compile(r"^\s*(?:local)?rule (\w+):\n(?P<body>(?:[ \t]+\S.*\n?)*)", re.M)
FINISHED = re.compile(r"Finished jobid: (\d+)")
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


class Stalled(AssertionError):
    """The command made no progress for too long (an AssertionError, so pytest reports it as a
    failed test with its message)."""


def running_jobs(text: str) -> list[str]:
    """Snakemake jobs that started (a `rule NAME:` block with its jobid) and have not finished,
    each as 'NAME (jobid N, wildcards ..., SLURM jobid M)'."""
    finished = set(FINISHED.findall(text))
    slurm = dict(SUBMITTED.findall(text))
    jobs = {}
    for match in STARTED.finditer(text):
        body = match.group("body")
        jobid = re.search(r"jobid: (\d+)", body)
        if not jobid or jobid.group(1) in finished:
            continue
        wildcards = re.search(r"wildcards: (.*)", body)
        parts = [f"jobid {jobid.group(1)}"]
        if wildcards:
            parts.append(f"wildcards {wildcards.group(1).strip()}")
        if jobid.group(1) in slurm:
            parts.append(f"SLURM jobid {slurm[jobid.group(1)]}")
        jobs[jobid.group(1)] = f"{match.group(1)} ({', '.join(parts)})"
    return list(jobs.values())


def snakemake_progress(workdir: Path | None = None) -> Callable[[str], Hashable]:
    """Progress of a Snakemake run: the jobs it started and finished (from its output) and the
    size of every job log under workdir/logs (a job that writes is a job that works)."""

    def progress(text: str) -> Hashable:
        events = (len(STARTED.findall(text)), len(FINISHED.findall(text)))
        logs = ()
        if workdir is not None and (Path(workdir) / "logs").is_dir():
            logs = tuple(sorted((str(p), p.stat().st_size)
                                for p in (Path(workdir) / "logs").rglob("*") if p.is_file()))
        return events, logs

    return progress


def run_watched(cmd, *, stall_s: float, progress: Callable[[str], Hashable] | None = None,
                poll_s: float = 2.0, grace_s: float = 30.0, clock=time.monotonic,
                started: Callable[[subprocess.Popen], None] | None = None,
                **popen) -> subprocess.CompletedProcess:
    """Run `cmd` to completion unless `progress(output so far)` stays the same for `stall_s`
    seconds; then interrupt it (SIGINT to its process group, SIGKILL after `grace_s`) and raise
    Stalled naming the running jobs. Default progress: the output grew. `started` receives the
    process (to stop it from elsewhere, e.g. when it runs in a thread)."""
    progress = progress or (lambda text: len(text))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, text=True,
                                start_new_session=True, **popen)
        if started:
            started(proc)
        start = last_change = clock()
        state, wait = None, 0.02
        try:
            while proc.poll() is None:
                text = _read(out) + _read(err)
                now_state = progress(text)
                if now_state != state:
                    state, last_change = now_state, clock()
                elif clock() - last_change > stall_s:
                    stop(proc, grace_s)
                    text = _read(out) + _read(err)
                    running = running_jobs(text) or ["(no Snakemake job running)"]
                    raise Stalled(
                        f"{Path(str(cmd[0])).name} made no progress for {stall_s:.0f} s "
                        f"(stopped after {clock() - start:.0f} s in all); running: "
                        f"{'; '.join(running)}\n--- last output ---\n{text[-4000:]}")
                # short first polls: a dry run that ends in a second is not held up
                time.sleep(wait)
                wait = min(poll_s, wait * 2)
        finally:
            if proc.poll() is None:
                stop(proc, grace_s)
        return subprocess.CompletedProcess(proc.args, proc.returncode, _read(out), _read(err))


def _read(handle) -> str:
    handle.flush()
    handle.seek(0)
    return handle.read()


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGINT first (Snakemake then cancels its cluster jobs and cleans up), SIGKILL after."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
