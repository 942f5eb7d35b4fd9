"""How long `snakemake -n` takes to plan the paper's grid (config/muse.yaml) as it grows.

The grid is scaled by its seeds (x1, x4, x16 seeds multiply every unlearned model and its quant
cells), which is how a user grows it. For each scale: jobs planned, wall seconds, peak memory
(max RSS of the snakemake process), and, with --profile, where the time goes (cProfile's top
functions by cumulative and own time, in an extra run at the first scale). Writes benchmarks/planning.json.

  .venv/bin/python benchmarks/planning.py [--scales 1 4 16] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from relapse.io import atomic_file, write_json

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def scaled_config(scale: int, folder: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "muse.yaml").read_text())
    cfg["seeds"] = list(range(scale))
    path = folder / f"muse_x{scale}.yaml"
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def plan(config: Path, workdir: Path, profile: Path | None = None) -> dict:
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "-n", "--cores",
           "2", "--quiet", "rules", "--configfile", str(config)]
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), *cmd]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu_before
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed on {config}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    total = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
    jobs = int(total.group(1)) if total else None
    # ru_maxrss of children is the largest child so far: a later, bigger plan raises it.
    # cpu_seconds: what the plan costs on an idle core (wall seconds include waiting for one
    # on a shared machine).
    return {"jobs": jobs, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "peak_rss_mb": round(max(peak, before) / 1024, 1)}


# Snakemake's planning phases, by the function that runs each (cumulative seconds).
PHASES = {
    "parse Snakefile + validate config": ("workflow.py", "include"),
    "build DAG (jobs from rules, wildcards, input functions)": ("dag.py", "init"),
    "  of which: rule input functions": ("rules.py", "apply_input_function"),
    "  of which: conda env specs (params of every job)": ("dag.py", "update_conda_envs"),
    "  of which: needrun": ("dag.py", "update_needrun"),
    "dry-run scheduling": ("job_scheduler.py", "schedule"),
    "  of which: per-job log formatting": ("jobs.py", "log_info"),
}


def top_functions(profile: Path, n: int = 15) -> dict:
    stats = pstats.Stats(str(profile))
    rows = {"phases_s": {}}
    for phase, (file, name) in PHASES.items():
        rows["phases_s"][phase] = round(max(
            (v[3] for (f, _, fn), v in stats.stats.items() if f.endswith(file) and fn == name),
            default=0.0), 2)
    rows["phases_s"]["relapse code, own time (input functions, params)"] = round(sum(
        v[2] for (f, _, _), v in stats.stats.items()
        if "/relapse/" in f or f.endswith((".smk", "Snakefile"))), 2)
    for key in ("cumulative", "tottime"):
        entries = sorted(stats.stats.items(), key=lambda kv: kv[1][3 if key == "cumulative" else 2],
                         reverse=True)[:n]
        rows[key] = [{"function": f"{Path(f).name}:{line}({name})", "calls": cc,
                      "own_s": round(tt, 2), "cumulative_s": round(ct, 2)}
                     for (f, line, name), (cc, nc, tt, ct, _) in entries]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "planning.json"))
    args = parser.parse_args()
    results, profile_rows = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for scale in args.scales:
            row = {"scale": scale, "seeds": scale,
                   **plan(scaled_config(scale, tmp), tmp / f"work{scale}")}
            print(json.dumps(row), flush=True)
            results.append(row)
        if args.profile:  # a separate run: cProfile slows the plan it measures
            prof = tmp / "plan.prof"
            plan(scaled_config(args.scales[0], tmp), tmp / "profiled", prof)
            profile_rows = {"scale": args.scales[0], **top_functions(prof)}
    out = {"benchmark": "snakemake -n on config/muse.yaml, seeds x scale",
           "goal": ">= 20000 jobs planned in <= 60 s",
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_avg_1m": os.getloadavg()[0]},
           "results": results, "profile": profile_rows}
    write_json(args.out, out)      # temp + rename: an interrupted run keeps the old file


if __name__ == "__main__":
    main()
