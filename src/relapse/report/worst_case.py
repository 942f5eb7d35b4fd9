"""The worst attack under a utility budget (TamperBench's reporting, arXiv 2602.06911).

For each unlearned model, among every attack the run applied to it (attack_matrix: each quant,
each quant x relearning data x k, each quant x pruning s), the one that recovers the most
knowledge (highest KnowMem_f retained) while utility stays within `budget` of the un-attacked
model: utility drop = 1 - U(attacked) / U(un-attacked) <= budget (config
`report.utility_budget`, default 0.10). An attack whose utility is unknown is not within the
budget. The strongest attack regardless of utility is shown beside it, and whether it broke the
budget: that is the attack a report without a budget would have quoted.
"""

from __future__ import annotations

import math

import pandas as pd

from relapse.report.attack_matrix import MODEL

DEFAULT_BUDGET = 0.10
PICK = ["label", "retained", "retained_ci_low", "retained_ci_high", "utility_ratio",
        "utility_ratio_ci_low", "utility_ratio_ci_high", "utility_drop"]


def within_budget(matrix: pd.DataFrame, budget: float) -> pd.Series:
    return matrix.utility_drop.le(budget) & matrix.utility_drop.notna()


def worst_case(matrix: pd.DataFrame, budget: float = DEFAULT_BUDGET) -> pd.DataFrame:
    """One row per unlearned model: the un-attacked retained, the chosen attack (`chosen_*`),
    the strongest attack (`strongest_*`) and whether it broke the budget."""
    rows = []
    if matrix.empty:
        return pd.DataFrame(rows)
    ok = within_budget(matrix, budget)
    for key, group in matrix.groupby(MODEL, sort=False):
        base = group[group.unattacked]
        attacked = group[~group.unattacked & group.retained.notna()]
        row = dict(zip(MODEL, key))
        row["quant"] = base["quant"].iloc[0] if len(base) else None
        row["unattacked"] = float(base.retained.iloc[0]) if len(base) else math.nan
        row["unattacked_ci_low"] = float(base.retained_ci_low.iloc[0]) if len(base) else math.nan
        row["unattacked_ci_high"] = float(base.retained_ci_high.iloc[0]) if len(base) else \
            math.nan
        row["n_attacks"], row["n_within_budget"] = len(attacked), int(ok[attacked.index].sum())
        allowed = attacked[ok[attacked.index]]
        chosen = allowed.loc[allowed.retained.idxmax()] if len(allowed) else None
        strongest = attacked.loc[attacked.retained.idxmax()] if len(attacked) else None
        for prefix, pick in (("chosen", chosen), ("strongest", strongest)):
            for col in PICK:
                row[f"{prefix}_{col}"] = (None if col == "label" else math.nan) \
                    if pick is None else pick[col]
        row["chosen_recovery"] = row["chosen_retained"] - row["unattacked"]
        row["strongest_breaks_budget"] = bool(strongest is not None
                                              and not ok[strongest.name])
        row["budget"] = budget
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(v) -> str:
    return "–" if v is None or pd.isna(v) else f"{100 * v:.1f}"


def _ci(r, col) -> str:
    return f"{_pct(r[col])} [{_pct(r[col + '_ci_low'])}, {_pct(r[col + '_ci_high'])}]"


def to_markdown(table: pd.DataFrame, budget: float, utility: str) -> str:
    caption = (f"**Worst attack under a utility budget.** Per unlearned model, among every attack "
               "the run applied (each quant scheme x bits, relearning data x k steps, pruning "
               "sparsity, on each attacked quant), the one retaining the most KnowMem_f (% of the "
               "target's at the attack's quant, un-attacked; 95% paired bootstrap over items) "
               f"while utility ({utility}) keeps >= {100 * (1 - budget):.0f}% of the un-attacked "
               f"model's (drop <= {100 * budget:g}%, `report.utility_budget`). Utility: % of the "
               "un-attacked model's, 95% paired bootstrap over items. Strongest: the attack "
               "retaining most regardless of utility; `breaks budget` = yes when a report "
               "without the budget would quote an attack that costs more utility than allowed.")
    if table.empty:
        return caption + "\n\n(no unlearned model)\n"
    head = ["bench", "method", "hp", "seed", "un-attacked", "attacks (within budget)",
            "worst attack within budget", "retained", "utility", "strongest attack",
            "retained", "utility", "breaks budget"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [str(r.bench), str(r.method), str(r.hp), str(r.seed), _ci(r, "unattacked"),
                 f"{r.n_attacks} ({r.n_within_budget})", str(r.chosen_label or "none"),
                 _ci(r, "chosen_retained"), _ci(r, "chosen_utility_ratio"),
                 str(r.strongest_label or "none"), _ci(r, "strongest_retained"),
                 _ci(r, "strongest_utility_ratio"), "yes" if r.strongest_breaks_budget else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def relearn_figure(matrix: pd.DataFrame, budget: float):
    """Knowledge retained vs relearning steps (forget data, at the un-attacked quant; step 0 =
    un-attacked), one colour per method: solid, the most retained among the method's hps whose
    utility drop (mean over seeds) is within the budget; dashed, the most regardless of utility;
    x where that one breaks the budget. A step where no hp stays within the budget has no solid
    point."""
    import matplotlib.pyplot as plt

    from relapse.report.figures import STYLE, _colour
    from relapse.report.measures import method_order

    base = matrix[matrix.unattacked]
    q0 = dict(zip(base.bench, base.quant))
    rel = matrix[(matrix.attack == "relearn") & (matrix.attack_data == "forget")
                 & (matrix.quant == matrix.bench.map(q0))]
    frame = pd.concat([base.assign(attack_steps=0.0), rel], ignore_index=True)
    per_hp = frame.groupby(["bench", "method", "hp", "attack_steps"])[
        ["retained", "utility_drop"]].mean().reset_index()
    # benches without relearning would show step 0 alone
    benches = list(dict.fromkeys(rel.bench)) or list(dict.fromkeys(frame.bench))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(benches), figsize=(5.2 * len(benches), 3.8),
                                 squeeze=False)
        for ax, bench in zip(axes[0], benches):
            mine = per_hp[per_hp.bench == bench]
            for i, method in enumerate(method_order(mine.method)):
                g = mine[mine.method == method]
                ok = g[g.utility_drop.le(budget)]
                best = ok.loc[ok.groupby("attack_steps").retained.idxmax()]
                top = g.loc[g.groupby("attack_steps").retained.idxmax()]
                ax.plot(best.attack_steps, 100 * best.retained, "o-", color=_colour(i),
                        label=f"{method} (utility drop ≤ {100 * budget:g}%)")
                ax.plot(top.attack_steps, 100 * top.retained, "--", color=_colour(i),
                        label=f"{method} (any utility)")
                broke = top[top.utility_drop.gt(budget)]
                ax.plot(broke.attack_steps, 100 * broke.retained, "x", color=_colour(i),
                        markersize=9, label=f"{method}: breaks the budget")
            ax.set_title(bench)
            ax.set_xlabel("relearning steps on forget data")
            ax.set_ylabel("KnowMem_f retained (% of target)")
            ax.legend(frameon=False)
        fig.tight_layout()
    return fig
