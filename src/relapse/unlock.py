"""Remove a stale Snakemake lock before a run, so that a run killed hard (kill -9, OOM, a lost
SSH session) does not make the next `make run` stop with "Directory cannot be locked".

A lock is stale when no Snakemake process on this machine works in the directory: Snakemake
writes `.snakemake/locks/` at the start of a run and deletes it at the end, so only a killed run
leaves it behind. A live run's lock is never touched; the user is told which process holds it.
Outputs that the killed run left half-written are marked in `.snakemake/incomplete/`; they are
reported here, and `rerun-incomplete` (both profiles) redoes them.

    python -m relapse.unlock [--directory DIR]     # exit 0: unlocked or nothing to do; 1: held
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str


def _is_snakemake(argv: list[str]) -> bool:
    # `snakemake ...`, `python .venv/bin/snakemake ...` and `python -m snakemake ...`
    return any(Path(arg).name == "snakemake" for arg in argv[:3])


def snakemake_processes(directory: str | os.PathLike) -> list[Holder]:
    """Snakemake processes on this machine that could hold `directory`'s lock: those whose
    working directory it is (Snakemake changes into its --directory). Without /proc (macOS),
    every Snakemake process counts: better a lock left alone than a live run's lock removed."""
    directory = Path(directory).resolve()
    proc = Path("/proc")
    if not (proc / "self" / "cwd").exists():
        return _any_snakemake_from_ps()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not _is_snakemake(argv):
                continue
            cwd = Path(os.readlink(entry / "cwd")).resolve()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue   # gone, or another user's (it cannot hold this user's lock)
        if cwd == directory:
            found.append(Holder(int(entry.name), " ".join(a for a in argv if a)))
    return sorted(found, key=lambda h: h.pid)


def _any_snakemake_from_ps() -> list[Holder]:
    try:
        out = subprocess.run(["ps", "-axo", "pid=,command="], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [Holder(-1, "(cannot list processes: ps failed)")]
    holders = []
    for line in out.splitlines():
        pid, _, command = line.strip().partition(" ")
        if pid.isdigit() and int(pid) != os.getpid() and _is_snakemake(command.split()):
            holders.append(Holder(int(pid), command))
    return holders


def incomplete_outputs(directory: str | os.PathLike) -> list[str]:
    """The outputs Snakemake marked as being written when the run stopped (its markers are the
    url-safe base64 of the path, split into path parts prefixed '@' when long)."""
    root = Path(directory) / ".snakemake" / "incomplete"
    if not root.is_dir():
        return []
    out = []
    for marker in root.rglob("*"):
        if not marker.is_file() or marker.name == "migration_underway":
            continue
        encoded = "".join(part.lstrip("@") for part in marker.relative_to(root).parts)
        try:
            out.append(base64.urlsafe_b64decode(encoded).decode())
        except ValueError:
            out.append(f"(unreadable marker {marker.name})")
    return sorted(out)


def unlock_if_stale(directory: str | os.PathLike = ".", echo=print) -> bool:
    """Remove `directory`'s Snakemake lock if no Snakemake process holds it. Returns False (and
    leaves the lock) when one may; True when the directory is free to run in."""
    locks = Path(directory) / ".snakemake" / "locks"
    lock_files = sorted(p.name for p in locks.glob("*")) if locks.is_dir() else []
    if not lock_files:
        return True
    holders = snakemake_processes(directory)
    if holders:
        echo(f"relapse: {Path(directory).resolve()} is locked by a running Snakemake; not "
             "unlocking. Wait for it, or stop it first:")
        for holder in holders:
            echo(f"  pid {holder.pid}: {holder.command[:200]}")
        return False
    # What `snakemake --unlock` does (Persistence.cleanup_locks), without parsing the workflow
    # first: that takes seconds, and fails when the config has an error.
    shutil.rmtree(locks)
    echo(f"relapse: removed a stale Snakemake lock ({', '.join(lock_files)}) left by a run that "
         "was killed; no Snakemake process is running here.")
    incomplete = incomplete_outputs(directory)
    if incomplete:
        shown = ", ".join(incomplete[:5]) + (f" and {len(incomplete) - 5} more"
                                             if len(incomplete) > 5 else "")
        echo(f"relapse: {len(incomplete)} output(s) of that run are incomplete and will be "
             f"redone (rerun-incomplete): {shown}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relapse.unlock", description=__doc__)
    parser.add_argument("--directory", "-d", default=".")
    args = parser.parse_args(argv)
    return 0 if unlock_if_stale(args.directory) else 1


if __name__ == "__main__":
    sys.exit(main())
