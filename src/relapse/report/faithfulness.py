"""Metric faithfulness (issue [meta-eval] item 2; reads Parquet only).

open-unlearning's meta-evaluation (arXiv 2506.12618) calls a metric faithful when it tells models
that hold the knowledge from models that never saw it: the ROC AUC of the metric over a pool of
positives P and negatives N. In relapse, per bench and metric: P = every un-attacked cell of the
target (each seed at each quant), N = every un-attacked cell of the retrain model (each seed at
each quant). Each cell is one model; its value is read on the knowledge scale
(relapse.report.orientation), so AUC = P(m(P) > m(N)) + 1/2 P(tie): 1 = the metric always ranks
a knowing model above a never-trained one, 0.5 = chance, below 0.5 = the wrong way round.

The quants of one model are not independent models (they share the weights before rounding), so a
pool of a target and its quants is smaller than it looks: the table gives both pool sizes and
refuses (AUC NaN, `reason` says why) when either is under `report.faithfulness.min_pool`. The
95% interval is the percentile bootstrap over models, drawn within each pool.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relapse.report.orientation import describe, orientation

DEFAULT_MIN_POOL = 5
METRIC = ["bench", "metric", "split", "stat"]


def auc(positives, negatives) -> float:
    """P(positive > negative) + 1/2 P(tie) (Mann-Whitney U / (n_P n_N)); NaN for an empty pool."""
    p = np.asarray(positives, dtype=float)
    n = np.asarray(negatives, dtype=float)
    if not p.size or not n.size:
        return float("nan")
    greater = (p[:, None] > n[None, :]).sum()
    ties = (p[:, None] == n[None, :]).sum()
    return float((greater + 0.5 * ties) / (p.size * n.size))


def faithfulness_table(metrics: pd.DataFrame, min_pool: int = DEFAULT_MIN_POOL,
                       boot: dict | None = None) -> pd.DataFrame:
    """One row per (bench, metric, split, stat) with a knowledge reading: n_positive,
    n_negative, auc with its 95% interval, and `reason` where the AUC is refused."""
    from relapse.stats import bootstrap_statistic

    boot = {"samples": 1000, "seed": 0, **(boot or {})}
    if "attack" in metrics:
        metrics = metrics[metrics.attack.fillna("none") == "none"]
    rows = []
    for (bench, metric, split, stat), group in metrics.groupby(METRIC, sort=True):
        o = orientation(metric, split)
        if o is None:
            continue
        known = group.assign(knowledge=o[0] + o[1] * group.value.astype(float))
        known = known.dropna(subset=["knowledge"])
        pos = known[known.method == "target"].knowledge.to_numpy()
        neg = known[known.method == "retrain"].knowledge.to_numpy()
        row = {"bench": bench, "metric": metric, "split": split, "stat": stat,
               "orientation": describe(metric, split), "n_positive": len(pos),
               "n_negative": len(neg), "min_pool": min_pool, "auc": np.nan, "ci_low": np.nan,
               "ci_high": np.nan, "reason": ""}
        if min(len(pos), len(neg)) < min_pool:
            row["reason"] = (f"pools of {len(pos)} knowing (target) and {len(neg)} never-trained "
                             f"(retrain) models; report.faithfulness.min_pool is {min_pool}")
        else:
            values = np.concatenate([pos, neg])
            labels = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]

            def stat_of(idx):
                return auc(values[idx][labels[idx] == 1], values[idx][labels[idx] == 0])

            row["auc"], row["ci_low"], row["ci_high"] = bootstrap_statistic(
                stat_of, len(values), strata=labels, **boot)
        rows.append(row)
    return pd.DataFrame(rows)


CAPTION = ("Faithfulness (open-unlearning's meta-evaluation, arXiv 2506.12618): the ROC AUC with "
           "which each metric, on the knowledge scale (`orientation`), ranks the models that hold "
           "the forget set's knowledge (the target at every seed and quant) above the models "
           "that never saw it (the retrain model at every seed and quant); 1 = always, 0.5 = "
           "chance. Quants of one model are not independent models. 95% CI: percentile "
           "bootstrap over models within each pool. No AUC from pools under "
           "report.faithfulness.min_pool.")


def to_markdown(table: pd.DataFrame) -> str:
    head = ["bench", "metric", "split", "orientation", "P", "N", "AUC [95% CI]", "refused"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.itertuples(index=False):
        value = "n/a" if pd.isna(r.auc) else f"{r.auc:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
        lines.append("| " + " | ".join([r.bench, r.metric, r.split, r.orientation,
                                        str(r.n_positive), str(r.n_negative), value,
                                        r.reason]) + " |")
    return CAPTION + "\n\n" + "\n".join(lines) + "\n"


def write_faithfulness(metrics: pd.DataFrame, tables_dir, min_pool: int = DEFAULT_MIN_POOL,
                       boot: dict | None = None) -> pd.DataFrame:
    """faithfulness.{md,csv} under `tables_dir`."""
    from pathlib import Path

    from relapse.io import write_csv, write_text

    table = faithfulness_table(metrics, min_pool, boot)
    stem = Path(tables_dir) / "faithfulness"
    write_csv(f"{stem}.csv", table)
    write_text(f"{stem}.md", to_markdown(table))
    return table
