"""Metric robustness over the whole attack matrix (issue [meta-eval] item 1; reads Parquet only).

open-unlearning's meta-evaluation (Dorna et al., arXiv 2506.12618, the metric-robustness part of
its meta-evaluation; DESIGN §13) asks whether a metric can be fooled by an intervention that
should not change what an unlearned model knows. For a metric m read on the knowledge scale
(relapse.report.orientation: higher = more knowledge) of an unlearned model:
  quantization  Q = min(m_before / m_after, 1): before = the model at full precision, after =
                the same model quantized; below 1 the metric reads knowledge back after
                quantization;
  relearning    R = min(Δ_retain / Δ_unlearn, 1): Δ_unlearn = m(unlearned, relearned k steps on
                forget data) - m(unlearned), Δ_retain = the same k steps on the retrain model (at
                the same quant) minus m(retrain); below 1 relearning brings back more than it
                teaches a model that never saw the data;
  robustness    the harmonic mean of Q and R.
The paper uses one quantization (bitsandbytes NF4, 4 bits) and one relearning budget, and gives
point values. relapse extends it, and says so in each row's `family` / `attack`:
  - Q for every quant scheme x bits of the config (`quantization <quant>`);
  - R for every relearning budget k and every quant the attack ran at (`relearn k<k> @<quant>`:
    before = the model at that quant, after = it relearned there; Δ_retain: the retrain model
    at the same quant, relearned the same way);
  - pruning at every sparsity s (`prune s<s> @<quant>`) scored like Q, P = min(m_before /
    m_pruned, 1): pruning, like quantization, perturbs the weights without data, so only a
    rise counts against the metric;
  - robustness = the harmonic mean of all of a metric's scores (every Q, R and P row of it):
    with one Q and one R this is the paper's number, with more the worst attack dominates;
  - each row is the mean over the unlearned models the attack covers of their score, with a 95%
    percentile bootstrap over items and seeds (relapse.stats.resampled_cell_means: one item draw
    per resample shared by every cell, the same questions having been put to every model; seeds
    drawn per cell) where the metric has per-item scores (KnowMem, VerbMem, facts recalled, QA
    exact match); for an MIA AUC the forget and the holdout texts are drawn apart (both classes
    in every resample) and the AUC recomputed; none (NaN) for PrivLeak, whose retrain reference
    would have to be resampled with it.
Orientation and zeros, decided here (the paper's formulas assume a non-negative metric that rises
with knowledge):
  - every metric is first put on the knowledge scale (1 - AUC for an MIA AUC, -PrivLeak/100,
    1 - truth ratio on TOFU's forget split; relapse.report.orientation);
  - Q, P: a negative knowledge value (PrivLeak past the retrain) counts as 0, "no knowledge";
    when m_after <= m_before the score is 1 (nothing revived), which covers 0/0; otherwise
    m_after > 0 and the score is m_before / m_after in [0, 1);
  - R: Δ_unlearn <= 0 (relearning added nothing) gives 1; otherwise Δ_retain / Δ_unlearn clipped
    to [0, 1] (a retrain that lost knowledge under relearning while the unlearned model gained
    gives 0, not a negative score);
  - the harmonic mean is 0 when any score is 0 and skips undefined (NaN) scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relapse.grid import BASELINES
from relapse.report.orientation import describe, orientation

CELL = ["bench", "method", "hp", "quant", "attack", "attack_data", "attack_steps", "sparsity"]
METRIC = ["bench", "metric", "split", "stat"]
FAMILIES = ("quantization", "relearning", "pruning", "robustness")
# (metric, stat) -> (samples.parquet rows of metric, score column, scale): the per-item scores
ITEM_SCORES = {("knowmem", "rougeL_f1"): ("knowmem", "rougeL_f1", 100.0),
               ("verbmem", "rougeL_f1"): ("verbmem", "rougeL_f1", 100.0),
               ("verbmem_facts", "facts_recalled"): ("verbmem", "facts_recalled", 1.0),
               ("qa_em", "exact_match"): ("knowmem", "exact_match", 1.0)}


# --- the scores (numpy: scalars or arrays of bootstrap resamples alike) -------------------------

def quant_score(before, after):
    """Q (and P) = min(before / after, 1) on the knowledge scale, negatives as 0, 1 when after <=
    before (0/0 included)."""
    b = np.maximum(np.asarray(before, dtype=float), 0.0)
    a = np.maximum(np.asarray(after, dtype=float), 0.0)
    ratio = np.divide(b, a, out=np.ones_like(a * b), where=a > b)
    return np.where(np.isnan(a) | np.isnan(b), np.nan, np.where(a > b, ratio, 1.0))


def relearn_score(d_unlearn, d_retain):
    """R = min(Δ_retain / Δ_unlearn, 1), clipped at 0; 1 when Δ_unlearn <= 0."""
    du = np.asarray(d_unlearn, dtype=float)
    dr = np.asarray(d_retain, dtype=float)
    ratio = np.divide(dr, du, out=np.ones_like(du * dr), where=du > 0)
    out = np.where(du > 0, np.clip(ratio, 0.0, 1.0), 1.0)
    return np.where(np.isnan(du) | np.isnan(dr), np.nan, out)


def harmonic_mean(scores, axis: int = 0):
    """Harmonic mean of scores in [0, 1] along `axis`, skipping NaN; 0 when any score is 0;
    NaN when none is defined."""
    x = np.asarray(scores, dtype=float)
    n = np.sum(~np.isnan(x), axis=axis)
    zero = np.any(x == 0, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.nansum(np.where(x > 0, 1.0 / x, 0.0), axis=axis)
        hm = np.where(n > 0, n / inv, np.nan)
    return np.where(zero, 0.0, hm)


# --- the cells ----------------------------------------------------------------------------------

def _with_attack_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Un-attacked rows get attack `none`; steps and sparsity 0 where absent, so that cells are
    grouped without NaN keys."""
    frame = frame.copy()
    for key, default in (("attack", "none"), ("attack_data", "none"), ("attack_steps", 0.0),
                         ("sparsity", 0.0)):
        if key not in frame:
            frame[key] = default
        frame[key] = frame[key].fillna(default)
    frame["attack_steps"] = pd.to_numeric(frame.attack_steps).astype(float)
    frame["sparsity"] = pd.to_numeric(frame.sparsity).astype(float)
    return frame


def cell_values(metrics: pd.DataFrame, attacks: pd.DataFrame | None) -> pd.DataFrame:
    """Seed-mean knowledge value of every (cell, metric) with an orientation: the un-attacked
    cells of metrics.parquet and the attacked ones of attacks.parquet (whose un-attacked rows
    repeat metrics.parquet's and are dropped)."""
    frames = [_with_attack_keys(metrics)]
    if attacks is not None and len(attacks):
        frames.append(_with_attack_keys(attacks[attacks.attack != "none"]))
    rows = pd.concat(frames, ignore_index=True)
    orient = {k: orientation(k[0], k[1]) for k in set(zip(rows.metric, rows.split))}
    rows = rows[[orient[k] is not None for k in zip(rows.metric, rows.split)]]
    offset = np.array([orient[k][0] for k in zip(rows.metric, rows.split)])
    sign = np.array([orient[k][1] for k in zip(rows.metric, rows.split)])
    rows = rows.assign(knowledge=offset + sign * rows.value.to_numpy(dtype=float))
    return rows.groupby(CELL + ["metric", "split", "stat"], as_index=False).knowledge.mean()


def full_quant(quants) -> str:
    quants = list(dict.fromkeys(quants))
    return "none-w16" if "none-w16" in quants else sorted(quants)[0]


def attack_plan(cells: pd.DataFrame) -> list[dict]:
    """Every score of one (bench, metric, split, stat): a dict with the row's keys (family,
    attack, quant, steps, sparsity), the model (method, hp) and the cells it reads."""
    def key(method, hp, quant, attack="none", data="none", steps=0.0, sparsity=0.0):
        return (method, hp, quant, attack, data, float(steps), float(sparsity))

    have = set(zip(cells.method, cells.hp, cells.quant, cells.attack, cells.attack_data,
                   cells.attack_steps, cells.sparsity))
    q0 = full_quant(cells[cells.attack == "none"].quant)
    models = cells[~cells.method.isin(BASELINES)][["method", "hp"]].drop_duplicates()
    retrain_hp = dict.fromkeys(cells[cells.method == "retrain"].hp)
    retrain_hp = next(iter(retrain_hp), "default")
    out = []
    for method, hp in models.itertuples(index=False):
        mine = cells[(cells.method == method) & (cells.hp == hp)]
        base = key(method, hp, q0)
        for quant in sorted(set(mine[mine.attack == "none"].quant) - {q0}):
            after = key(method, hp, quant)
            if base in have:
                out.append({"family": "quantization", "attack": f"quantization {quant}",
                            "quant": quant, "steps": np.nan, "sparsity": np.nan,
                            "method": method, "hp": hp, "cells": (base, after)})
        for r in mine[mine.attack == "relearn"].itertuples(index=False):
            if r.attack_data != "forget":
                continue          # relearning on other data is the verdict's control
            before = key(method, hp, r.quant)
            after = key(method, hp, r.quant, "relearn", "forget", r.attack_steps)
            ret0 = key("retrain", retrain_hp, r.quant)
            ret1 = key("retrain", retrain_hp, r.quant, "relearn", "forget", r.attack_steps)
            if {before, ret0, ret1} <= have:
                out.append({"family": "relearning",
                            "attack": f"relearn k{r.attack_steps:g} @{r.quant}",
                            "quant": r.quant, "steps": r.attack_steps, "sparsity": np.nan,
                            "method": method, "hp": hp, "cells": (before, after, ret0, ret1)})
        for r in mine[mine.attack == "prune"].itertuples(index=False):
            before = key(method, hp, r.quant)
            after = key(method, hp, r.quant, "prune", r.attack_data, r.attack_steps, r.sparsity)
            if before in have:
                out.append({"family": "pruning", "attack": f"prune s{r.sparsity:g} @{r.quant}",
                            "quant": r.quant, "steps": np.nan, "sparsity": r.sparsity,
                            "method": method, "hp": hp, "cells": (before, after)})
    return out


def _score(entry: dict, value) -> np.ndarray:
    """The score of one plan entry, `value(cell)` giving the cell's knowledge (a scalar, or an
    array of resamples)."""
    if entry["family"] == "relearning":
        b, a, r0, r1 = (value(c) for c in entry["cells"])
        return relearn_score(a - b, r1 - r0)
    b, a = (value(c) for c in entry["cells"])
    return quant_score(b, a)


# --- the per-item resamples ------------------------------------------------------------------

def _cell_grids(samples: pd.DataFrame | None, bench: str, metric: str, split: str, column: str,
                needed: set, items: list[str]) -> dict[tuple, pd.DataFrame] | None:
    """cell -> seeds x items `column`, on the items every needed cell has (items keyed by the
    `items` columns); None when a needed cell has none (no interval then)."""
    if samples is None or column not in samples or not needed:
        return None
    hit = _with_attack_keys(samples[(samples.bench == bench) & (samples.metric == metric)
                                    & (samples.split == split)]).dropna(subset=[column])
    grids = {}
    for key, cell in hit.groupby(CELL[1:], sort=False):
        if key in needed:
            grids[key] = cell.pivot_table(index="seed", columns=items, values=column,
                                          aggfunc="mean").dropna(axis=1)
    if set(grids) != needed:
        return None
    common = None
    for grid in grids.values():
        common = grid.columns if common is None else common.intersection(grid.columns)
    if common is None or not len(common):
        return None
    return {k: g[common] for k, g in grids.items()}


def _mean_resamples(samples, bench, metric, split, stat, needed, boot):
    """cell -> resampled knowledge (seed x item mean) for a metric with per-item scores, and
    the item count; (None, 0) without them."""
    from relapse.stats import resampled_cell_means

    name, column, scale = ITEM_SCORES[(metric, stat)]
    grids = _cell_grids(samples, bench, name, split, column, needed, ["item"])
    if grids is None:
        return None, 0
    offset, sign = orientation(metric, split)
    order = sorted(grids)
    means = resampled_cell_means([scale * grids[k].to_numpy(dtype=float) for k in order],
                                 **boot)
    return ({k: offset + sign * means[:, i] for i, k in enumerate(order)},
            grids[order[0]].shape[1])


def _auc_resamples(samples, bench, metric, split, needed, boot):
    """cell -> resampled knowledge of an MIA AUC: each resample draws the forget texts and the
    holdout texts (apart, so both classes are always there) once for every cell, each cell's
    seeds on their own; the AUC of each drawn seed (P(member score > holdout score) + 1/2 P(tie),
    relapse.evaluate.mia's), averaged over the drawn seeds. (None, 0) without per-text scores."""
    if samples is None or "member" not in samples:
        return None, 0
    grids = _cell_grids(samples, bench, metric, split, "score", needed, ["member", "item"])
    if grids is None:
        return None, 0
    columns = next(iter(grids.values())).columns
    members = np.flatnonzero(columns.get_level_values("member") == 1)
    holdout = np.flatnonzero(columns.get_level_values("member") == 0)
    if not len(members) or not len(holdout):
        return None, 0
    rng = np.random.default_rng(boot["seed"])
    n = boot["samples"]
    pick_m = members[rng.integers(0, len(members), size=(n, len(members)))]
    pick_h = holdout[rng.integers(0, len(holdout), size=(n, len(holdout)))]
    offset, sign = orientation(metric, split)
    from scipy.stats import rankdata

    n1, n0 = pick_m.shape[1], pick_h.shape[1]
    out = {}
    for key in sorted(grids):
        x = grids[key].to_numpy(dtype=float)                     # seeds x texts
        aucs = np.empty((len(x), n))
        for s, row in enumerate(x):        # Mann-Whitney U of each resample, from its ranks
            ranks = rankdata(np.concatenate([row[pick_m], row[pick_h]], axis=1), axis=1)
            aucs[s] = (ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
        seeds = rng.integers(0, len(x), size=(n, len(x)))        # seeds drawn per cell
        auc = aucs[seeds, np.arange(n)[:, None]].mean(axis=1)
        out[key] = offset + sign * auc
    return out, len(members) + len(holdout)


# --- the table -------------------------------------------------------------------------------

def robustness_table(metrics: pd.DataFrame, attacks: pd.DataFrame | None,
                     samples: pd.DataFrame | None = None, boot: dict | None = None
                     ) -> pd.DataFrame:
    """One row per (bench, metric, split, stat) x attack (family quantization, relearning,
    pruning) and one `robustness` row (the harmonic mean of that metric's rows); see the module
    docstring. `samples`: per-item scores of the un-attacked and attacked cells with the attack
    key columns (inputs.read_item_scores), for the intervals; `boot`: {samples, seed}."""
    boot = {"samples": 1000, "seed": 0, **(boot or {})}
    values = cell_values(metrics, attacks)
    rows = []
    for (bench, metric, split, stat), cells in values.groupby(METRIC, sort=True):
        plan = attack_plan(cells)
        if not plan:
            continue
        point = {tuple(k): v for k, v in zip(cells[CELL[1:]].itertuples(index=False, name=None),
                                               cells.knowledge)}
        needed = {c for e in plan for c in e["cells"]}
        draws, n_items = None, 0
        if boot["samples"] > 0 and (metric, stat) in ITEM_SCORES:
            draws, n_items = _mean_resamples(samples, bench, metric, split, stat, needed, boot)
        elif boot["samples"] > 0 and metric.startswith("mia_") and stat == "auc":
            draws, n_items = _auc_resamples(samples, bench, metric, split, needed, boot)
        groups: dict[str, list[dict]] = {}
        for entry in plan:
            groups.setdefault(entry["attack"], []).append(entry)
        per_row, per_row_draws = [], []
        for label, entries in groups.items():
            scores = np.array([float(_score(e, point.get)) for e in entries])
            value = float(np.nanmean(scores)) if np.isfinite(scores).any() else np.nan
            low = high = np.nan
            if draws is not None:
                boot_scores = np.nanmean([_score(e, draws.get) for e in entries], axis=0)
                per_row_draws.append(boot_scores)
                low, high = np.nanpercentile(boot_scores, [2.5, 97.5])
            first = entries[0]
            per_row.append(value)
            rows.append({"bench": bench, "metric": metric, "split": split, "stat": stat,
                         "family": first["family"], "attack": label, "quant": first["quant"],
                         "steps": first["steps"], "sparsity": first["sparsity"],
                         "value": value, "ci_low": float(low), "ci_high": float(high),
                         "n_models": len(entries)})
        hm_low = hm_high = np.nan
        if draws is not None:
            hm_low, hm_high = np.nanpercentile(harmonic_mean(np.array(per_row_draws)),
                                               [2.5, 97.5])
        rows.append({"bench": bench, "metric": metric, "split": split, "stat": stat,
                     "family": "robustness", "attack": "harmonic mean", "quant": None,
                     "steps": np.nan, "sparsity": np.nan,
                     "value": float(harmonic_mean(np.array(per_row))),
                     "ci_low": float(hm_low), "ci_high": float(hm_high),
                     "n_models": len({(e["method"], e["hp"]) for e in plan})})
        for row in rows[-len(groups) - 1:]:
            row.update({"orientation": describe(metric, split), "n_items": n_items,
                        "interval": (f"percentile bootstrap over items and seeds, "
                                     f"{boot['samples']} resamples" if draws is not None
                                     else "none: no per-item scores")})
    return pd.DataFrame(rows)


CAPTION = ("Metric robustness (open-unlearning's meta-evaluation, arXiv 2506.12618, extended to "
           "every quant scheme x bits, relearning budget and pruning sparsity): on the "
           "knowledge scale (higher = more knowledge; `orientation`), quantization and pruning "
           "Q = min(m_before / m_after, 1) with before = the unlearned model un-attacked (full "
           "precision for quantization; the attack's quant otherwise), relearning R = "
           "min(Δ_retain / Δ_unlearn, 1) with Δ the change k steps of relearning on forget data "
           "make to the retrain and the unlearned model at the same quant; each the mean over "
           "the unlearned models attacked. Robustness: the harmonic mean of a metric's scores. "
           "1 = the attack never makes the metric read knowledge back; 0 = it always does. "
           "95% CI: percentile bootstrap over items (MIA: forget and holdout texts drawn apart) "
           "and seeds where per-item scores exist; none for PrivLeak.")


def to_markdown(table: pd.DataFrame) -> str:
    """Metrics as rows, attacks as columns, `value [lo, hi]`."""
    if table.empty:
        return CAPTION + "\n\n(no attacked unlearned model)\n"

    def cell(r):
        if pd.isna(r.value):
            return "n/a"
        if pd.isna(r.ci_low):
            return f"{r.value:.2f}"
        return f"{r.value:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"

    attacks = list(dict.fromkeys(table.sort_values(
        "family", key=lambda s: s.map(FAMILIES.index), kind="stable").attack))
    head = ["bench", "metric", "split"] + attacks
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (bench, metric, split), group in table.groupby(["bench", "metric", "split"], sort=True):
        by = {r.attack: cell(r) for r in group.itertuples(index=False)}
        lines.append("| " + " | ".join([bench, metric, split] + [by.get(a, "") for a in attacks])
                     + " |")
    return CAPTION + "\n\n" + "\n".join(lines) + "\n"


def write_robustness(metrics: pd.DataFrame, attacks: pd.DataFrame | None, tables_dir,
                     samples: pd.DataFrame | None = None, boot: dict | None = None,
                     meta: dict | None = None) -> pd.DataFrame:
    """metric_robustness.{parquet,md,csv} under `tables_dir`."""
    from pathlib import Path

    from relapse.io import write_csv, write_parquet, write_text

    table = robustness_table(metrics, attacks, samples, boot)
    stem = Path(tables_dir) / "metric_robustness"
    write_parquet(f"{stem}.parquet", table, meta or {})
    write_csv(f"{stem}.csv", table)
    write_text(f"{stem}.md", to_markdown(table))
    return table
