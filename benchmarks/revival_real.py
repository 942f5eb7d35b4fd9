"""[revival-real]: the outcome of config/smollm2-full.yaml, collected from a finished run.

    snakemake --workflow-profile workflow/profiles/default --cores 2 \
        --configfile config/smollm2-full.yaml
    .venv/bin/python benchmarks/revival_real.py [--results results] [--out benchmarks/revival_real.json]

Reads the run's tables (results/tables/{retained,selection,main}.csv, metrics.parquet for the
provenance), the selected models' survival diagnostics and Snakemake's per-job benchmarks, and
writes one JSON: knowledge retained (KnowMem_f and VerbMem_f, unlearned / target at matched
quant, % with 95% CIs) per method and for the mean over the GDR/KLR methods at every precision;
the target's own KnowMem_f per quant (a 4-bit format that costs the target its facts makes a
ratio meaningless); the median survival diagnostics per quant; the selection; the wall time per
rule; and the config hash, commit and versions the tables carry.
"""

from __future__ import annotations

import argparse
import collections
import csv
import glob
import math
import os
import time
from pathlib import Path

import pandas as pd

from relapse.io import read_parquet_metadata, write_json

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"full": 21.0, "4-bit": 83.0}      # seed paper (arXiv 2410.16454): KnowMem_f retained, %
MEASURES = ("KnowMem_f", "VerbMem_f")


def _num(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value, 2)


def retained(tables: Path) -> dict:
    frame = pd.read_csv(tables / "retained.csv").fillna({"hp": ""})
    quants = [c[: -len(" KnowMem_f")] for c in frame.columns
              if c.endswith(" KnowMem_f") and " lo" not in c]
    out = {}
    for row in frame.to_dict("records"):
        cells = {}
        for quant in quants:
            cells[quant] = {m: {"value": _num(row[f"{quant} {m}"]),
                                "ci": [_num(row[f"{quant} {m} lo"]), _num(row[f"{quant} {m} hi"])]}
                            for m in MEASURES if f"{quant} {m}" in row}
        out[f"{row['method']}" + (f" ({row['hp']})" if row["hp"] else "")] = cells
    return {"quants": quants, "rows": out}


def target_scores(tables: Path) -> dict:
    """The target's and retrain's own KnowMem_f / KnowMem_r / VerbMem_f per quant (main table)."""
    frame = pd.read_csv(tables / "main.csv").fillna({"hp": ""})
    out = {}
    for row in frame[frame.method.isin(["target", "retrain"])].to_dict("records"):
        out[row["method"]] = {c[: -len(" KnowMem_f")]: {
            m: _num(row[c.replace("KnowMem_f", m)])
            for m in ("KnowMem_f", "KnowMem_r", "VerbMem_f", "KnowMem_world")
            if c.replace("KnowMem_f", m) in row}
            for c in frame.columns if c.endswith(" KnowMem_f")}
    return out


def diagnostics(results: Path, selection: pd.DataFrame) -> dict:
    """Median over decoder Linear modules, seeds and the selected models of each method, per
    quant: Δ/step, same-code fraction, update survival."""
    frames = []
    for row in selection.itertuples():
        for path in glob.glob(str(results / row.bench / row.method / row.hp / "s*" /
                                  "diagnostics.parquet")):
            frames.append(pd.read_parquet(path))
    if not frames:
        return {}
    diag = pd.concat(frames, ignore_index=True)
    cols = [c for c in ("delta_over_step", "same_code_fraction", "update_survival", "cosine")
            if c in diag]
    out = {}
    for quant, group in diag.groupby("quant", sort=False):
        out[quant] = {c: _num(group[c].median()) for c in cols}
        out[quant]["by_method"] = {m: {c: _num(g[c].median()) for c in cols}
                                   for m, g in group.groupby("method", sort=False)}
    return out


def rule_seconds(root: Path) -> dict:
    """Per rule: jobs, summed job seconds (Snakemake's benchmark files)."""
    sums: dict = collections.defaultdict(lambda: [0, 0.0])
    for path in glob.glob(str(root / "results" / "benchmarks" / "**" / "*.tsv"), recursive=True):
        rule = Path(path).relative_to(root / "results" / "benchmarks").parts[0]
        with open(path) as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            sums[rule][0] += 1
            sums[rule][1] += float(rows[-1]["s"])
    return {rule: {"jobs": n, "job_seconds": round(s, 1)} for rule, (n, s) in sorted(sums.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="the run's results/ folder")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "revival_real.json"))
    parser.add_argument("--wall-seconds", type=float, default=None,
                        help="the run's end-to-end wall time, when measured outside")
    args = parser.parse_args()
    results = Path(args.results)
    tables = results / "tables"
    meta = read_parquet_metadata(tables / "metrics.parquet")
    selection = pd.read_csv(tables / "selection.csv", dtype={"hp": str})
    write_json(args.out, {
        "config": "config/smollm2-full.yaml",
        "config_hash": meta.get("config_hash"),
        "commit": meta.get("git_commit"),
        "versions": meta.get("versions"),
        "seeds": meta.get("config", {}).get("seeds"),
        "paper_knowmem_f_retained_pct": PAPER,
        "selection": selection.to_dict("records"),
        "retained_pct": retained(tables),
        "references": target_scores(tables),
        "diagnostics_median": diagnostics(results, selection),
        "rules": rule_seconds(results.parent),
        "wall_seconds": args.wall_seconds,
        "machine": {"cpus": os.cpu_count()},
        "collected": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
