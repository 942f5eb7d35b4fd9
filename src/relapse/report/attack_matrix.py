"""Every attack a run applied to each unlearned model, as one table (reads Parquet only).

An *unlearned model* is (bench, method, hp, seed) of a non-baseline method; its un-attacked form
is the cell at full precision (`none-w16`, else the quant with the most bits: durability.
full_quant). An *attack* is any other cell of the same model: each quant scheme x bits on its own
(metrics.parquet), and each attacked cell of attacks.parquet (a quant, then relearning with data
and k steps, or pruning at sparsity s), so a quantized-then-relearned model is one attack.

Per (model, attack):
- retained = KnowMem_f(attacked) / KnowMem_f(target at the attack's quant, un-attacked): the
  report's knowledge retained (matched quant). A pruned model is divided by the un-pruned target
  (what the attacker gets back of what the target knew; the durability table also shows the
  matched-sparsity ratio);
- utility = U(attacked) / U(un-attacked model), U = MMLU where the run has a `mmlu` row, else
  KnowMem_r; drop = 1 - utility;
- recovery = retained(attacked) - retained(un-attacked), in units of the target's KnowMem_f;
- 95% intervals: retained by the paired bootstrap over items of the ratio (the same items drawn
  for the model and the target), utility the same over the utility items; NaN where a cell has
  no per-item scores.
"""

from __future__ import annotations

import math

import pandas as pd

from relapse.grid import BASELINES
from relapse.stats import bootstrap_seeds_items

MODEL = ["bench", "method", "hp", "seed"]
ATTACK = ["quant", "attack", "attack_data", "attack_steps", "sparsity"]
FORGET = ("knowmem", "forget", "rougeL_f1")
KNOWMEM_R = ("knowmem", "retain", "rougeL_f1")
SCORE = ("rougeL_f1", 100.0)     # KnowMem's per-item column in samples.parquet, and its scale
NAN2 = (math.nan, math.nan)


def _normal(frame: pd.DataFrame) -> pd.DataFrame:
    """The attack key columns present and typed: `none` / 0 where a cell was not attacked
    (sparsity 0: not pruned)."""
    frame = frame.copy()
    for key, empty in (("attack", "none"), ("attack_data", "none")):
        frame[key] = frame[key].fillna(empty) if key in frame else empty
    for key in ("attack_steps", "sparsity"):
        frame[key] = pd.to_numeric(frame[key]).fillna(0.0) if key in frame else 0.0
    return frame


def utility_measure(metrics: pd.DataFrame) -> tuple[str, str | None, str | None]:
    """(metric, split, stat): MMLU where the run measured it (its first split and statistic),
    else KnowMem_r."""
    mmlu = metrics[metrics.metric == "mmlu"]
    if len(mmlu):
        return "mmlu", str(mmlu.split.iloc[0]), str(mmlu.stat.iloc[0])
    return KNOWMEM_R


def attack_label(quant: str, attack: str, data: str, steps: float, sparsity: float) -> str:
    if attack == "relearn":
        return f"{quant} + relearn {data} k={steps:g}"
    if attack == "prune":
        return f"{quant} + prune s={sparsity:g}"
    return quant if attack == "none" else f"{quant} + {attack}"


def all_cells(metrics: pd.DataFrame, attacks: pd.DataFrame | None) -> pd.DataFrame:
    """The un-attacked cells (metrics.parquet) and the attacked ones (attacks.parquet without
    its step-0 rows, which repeat the un-attacked cells), attack keys normalised."""
    frames = [_normal(metrics)]
    if attacks is not None and len(attacks):
        att = _normal(attacks)
        frames.append(att[att.attack != "none"])
    return pd.concat(frames, ignore_index=True)


def _values(cells: pd.DataFrame, measure) -> pd.Series:
    metric, split, stat = measure
    hit = cells[(cells.metric == metric) & (cells.split == split) & (cells.stat == stat)]
    return hit.groupby(MODEL + ATTACK).value.mean()


def _item_index(items: pd.DataFrame | None) -> dict[tuple, pd.Series]:
    """(bench, method, hp, seed, quant, attack, data, steps, sparsity, split) -> scores by item
    (scaled like the metric)."""
    if items is None or not len(items):
        return {}
    items = _normal(items).dropna(subset=[SCORE[0]])
    return {key: g.set_index("item")[SCORE[0]] * SCORE[1]
            for key, g in items.groupby(MODEL + ATTACK + ["split"], sort=False)}


def _target_items(index: dict, bench: str, quant: str, split: str) -> pd.Series | None:
    """The un-attacked target's items at `quant`, averaged over its seeds."""
    hits = [s for k, s in index.items() if k[0] == bench and k[1] == "target"
            and k[4] == quant and k[5] == "none" and k[8] == 0.0 and k[9] == split]
    return pd.concat(hits, axis=1).mean(axis=1) if hits else None


def ratio_ci(num: pd.Series | None, den: pd.Series | None, boot: dict) -> tuple[float, float]:
    """95% paired bootstrap interval of mean(num) / mean(den) over the items both have."""
    if num is None or den is None:
        return NAN2
    common = num.index.intersection(den.index)
    if not len(common):
        return NAN2
    _, lo, hi = bootstrap_seeds_items(num[common].to_numpy()[None, :],
                                      den[common].to_numpy()[None, :], **boot)
    return lo, hi


def attack_matrix(metrics: pd.DataFrame, attacks: pd.DataFrame | None = None,
                  items: pd.DataFrame | None = None, boot: dict | None = None) -> pd.DataFrame:
    """One row per (unlearned model, attack), the un-attacked cell included (attack `none` at
    the full-precision quant, recovery 0); see the module docstring. `items`: per-item KnowMem
    scores on forget and retain (inputs.read_item_scores), `boot`: {samples, seed}."""
    from relapse.report.durability import full_quant

    boot = {"samples": 1000, "seed": 0, **(boot or {})}
    cells = all_cells(metrics, attacks)
    forget = _values(cells, FORGET)
    umeasure = utility_measure(metrics)
    utility = _values(cells, umeasure)
    index = _item_index(items)
    q0 = full_quant(metrics.quant)
    keys = forget.index.to_frame(index=False)
    is_target = ((keys.method == "target") & (keys.attack == "none")).to_numpy()
    tgt = forget[is_target].groupby(["bench", "quant"]).mean()   # over the target's seeds
    rows = []
    for key, f in forget.items():
        bench, method, hp, seed, quant, attack, data, steps, sparsity = key
        if method in BASELINES:
            continue
        base_key = (bench, method, hp, seed, q0, "none", "none", 0.0, 0.0)
        t = tgt.get((bench, quant), math.nan)
        t0 = tgt.get((bench, q0), math.nan)
        u, u0 = utility.get(key, math.nan), utility.get(base_key, math.nan)
        retained = f / t if t else math.nan
        base = forget.get(base_key, math.nan) / t0 if t0 else math.nan
        row = dict(zip(MODEL + ATTACK, key))
        lo, hi = ratio_ci(index.get((*key, "forget")), _target_items(index, bench, quant,
                                                                      "forget"), boot)
        row.update(label=attack_label(quant, attack, data, steps, sparsity),
                   unattacked=key == base_key, knowmem_f=f, target_knowmem_f=t,
                   retained=retained, retained_ci_low=lo, retained_ci_high=hi,
                   recovery=retained - base)
        ulo, uhi = (ratio_ci(index.get((*key, "retain")), index.get((*base_key, "retain")), boot)
                    if umeasure == KNOWMEM_R else NAN2)
        ratio = u / u0 if u0 else math.nan
        row.update(utility_measure="/".join(umeasure), utility=u, utility_unattacked=u0,
                   utility_ratio=ratio, utility_ratio_ci_low=ulo, utility_ratio_ci_high=uhi,
                   utility_drop=1 - ratio)
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["attack_steps"] = out.attack_steps.astype(float)
    return out.sort_values(MODEL + ["unattacked", "label"], ascending=[True] * 4 + [False, True],
                           ignore_index=True)


def item_paths_scores(paths: list[str]) -> pd.DataFrame | None:
    """The per-item KnowMem scores on forget and retain of the cells `paths` (samples.parquet
    of un-attacked and attacked cells)."""
    from relapse.report.inputs import read_item_scores

    return read_item_scores(paths, "knowmem", {"forget", "retain"}, SCORE[0])

