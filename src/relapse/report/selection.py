"""Hyperparameter selection: which hp of each method the paper tables show.

The rule (config `report.selection`): at one quant (default `none-w16`, full precision, as the
seed paper does), among the hps whose KnowMem_r is at least `min_retain_pct`% of the target's
KnowMem_r at that quant, take the one with the lowest KnowMem_f (ties: higher KnowMem_r, then the
hp id). When no hp meets the floor, the hp with the highest KnowMem_r is taken and the row is
flagged (`meets_floor` false), so a table never silently shows an over-unlearned model.
`utility: mmlu` puts the floor on MMLU accuracy (metric lm_eval) instead of KnowMem_r, and
`forget: wmdp_bio` (wmdp_cyber, wmdp_chem) minimizes WMDP accuracy instead of KnowMem_f, as
WMDP's RMU is tuned (arXiv 2403.03218: lowest WMDP at a small MMLU drop).
"""

from __future__ import annotations

import pandas as pd

from relapse.grid import BASELINES
from relapse.report.measures import method_order

DEFAULT = {"quant": "none-w16", "min_retain_pct": 90.0, "utility": "knowmem_retain",
           "forget": "knowmem_forget"}
# report.selection.utility / .forget -> the wide frame's column (relapse.report.measures)
UTILITY = {"knowmem_retain": "KnowMem_r", "mmlu": "MMLU"}
FORGET = {"knowmem_forget": "KnowMem_f", "wmdp_bio": "WMDP_bio", "wmdp_cyber": "WMDP_cyber",
          "wmdp_chem": "WMDP_chem"}


def rule_text(selection: dict) -> str:
    s = {**DEFAULT, **selection}
    u, f = UTILITY[s["utility"]], FORGET[s["forget"]]
    return (f"Hp selection: at {s['quant']}, among the hps keeping {u} >= "
            f"{s['min_retain_pct']:g}% of the target's, the lowest {f} "
            f"(none qualifies: the highest {u}, marked †); averaged over seeds.")


def select_hps(wide: pd.DataFrame, selection: dict | None = None) -> pd.DataFrame:
    """One row per (bench, unlearning method): the selected hp, its forget and utility measures
    (KnowMem_f and KnowMem_r by default) at the selection quant, the floor (`floor_<utility>`),
    `meets_floor` and the number of candidate hps."""
    s = {**DEFAULT, **(selection or {})}
    quant, pct = s["quant"], float(s["min_retain_pct"])
    u, f = UTILITY[s["utility"]], FORGET[s["forget"]]
    at = wide[wide.quant == quant]
    if at.empty:
        present = ", ".join(dict.fromkeys(wide.quant))
        raise ValueError(f"report.selection.quant: {quant!r} is not in the results; "
                         f"present: {present}")
    for key, col in (("utility", u), ("forget", f)):
        if col not in at or at[col].isna().all():
            raise ValueError(f"report.selection.{key}: {s[key]!r} selects on {col}, which the "
                             f"results at {quant} do not have (metric lm_eval with that task?)")
    rows = []
    for bench, group in at.groupby("bench", sort=False):
        target = group[group.method == "target"][u]
        floor = pct / 100.0 * float(target.mean()) if len(target) else float("nan")
        for method in method_order(group.method):
            if method in BASELINES:
                continue
            cand = group[group.method == method]
            ok = cand[cand[u] >= floor - 1e-9]
            if len(ok):
                pick = ok.sort_values([f, u, "hp"], ascending=[True, False, True]).iloc[0]
            else:
                pick = cand.sort_values([u, f, "hp"], ascending=[False, True, True],
                                        na_position="last").iloc[0]
            rows.append({"bench": bench, "method": method, "hp": pick.hp, "quant": quant,
                         f: pick[f], u: pick[u], f"floor_{u}": floor,
                         "meets_floor": bool(len(ok)), "candidates": len(cand)})
    return pd.DataFrame(rows, columns=["bench", "method", "hp", "quant", f, u, f"floor_{u}",
                                       "meets_floor", "candidates"])


def write_selection(metrics_paths: list[str], cfg: dict, out: str) -> pd.DataFrame:
    """The selection as its own step (`quantization.models: selected`, the workflow's
    `select_hps` checkpoint): read the selection quant's metrics of the target and every
    unlearned model, pick each method's hp, write them as CSV. The report recomputes the same
    pick from the same rows, so its tables and this file always agree."""
    from relapse.io import atomic_file
    from relapse.report.build import report_settings
    from relapse.report.measures import wide
    from relapse.report.tables import concat_metrics

    selection = report_settings(cfg)["selection"]
    metrics = concat_metrics(metrics_paths)
    chosen = select_hps(wide(metrics), selection)
    missing = sorted(set(metrics.method) - set(BASELINES) - set(chosen.method))
    if missing:
        raise ValueError(f"no hp selected for {', '.join(missing)}")
    with atomic_file(out) as tmp:
        chosen.to_csv(tmp, index=False)
    return chosen


def read_selection(path: str) -> set[tuple[str, str]]:
    """(method, hp) pairs of a selection CSV written by write_selection."""
    frame = pd.read_csv(path, dtype={"method": str, "hp": str})
    return set(zip(frame.method, frame.hp))
