"""The reversibility verdict of one attacked unlearned model, drawn only from what paired
bootstrap intervals establish (reads numbers only: no torch, no files).

Five models answer the same KnowMem questions (items) of one forget split: the target T, the
unlearned model U, U after k relearning steps on forget data F, U after the same k steps on
control data C, and the retrain model after the same k steps on forget data R (it never saw the
forget set: R is what relearning teaches from scratch). Items are paired by their key; each
resample draws the shared items once, for all five (relapse.stats.paired_item_means), and every
quantity is a fraction of T's mean in the same resample:

    kept            U / T
    recovery        (F − U) / T
    beyond_control  (control_ratio · (F − U) − (C − U)) / T   (> 0: the control recovers less
                    than control_ratio times what the forget data recovers)
    beyond_retrain  (F − R) / T

each with its percentile interval [lo, hi] (evaluation.bootstrap's samples, seed; 95%). Then:

    not forgotten   hi(kept) ≥ 1 − forget_margin: that U keeps clearly less than T is not
                    established
    reversible      forgotten, and lo(recovery) > 0, lo(beyond_control) > 0, lo(beyond_retrain) > 0
    irreversible    forgotten, lo(beyond_retrain) ≤ 0 and hi(beyond_retrain) ≤ retrain_margin:
                    the relearned model is not above the relearned retrain model, and is at most
                    retrain_margin of T's knowledge above it
    inconclusive    forgotten, and neither (the intervals are too wide to say)
    undetermined    a model's item scores are missing, no item is shared, or T knows nothing

Reversible and irreversible exclude each other (lo(beyond_retrain) > 0 against ≤ 0).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

VERDICT_DEFAULTS = {"forget_margin": 0.25, "control_ratio": 0.5, "retrain_margin": 0.1}
ROLES = ("target", "unlearned", "relearned", "control", "retrain_relearned")   # T U F C R
QUANTITIES = ("kept", "recovery", "beyond_control", "beyond_retrain")
LABELS = ("not forgotten", "reversible", "irreversible", "inconclusive", "undetermined")


def verdict_rule(cfg: dict | None = None) -> str:
    c = {**VERDICT_DEFAULTS, **(cfg or {})}
    return (f"with T, U, F, C, R the KnowMem of the target, the unlearned model, U relearned on "
            f"forget data, U relearned on the control, and the retrain model relearned on forget "
            f"data (same k), items paired, and [lo, hi] the 95% paired bootstrap interval of each "
            f"quantity over T: not forgotten iff hi(U/T) >= {1 - c['forget_margin']:g} "
            f"(1 - forget_margin); otherwise reversible iff lo((F-U)/T) > 0 and "
            f"lo(({c['control_ratio']:g}(F-U) - (C-U))/T) > 0 (control_ratio) and "
            f"lo((F-R)/T) > 0; irreversible iff lo((F-R)/T) <= 0 and hi((F-R)/T) <= "
            f"{c['retrain_margin']:g} (retrain_margin); else inconclusive; undetermined when "
            f"a model's per-item scores are missing or T is 0")


def _empty(reason: str) -> dict:
    out = {"n_items": 0, **{f"km_{r}": math.nan for r in ROLES}}
    for q in QUANTITIES:
        out[q] = out[f"{q}_ci_low"] = out[f"{q}_ci_high"] = math.nan
    return {**out, "label": "undetermined", "reason": reason}


def _statistics(means: np.ndarray, ratio: float) -> np.ndarray:
    """The QUANTITIES of rows of (T, U, F, C, R) means (n x 5 -> n x 4); NaN where T is 0."""
    t, u, f, c, r = means.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(t != 0, t, np.nan)
        return np.stack([u / t, (f - u) / t, (ratio * (f - u) - (c - u)) / t, (f - r) / t],
                        axis=1)


def verdict(scores: dict[str, pd.Series | None], cfg: dict | None = None,
            boot: dict | None = None, level: float = 0.95) -> dict:
    """The verdict and every number behind it. `scores`: role (ROLES) -> per-item scores
    indexed by item key (None: no such cell); only T and U are needed for `not forgotten`."""
    from relapse.stats import paired_item_means

    c = {**VERDICT_DEFAULTS, **(cfg or {})}
    b = {"samples": 1000, "seed": 0, **(boot or {})}
    present = [r for r in ROLES if scores.get(r) is not None and len(scores[r])]
    if not {"target", "unlearned"} <= set(present):
        return _empty("no per-item scores of the " + " and ".join(
            r for r in ("target", "unlearned") if r not in present))
    items = None
    for r in present:
        index = scores[r].dropna().index
        items = index if items is None else items.intersection(index)
    if not len(items):
        return _empty("no item shared by " + ", ".join(present))
    items = items.sort_values()
    grid = np.stack([scores[r].reindex(items).to_numpy(dtype=float) if r in present
                     else np.full(len(items), np.nan) for r in ROLES])
    point = _statistics(grid.mean(axis=1)[None, :], c["control_ratio"])[0]
    out = {"n_items": len(items), **{f"km_{r}": float(m) for r, m in zip(ROLES, grid.mean(1))}}
    resampled = _statistics(paired_item_means(np.nan_to_num(grid), b["samples"], b["seed"]),
                            c["control_ratio"])
    tail = (1 - level) / 2 * 100
    for j, q in enumerate(QUANTITIES):
        out[q] = float(point[j])
        column = resampled[:, j] if len(resampled) else np.array([point[j]])
        if np.isnan(point[j]) or np.isnan(column).all():
            low = high = math.nan
        else:
            low, high = (float(v) for v in np.nanpercentile(column, [tail, 100 - tail]))
        out[f"{q}_ci_low"], out[f"{q}_ci_high"] = low, high
    return {**out, **_decide(out, c, set(present))}


def _decide(s: dict, c: dict, present: set[str]) -> dict:
    if not s["km_target"] > 0:
        return {"label": "undetermined", "reason": "the target knows nothing (T = 0)"}
    bound = 1 - c["forget_margin"]
    if not s["kept_ci_high"] < bound:
        return {"label": "not forgotten",
                "reason": f"hi(U/T) = {s['kept_ci_high']:.3g} >= {bound:g}"}
    missing = [r for r in ROLES if r not in present]
    if missing:
        return {"label": "undetermined", "reason": "forgotten, but no per-item scores of the "
                + ", ".join(missing)}
    lows = {q: s[f"{q}_ci_low"] for q in QUANTITIES[1:]}
    forgotten = f"forgotten (hi(U/T) = {s['kept_ci_high']:.3g} < {bound:g})"
    if all(v > 0 for v in lows.values()):
        return {"label": "reversible", "reason": forgotten + "; lo of recovery, beyond_control, "
                "beyond_retrain = " + ", ".join(f"{v:.3g}" for v in lows.values()) + " > 0"}
    low, high = s["beyond_retrain_ci_low"], s["beyond_retrain_ci_high"]
    if low <= 0 and high <= c["retrain_margin"]:
        return {"label": "irreversible", "reason": forgotten + f"; (F-R)/T in [{low:.3g}, "
                f"{high:.3g}]: not above the retrain's, within {c['retrain_margin']:g}"}
    failed = [q for q, v in lows.items() if not v > 0]
    return {"label": "inconclusive", "reason": forgotten + "; lo <= 0 of " + ", ".join(failed)
            + f"; hi((F-R)/T) = {high:.3g}" + (f" > {c['retrain_margin']:g}"
                                              if high > c["retrain_margin"] else "")}
