"""A finished run's tables and job times, kept in the repository so that README and docs numbers
come from a committed run, never by hand.

    python benchmarks/run_tables.py --run DIR --config config/defenses.yaml --name defenses_run \
        --tables ranking.csv metric_robustness.csv worst_case.csv revival.csv [--seconds S]

copies DIR/results/tables/<table> into benchmarks/<name>/ and writes benchmarks/<name>/run.json:
the config and its hash, the commit the run's checkout was at, the wall seconds when given (a
runlog reports them), and per rule the number of jobs and their summed seconds from Snakemake's
`benchmark:` files (DIR/results/benchmarks/<rule>/**/*.tsv).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def rule_seconds(run: Path) -> dict[str, dict]:
    """rule -> {"jobs": n, "job_seconds": sum of the `s` column} over the run's benchmark files."""
    out: dict[str, dict] = {}
    for tsv in sorted((run / "results" / "benchmarks").glob("*/**/*.tsv")):
        rule = tsv.relative_to(run / "results" / "benchmarks").parts[0]
        seconds = float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1])   # the last (re)run's time
        got = out.setdefault(rule, {"jobs": 0, "job_seconds": 0.0})
        got["jobs"] += 1
        got["job_seconds"] = round(got["job_seconds"] + seconds, 1)
    return out


def collect(run: Path, config: str, name: str, tables: list[str],
            seconds: float | None = None) -> Path:
    from relapse.io import atomic_file, write_json

    out = ROOT / "benchmarks" / name
    out.mkdir(parents=True, exist_ok=True)
    for table in tables:
        frame = pd.read_csv(run / "results" / "tables" / table)
        with atomic_file(out / table) as tmp:
            frame.to_csv(tmp, index=False)
    commit = subprocess.run(["git", "-C", str(run), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rules = rule_seconds(run)
    write_json(out / "run.json", {
        "config": config,
        "config_sha256": hashlib.sha256((run / config).read_bytes()).hexdigest()[:16],
        "commit": commit, "wall_seconds": seconds, "machine": {"cpus": 2},
        "rules": rules, "job_seconds": round(sum(r["job_seconds"] for r in rules.values()), 1),
        "tables": tables})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, required=True, help="the run's working directory")
    parser.add_argument("--config", required=True, help="its config, relative to --run")
    parser.add_argument("--name", required=True, help="benchmarks/<name>/ gets the copies")
    parser.add_argument("--tables", nargs="+", required=True)
    parser.add_argument("--seconds", type=float, default=None, help="the run's wall seconds")
    args = parser.parse_args(argv)
    print(collect(args.run, args.config, args.name, args.tables, args.seconds))


if __name__ == "__main__":
    main()
