"""results/tables/metrics.parquet (a concat: every row carries its keys) and the summary table
(the paper tables are in paper_tables.py; build.py writes everything).

Knowledge retained = metric(unlearned, q) / metric(target, q), at matched quantization q: the
seed paper's "21% → 83%" quantity. It is only meaningful against the target quantized the same
way, so the ratio is computed per (bench, quant).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from relapse.grid import parse_hp_id

MAIN_COLUMNS = [("knowmem", "forget", "KnowMem_f"), ("verbmem", "forget", "VerbMem_f"),
                ("knowmem", "retain", "KnowMem_r")]
# Shown only when the run computed them (older results and configs without these metrics).
EXTRA_COLUMNS = [("privleak", "forget", "PrivLeak"), ("ppl", "retain_eval", "PPL_r")]
RETAINED_CAPTION = ("Knowledge retained = unlearned / target at matched quantization "
                    "(per bench and quant), for KnowMem_f (ROUGE-L F1 x100, few-shot QA).")


def concat_metrics(paths: list[str | Path]) -> pd.DataFrame:
    frames = []
    for path in paths:
        try:
            frames.append(pd.read_parquet(path))
        except Exception as err:     # name the file: the report reads hundreds of them
            raise ValueError(f"{path}: not a readable metrics table ({err}); delete it and "
                             "rerun the evaluation that writes it") from None
    frame = pd.concat(frames, ignore_index=True)
    hp_cols = pd.DataFrame([parse_hp_id(h) for h in frame.hp]).add_prefix("hp_")
    return pd.concat([frame, hp_cols], axis=1)


def with_retained(metrics: pd.DataFrame) -> pd.DataFrame:
    """Add `retained`: each row's value divided by the target's value for the same bench,
    quant, metric, split and stat."""
    key = ["bench", "quant", "metric", "split", "stat"]
    target = metrics[metrics.method == "target"][key + ["value"]].rename(
        columns={"value": "target_value"})
    out = metrics.merge(target, on=key, how="left")
    out["retained"] = out.value / out.target_value.where(out.target_value != 0)
    return out.drop(columns="target_value")


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Rows bench × method × hp; for each quant, KnowMem_f, VerbMem_f, KnowMem_r, PrivLeak and
    the retain_eval perplexity (when computed) and the knowledge retained on KnowMem_f."""
    wanted = MAIN_COLUMNS + [c for c in EXTRA_COLUMNS
                             if ((metrics.metric == c[0]) & (metrics.split == c[1])).any()]
    keep = (metrics.stat == "rougeL_f1") | metrics.metric.isin([c[0] for c in EXTRA_COLUMNS])
    m = with_retained(metrics[keep])
    quants = list(dict.fromkeys(metrics.quant))
    rows = []
    order = {"target": 0, "retrain": 1}
    for (bench, method, hp), group in m.groupby(["bench", "method", "hp"], sort=False):
        row = {"bench": bench, "method": method, "hp": hp}
        for quant in quants:
            cell = group[group.quant == quant]
            for metric, split, label in wanted:
                hit = cell[(cell.metric == metric) & (cell.split == split)]
                row[f"{quant} {label}"] = hit.value.mean() if len(hit) else float("nan")
            hit = cell[(cell.metric == "knowmem") & (cell.split == "forget")]
            row[f"{quant} retained"] = hit.retained.mean() if len(hit) else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    table["_o"] = table.method.map(order).fillna(2)
    return table.sort_values(["bench", "_o", "method", "hp"]).drop(columns="_o").reset_index(drop=True)


def to_markdown(table: pd.DataFrame, caption: str) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "–" if pd.isna(v) else f"{v:.2f}"
        return str(v)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if c in ("bench", "method", "hp") else "---:" for c in table.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([f"**{caption}**", "", header, rule, *body, ""])

