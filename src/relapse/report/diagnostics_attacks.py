"""Do the diagnostics predict the attacks? Seed 001 claims that representation measures tell
reversible from irreversible forgetting; this puts that to the run's own models.

Across every unlearned model of a run (bench, method, hp, seed), Spearman's rank correlation
between each diagnostic and the recovery each attack achieves (attack_matrix.recovery: retained
after the attack - retained un-attacked; `worst case within budget` is worst_case's pick), with
a 95% percentile bootstrap interval resampling models. Diagnostics:
- repr.parquet (attacks.represent): CKA, PCA shift, Fisher and its log ratio, of the un-attacked
  model against the target (and the retrain) on forget data, per layer and their mean over
  layers (`mean`);
- diagnostics.parquet (quantization.diagnostics): update survival under each scheme, per layer
  (mean over the layer's modules) and over all modules (`mean`).
With fewer than `min_models` models (config `report.min_correlation_models`) a pair gets no
rho: the table says so in its `answer` column instead of printing a number from too few points.
Spearman's rho is the Pearson correlation of the average ranks (ties share their mean rank).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from relapse.report.attack_matrix import MODEL

DEFAULT_MIN_MODELS = 5
REPR_MEASURES = ("cka", "pca_shift", "fisher", "fisher_log_ratio")
WORST = "worst case within budget"


def spearman(x, y) -> float:
    """Spearman's rho of two equal-length samples: Pearson's r of their average ranks; NaN when
    either is constant or has fewer than 2 values."""
    x, y = pd.Series(np.asarray(x, float)), pd.Series(np.asarray(y, float))
    if len(x) < 2 or x.nunique() < 2 or y.nunique() < 2:
        return math.nan
    rx, ry = x.rank().to_numpy(), y.rank().to_numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum()))


def _with_mean(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows (model, diagnostic, value) per layer and their mean over layers."""
    per_layer = frame.assign(diagnostic=[f"{n} L{layer}" for n, layer in
                                         zip(frame.name_, frame.layer)])
    mean = frame.groupby(MODEL + ["name_"], as_index=False).value.mean()
    mean["diagnostic"] = mean.name_ + " mean"
    return pd.concat([per_layer, mean], ignore_index=True)[MODEL + ["diagnostic", "value"]]


def diagnostic_values(repr_table: pd.DataFrame | None, survival: pd.DataFrame | None
                      ) -> pd.DataFrame:
    """One row per (model, diagnostic): its value. Attacked models' repr rows (those with an
    attack column set) are left out: the question is whether the un-attacked model predicts."""
    frames = []
    if repr_table is not None and len(repr_table):
        r = repr_table
        if "attack" in r:
            r = r[r.attack.isna() | (r.attack == "none")]
        r = r[r.measure.isin(REPR_MEASURES) & (r.split == "forget")]
        r = r.assign(name_=[f"{m} vs {ref} ({q})" if ref != "none" else f"{m} ({q})"
                            for m, ref, q in zip(r.measure, r.reference, r.quant)])
        r = r.groupby(MODEL + ["name_", "layer"], as_index=False).value.mean()
        frames.append(_with_mean(r))
    if survival is not None and len(survival):
        s = survival.assign(name_=[f"update survival ({q})" for q in survival.quant],
                            value=survival.update_survival)
        s = s.groupby(MODEL + ["name_", "layer"], as_index=False).value.mean()
        frames.append(_with_mean(s))
    if not frames:
        return pd.DataFrame(columns=MODEL + ["diagnostic", "value"])
    return pd.concat(frames, ignore_index=True)


def recoveries(matrix: pd.DataFrame, worst: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (model, attack): its recovery; the worst-case pick as attack WORST."""
    att = matrix[~matrix.unattacked][MODEL + ["label", "recovery"]].rename(
        columns={"label": "attack"})
    if worst is not None and len(worst):
        w = worst[MODEL + ["chosen_recovery"]].rename(columns={"chosen_recovery": "recovery"})
        att = pd.concat([att, w.assign(attack=WORST)], ignore_index=True)
    return att.dropna(subset=["recovery"])


def correlations(diag: pd.DataFrame, rec: pd.DataFrame, min_models: int = DEFAULT_MIN_MODELS,
                 boot: dict | None = None) -> pd.DataFrame:
    """One row per (diagnostic, attack) with n models having both; rho and its interval when
    n >= min_models, else NaN and `answer` saying why."""
    from relapse.stats import bootstrap_statistic

    boot = {"samples": 1000, "seed": 0, **(boot or {})}
    rows = []
    both = diag.merge(rec, on=MODEL)
    for (d, a), g in both.groupby(["diagnostic", "attack"], sort=False):
        x, y = g.value.to_numpy(float), g.recovery.to_numpy(float)
        row = {"diagnostic": d, "attack": a, "n_models": len(g), "min_models": min_models}
        if len(g) < min_models:
            row.update(rho=math.nan, rho_ci_low=math.nan, rho_ci_high=math.nan,
                       answer=f"no answer: n = {len(g)} < {min_models} models")
        else:
            rho, lo, hi = bootstrap_statistic(lambda i: spearman(x[i], y[i]), len(g),
                                              samples=boot["samples"], seed=boot["seed"])
            row.update(rho=rho, rho_ci_low=lo, rho_ci_high=hi,
                       answer="rho undefined (a constant)" if math.isnan(rho) else "yes")
        rows.append(row)
    return pd.DataFrame(rows, columns=["diagnostic", "attack", "n_models", "min_models", "rho",
                                       "rho_ci_low", "rho_ci_high", "answer"])


def to_markdown(table: pd.DataFrame, min_models: int) -> str:
    refused = int((table.n_models < min_models).sum()) if len(table) else 0
    caption = ("**Do the diagnostics predict the attacks?** Spearman's rank correlation across "
               "the run's unlearned models (every method, hp and seed) between each diagnostic "
               "of the un-attacked model and the recovery an attack achieves (KnowMem_f "
               "retained after it minus before, in units of the target's), 95% percentile "
               f"bootstrap over models. A pair with fewer than {min_models} models "
               "(`report.min_correlation_models`) gets no rho: "
               f"{refused} of {len(table)} pairs here have too few models for an answer.")
    if table.empty:
        return caption + "\n\n(no model has both a diagnostic and an attack)\n"
    head = ["diagnostic", "attack", "n models", "rho [95% CI]", "answer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.itertuples():
        rho = ("–" if math.isnan(r.rho)
               else f"{r.rho:.2f} [{r.rho_ci_low:.2f}, {r.rho_ci_high:.2f}]")
        lines.append(f"| {r.diagnostic} | {r.attack} | {r.n_models} | {rho} | {r.answer} |")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def scatter_figure(diag: pd.DataFrame, rec: pd.DataFrame, table: pd.DataFrame):
    """One panel per summary diagnostic (its mean over layers): the diagnostic (x) against the
    worst-case recovery within the budget (y; else the first attack), one point per model,
    titled with rho or why there is none."""
    import matplotlib.pyplot as plt

    from relapse.report.figures import STYLE, _colour
    from relapse.report.measures import method_order

    attack = WORST if (rec.attack == WORST).any() else (rec.attack.iloc[0] if len(rec) else "")
    summaries = [d for d in dict.fromkeys(diag.diagnostic) if d.endswith(" mean")]
    both = diag[diag.diagnostic.isin(summaries)].merge(rec[rec.attack == attack], on=MODEL)
    n = max(len(summaries), 1)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
        methods = method_order(both.method) if len(both) else []
        for ax, d in zip(axes.flat, summaries):
            g = both[both.diagnostic == d]
            for i, m in enumerate(methods):
                h = g[g.method == m]
                ax.plot(h.value, 100 * h.recovery, "o", color=_colour(i), label=m)
            hit = table[(table.diagnostic == d) & (table.attack == attack)]
            title = d
            if len(hit):
                r = hit.iloc[0]
                title += ("\n" + (f"rho = {r.rho:.2f} [{r.rho_ci_low:.2f}, {r.rho_ci_high:.2f}]"
                                  if not math.isnan(r.rho) else r.answer))
            ax.set_title(title, fontsize=8)
            ax.set_xlabel(d.rsplit(" mean", 1)[0], fontsize=8)
            ax.set_ylabel(f"recovery, {attack} (% of T)", fontsize=8)
        for ax in list(axes.flat)[len(summaries):]:
            ax.axis("off")
        if methods:
            axes.flat[0].legend(frameon=False, fontsize=7)
        fig.tight_layout()
    return fig


def read_repr(paths: list[str]) -> pd.DataFrame | None:
    from pathlib import Path

    frames = [pd.read_parquet(p) for p in paths if Path(p).exists()]
    return pd.concat(frames, ignore_index=True) if frames else None
