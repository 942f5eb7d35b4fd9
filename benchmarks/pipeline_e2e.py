"""Time the default pipeline end to end: cold (empty results), then a no-op rerun.

    .venv/bin/python benchmarks/pipeline_e2e.py [--config config/config.yaml] [--cores 2]

Runs in a scratch work directory (or a new one given with --keep), so the repository's own
results/ are untouched, and writes
benchmarks/pipeline_e2e.json: wall seconds per phase, job counts, and the per-rule sums of
Snakemake's own job benchmarks (so start-up cost per job is visible).
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relapse.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def run(workdir: Path, config: Path, cores: int, dry: bool = False) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--cores", str(cores), "--configfile", str(config)] + (["-n"] if dry else [])
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"snakemake failed:\n{proc.stderr[-3000:]}")
    return time.time() - start, proc.stdout + proc.stderr


def rule_seconds(workdir: Path) -> dict[str, dict[str, float]]:
    out: dict[str, list[float]] = collections.defaultdict(list)
    for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(workdir / "results" / "benchmarks").parts[0]
        with open(tsv) as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        out[rule].append(float(row["s"]))
    return {rule: {"jobs": len(v), "total_s": round(sum(v), 1), "mean_s": round(sum(v) / len(v), 2)}
            for rule, v in sorted(out.items())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "pipeline_e2e.json"))
    parser.add_argument("--keep", default=None,
                        help="run in this new, empty directory and keep it (to look at the "
                             "results) instead of a scratch directory")
    args = parser.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True)      # refuses an existing directory: a cold run
    with tempfile.TemporaryDirectory(prefix="relapse-bench-") as tmp:
        workdir = Path(args.keep).resolve() if args.keep else Path(tmp)
        cold, log = run(workdir, Path(args.config).resolve(), args.cores)
        noop, noop_log = run(workdir, Path(args.config).resolve(), args.cores)
        result = {
            "config": os.path.relpath(args.config, ROOT), "cores": args.cores,
            "cpu": platform.processor() or platform.machine(), "cpus_visible": os.cpu_count(),
            "cold_s": round(cold, 1), "noop_s": round(noop, 1),
            "noop_did_nothing": "Nothing to be done" in noop_log,
            "rules": rule_seconds(workdir),
        }
    write_json(args.out, result)      # temp + rename: an interrupted run keeps the old file
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
