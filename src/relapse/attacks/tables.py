"""Collect the attacked cells' metrics into one table (attacks.parquet: every row of every
attacked cell, plus the same models' un-attacked rows with attack `none`, step 0 of each curve)
and the relearning-curves table the report plots (relearn.parquet: forget-data relearning)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

CURVE_STATS = ("rougeL_f1",)    # one statistic per (metric, split) on a curve


def collect(attack_metrics: list[str | Path], base_metrics: list[str | Path]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in attack_metrics]
    for path in base_metrics:
        base = pd.read_parquet(path)
        base = base.assign(attack="none", attack_data="none", attack_steps=0.0,
                           sparsity=float("nan"))
        frames.append(base)
    table = pd.concat(frames, ignore_index=True)
    table["attack_steps"] = pd.to_numeric(table.attack_steps)
    table["sparsity"] = pd.to_numeric(table.sparsity)
    return table


def relearn_curves(table: pd.DataFrame, data: str = "forget") -> pd.DataFrame:
    """Step 0 (the un-attacked cell) and each k of relearning on `data`."""
    on = table[(table.attack == "relearn") & (table.attack_data == data)]
    base = table[table.attack == "none"]
    curves = pd.concat([base.assign(attack_steps=0, attack_data=data), on], ignore_index=True)
    curves = curves[curves.stat.isin(CURVE_STATS)].rename(columns={"attack_steps": "step"})
    keep = ["bench", "method", "hp", "seed", "quant", "step", "attack_data", "metric", "split",
            "value", "ci_low", "ci_high"]
    return curves[keep].sort_values(["bench", "method", "hp", "seed", "quant", "metric", "split",
                                     "step"]).reset_index(drop=True)


def write_tables(attack_metrics, base_metrics, attacks_out, relearn_out, config: dict) -> None:
    from relapse.io import write_parquet
    from relapse.provenance import provenance

    table = collect(attack_metrics, base_metrics)
    meta = provenance({"attacks": config.get("attacks", {})})
    write_parquet(attacks_out, table, meta)
    write_parquet(relearn_out, relearn_curves(table), meta)
