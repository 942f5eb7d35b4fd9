"""Run Snakemake with its full output in a log file and a compact progress line per finished
job on the terminal (`make run`): Snakemake prints about 15 lines per job, which buries the few
that matter (how far the run is, what failed).

    python -m relapse.runlog LOG -- snakemake ARGS...

Every line of the command's output (stdout and stderr together) is appended to LOG after a
timestamped header. The terminal gets: the number of jobs to run, one line per finished job
(`[12/153  8%] quantize`), the lines that name an error, and Snakemake's closing lines. On failure
it also prints the last lines of LOG, and the exit status is the command's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Iterable

FINISHED = re.compile(r"^Finished jobid: \S+ \(Rule: (?P<rule>[^)]+)\)")
STEPS = re.compile(r"^(?P<done>\d+) of (?P<total>\d+) steps \((?P<pct>[^)]*)\) done")
TOTAL = re.compile(r"^total\s+(?P<n>\d+)\s*$")
# Lines worth seeing as they come: failures (Snakemake's and a job's), the config check's
# message, and a no-op run's one line.
SHOW = re.compile(r"Error|error:|Exception|invalid config|Nothing to be done|"
                  r"Exiting because|check log file|MissingInput|cannot be locked|Traceback")
TAIL_LINES = 40


def compact(lines: Iterable[str]) -> Iterable[str]:
    """The terminal's lines for Snakemake output `lines` (each without its newline)."""
    rule = None
    announced = False
    for line in lines:
        if (m := TOTAL.match(line)) and not announced:
            announced = True
            yield f"snakemake: {m['n']} jobs to run"
        elif m := FINISHED.match(line):
            rule = m["rule"]
        elif m := STEPS.match(line):
            width = len(m["total"])
            yield f"[{int(m['done']):>{width}}/{m['total']} {m['pct']:>4}] {rule or ''}".rstrip()
            rule = None
        elif SHOW.search(line):
            yield line


def run(log: Path, command: list[str], out: IO[str] = sys.stdout) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S %Z')} {' '.join(command)}\n")
        handle.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)

        def lines():
            for raw in proc.stdout:
                handle.write(raw)
                handle.flush()
                line = raw.rstrip("\n")
                tail.append(line)
                del tail[:-TAIL_LINES]
                yield line

        for shown in compact(lines()):
            print(shown, file=out, flush=True)
        status = proc.wait()
    if status:
        print(f"\nfailed (exit {status}); the last lines of {log}:", file=out)
        print("\n".join(tail), file=out, flush=True)
    else:
        print(f"full log: {log}", file=out, flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m relapse.runlog LOG -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return run(Path(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main())
