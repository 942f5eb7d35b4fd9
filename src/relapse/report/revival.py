"""Revival across every hp: does 4-bit quantization bring knowledge back in general, or only at
the hp the paper tables select?

One point per (bench, method, hp, seed) and 4-bit scheme: x = KnowMem_f retained at full
precision, y = retained after that scheme (each / the target's at the same quant, as the
report's retained). Its difference d = y - x has a 95% interval from the paired bootstrap over
items: each resample draws the items once and uses them for the model and the target at both
quants, so the four means (and the two ratios) move together. A point lies above the diagonal
by more than its CI when lo(d) > 0, below when hi(d) < 0; without per-item scores it is
undetermined.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from relapse.report.attack_matrix import MODEL
from relapse.report.measures import quant_parts


def _diff_ci(u_q, t_q, u_0, t_0, boot: dict) -> tuple[float, float]:
    """95% percentile interval of mean(u_q)/mean(t_q) - mean(u_0)/mean(t_0) over the items all
    four share, items drawn once per resample for all four."""
    from relapse.stats import paired_item_means

    if any(s is None for s in (u_q, t_q, u_0, t_0)):
        return math.nan, math.nan
    common = u_q.index.intersection(t_q.index).intersection(u_0.index).intersection(t_0.index)
    if not len(common):
        return math.nan, math.nan
    means = paired_item_means(np.vstack([s[common].to_numpy() for s in (u_q, t_q, u_0, t_0)]),
                              boot["samples"], boot["seed"])
    with np.errstate(divide="ignore", invalid="ignore"):
        d = means[:, 0] / means[:, 1] - means[:, 2] / means[:, 3]
    if not len(d) or np.isnan(d).all():
        return math.nan, math.nan
    lo, hi = np.nanpercentile(d, [2.5, 97.5])
    return float(lo), float(hi)


def revival_points(matrix: pd.DataFrame, items: dict | None = None, boot: dict | None = None
                   ) -> pd.DataFrame:
    """`matrix`: attack_matrix's rows; `items`: attack_matrix._item_index of the per-item
    scores (None: no intervals)."""
    from relapse.report.attack_matrix import _target_items

    boot = {"samples": 1000, "seed": 0, **(boot or {})}
    items = items or {}
    rows = []
    if matrix.empty:
        return pd.DataFrame(rows)
    quant_only = matrix[matrix.attack == "none"]
    four = quant_only[[quant_parts(q)[1] == 4 for q in quant_only.quant]]
    for key, group in four.groupby(MODEL + ["quant"], sort=False):
        bench, method, hp, seed, quant = key
        base = quant_only[(quant_only.bench == bench) & (quant_only.method == method)
                          & (quant_only.hp == hp) & (quant_only.seed == seed)
                          & quant_only.unattacked]
        if not len(base):
            continue
        b, q = base.iloc[0], group.iloc[0]
        q0 = b.quant
        lo, hi = _diff_ci(items.get((*key, "none", "none", 0.0, 0.0, "forget")),
                          _target_items(items, bench, quant, "forget"),
                          items.get((bench, method, hp, seed, q0, "none", "none", 0.0, 0.0,
                                     "forget")),
                          _target_items(items, bench, q0, "forget"), boot)
        diff = q.retained - b.retained
        where = ("undetermined" if math.isnan(lo) else "above" if lo > 0
                 else "below" if hi < 0 else "on")
        rows.append({**dict(zip(MODEL, key[:4])), "quant": quant, "full_quant": q0,
                     "full": b.retained, "full_ci_low": b.retained_ci_low,
                     "full_ci_high": b.retained_ci_high, "quantized": q.retained,
                     "quantized_ci_low": q.retained_ci_low,
                     "quantized_ci_high": q.retained_ci_high, "diff": diff, "diff_ci_low": lo,
                     "diff_ci_high": hi, "position": where})
    return pd.DataFrame(rows)


def revival_counts(points: pd.DataFrame) -> pd.DataFrame:
    """Per (bench, method, 4-bit quant): how many points lie above the diagonal by more than
    their CI, below it, within it (`on`), or have no CI."""
    cols = ["above", "below", "on", "undetermined"]
    if points.empty:
        return pd.DataFrame(columns=["bench", "method", "quant", "points", *cols])
    counts = (points.groupby(["bench", "method", "quant"]).position.value_counts()
              .unstack(fill_value=0).reindex(columns=cols, fill_value=0))
    counts.insert(0, "points", counts.sum(axis=1))
    return counts.reset_index()


def to_markdown(counts: pd.DataFrame, points: pd.DataFrame) -> str:
    caption = ("**Revival across every hp.** One point per (method, hp, seed) and 4-bit scheme: "
               "KnowMem_f retained at full precision (x) and after the scheme (y), each % of the "
               "target's at the same quant. `above`: y - x > 0 by more than its 95% interval "
               "(paired bootstrap over items: model and target, both quants, the same items per "
               "resample), `below`: y - x < 0 likewise, `on`: the interval holds 0, "
               "`undetermined`: no per-item scores.")
    if counts.empty:
        return caption + "\n\n(no unlearned model with a 4-bit scheme)\n"
    head = list(counts.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in counts.itertuples(index=False)]
    phead = ["bench", "method", "hp", "seed", "quant", "full", "quantized", "y - x", "position"]
    plines = ["| " + " | ".join(phead) + " |", "|" + "---|" * len(phead)]

    def ci(r, c):
        return (f"{100 * r[c]:.1f} [{100 * r[c + '_ci_low']:.1f}, "
                f"{100 * r[c + '_ci_high']:.1f}]")

    for _, r in points.iterrows():
        plines.append("| " + " | ".join([str(r.bench), str(r.method), str(r.hp), str(r.seed),
                                         str(r.quant), ci(r, "full"), ci(r, "quantized"),
                                         ci(r, "diff"), str(r.position)]) + " |")
    return (caption + "\n\n" + "\n".join(lines) + "\n\nThe points:\n\n" + "\n".join(plines)
            + "\n")


def revival_figure(points: pd.DataFrame):
    """Retained at full precision (x) vs after each 4-bit scheme (y), one point per (method,
    hp, seed), colour per method, marker per scheme, filled when above the diagonal by more
    than its CI; the diagonal y = x drawn."""
    import matplotlib.pyplot as plt

    from relapse.report.figures import STYLE, _colour
    from relapse.report.measures import method_order

    markers = "osD^v<>P"
    benches = list(dict.fromkeys(points.bench))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, max(len(benches), 1), figsize=(4.6 * max(len(benches), 1),
                                                                    4.4), squeeze=False)
        for ax, bench in zip(axes[0], benches):
            mine = points[points.bench == bench]
            quants = list(dict.fromkeys(mine.quant))
            for i, method in enumerate(method_order(mine.method)):
                for j, quant in enumerate(quants):
                    g = mine[(mine.method == method) & (mine.quant == quant)]
                    if not len(g):
                        continue
                    up = g.position == "above"
                    ax.errorbar(100 * g.full, 100 * g.quantized,
                                yerr=[100 * (g.quantized - g.quantized_ci_low).fillna(0),
                                      100 * (g.quantized_ci_high - g.quantized).fillna(0)],
                                fmt="none", ecolor=_colour(i), alpha=0.4)
                    for filled, sub in ((True, g[up]), (False, g[~up])):
                        if len(sub):
                            ax.plot(100 * sub.full, 100 * sub.quantized, markers[j % 8],
                                    color=_colour(i), mfc=_colour(i) if filled else "none",
                                    label=f"{method}, {quant}" + (" (above)" if filled else ""))
            top = max(100.0, float(100 * mine[["full", "quantized"]].max().max()))
            ax.plot([0, top], [0, top], color="0.5", lw=1, label="y = x")
            ax.set_title(bench)
            ax.set_xlabel("KnowMem_f retained, full precision (%)")
            ax.set_ylabel("KnowMem_f retained, 4-bit (%)")
            ax.legend(frameon=False, fontsize=7)
        fig.tight_layout()
    return fig
