"""The durability ranking: which unlearning method survives the attacks (reads CSV/Parquet only).

One row per (bench, method) at its selected hp (the durability table's `selected` rows), built
from the durability table (relapse.report.durability, one row per attacked model) and the
metrics table (KnowMem_r). Every quantity is knowledge retained, KnowMem_f(model) /
KnowMem_f(target) with the target at the same quant (or pruned at the same sparsity), with the
durability table's 95% interval:
  full        at full precision (the durability table's quant q0);
  worst_4bit  after the 4-bit scheme that retains most;
  relearn     after k steps of relearning on forget data, scored on the forget facts the
              attacker never saw (`_heldout` columns) where the run holds facts out, else
              in-sample (`relearn_facts` says which); `relearn_before` is the same facts'
              retained before the attack;
  prune       after magnitude pruning, matched (of the target pruned at the same sparsity); the
              sparsity that retains most where several ran;
  worst       the worst case for the defender: the largest of worst_4bit, relearn and prune
              that was measured (`worst_attack` names it; its interval is that attack's).
Utility is KnowMem_r (ROUGE-L F1 ×100) of the model at q0 with its bootstrap interval; the
verdict is the durability table's label (the held-out one where it exists). Rows are sorted by
`worst`, the most durable (lowest) first; a missing attack is NaN and left out of the maximum.
Several seeds: values and interval bounds are averaged, as the durability table averages
cells; labels that differ are joined.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

ATTACKS = ("worst_4bit", "relearn", "prune")
MEASURES = ("full",) + ATTACKS + ("worst",)
KEYS = ["bench", "method", "hp"]


def _triple(row: pd.Series, name: str) -> tuple[float, float, float]:
    """(value, ci_low, ci_high) of a durability column; NaN where the column is absent."""
    return tuple(float(row[c]) if c in row.index and pd.notna(row[c]) else float("nan")
                 for c in (name, f"{name}_ci_low", f"{name}_ci_high"))


def _relearn_column(columns) -> tuple[str | None, str | None, str]:
    """The relearning column (held-out where present), its k, and which facts it scores."""
    ks = [m.group(1) for c in columns if (m := re.fullmatch(r"relearn_k(\d+)", c))]
    if not ks:
        return None, None, "none"
    k = ks[0]
    if f"relearn_k{k}_heldout" in columns:
        return f"relearn_k{k}_heldout", k, "held-out"
    return f"relearn_k{k}", k, "in-sample"


def _utility(metrics: pd.DataFrame | None, bench, method, hp, seed, quant):
    if metrics is None:
        return (float("nan"),) * 3
    hit = metrics[(metrics.metric == "knowmem") & (metrics.split == "retain")
                  & (metrics.stat == "rougeL_f1") & (metrics.bench == bench)
                  & (metrics.method == method) & (metrics.hp == hp)
                  & (metrics.seed == seed) & (metrics.quant == quant)]
    if not len(hit):
        return (float("nan"),) * 3
    return float(hit.value.mean()), float(hit.ci_low.mean()), float(hit.ci_high.mean())


def _one(row: pd.Series, relearn_col, prune_cols, metrics) -> dict:
    out = {"bench": row.bench, "method": row.method, "hp": row.hp, "seed": row.seed,
           "quant": row.get("quant")}

    def put(name, triple):
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = triple

    put("full", _triple(row, "full"))
    put("worst_4bit", _triple(row, "worst_4bit"))
    out["worst_4bit_quant"] = row.get("worst_4bit_quant")
    put("relearn", _triple(row, relearn_col) if relearn_col else (float("nan"),) * 3)
    # the same facts before the attack: what relearning started from
    before = "full_heldout" if relearn_col and relearn_col.endswith("_heldout") else "full"
    put("relearn_before", _triple(row, before))
    pruned = [(c, _triple(row, c)) for c in prune_cols]
    pruned = [p for p in pruned if pd.notna(p[1][0])]
    best = max(pruned, key=lambda p: p[1][0]) if pruned else None
    put("prune", best[1] if best else (float("nan"),) * 3)
    out["prune_sparsity"] = float(best[0][len("prune_s"):]) if best else float("nan")
    measured = [(a, out[a]) for a in ATTACKS if pd.notna(out[a])]
    if measured:
        attack = max(measured, key=lambda p: p[1])[0]
        put("worst", (out[attack], out[f"{attack}_ci_low"], out[f"{attack}_ci_high"]))
        out["worst_attack"] = attack
    else:
        put("worst", (float("nan"),) * 3)
        out["worst_attack"] = None
    put("knowmem_retain", _utility(metrics, row.bench, row.method, row.hp, row.seed,
                                   row.get("quant")))
    held = "label_heldout" in row.index and pd.notna(row.get("label_heldout"))
    out["verdict"] = row.get("label_heldout") if held else row.get("label")
    out["verdict_facts"] = "held-out" if held else "in-sample"
    return out


def _joined(values) -> str | None:
    seen = [str(v) for v in dict.fromkeys(values) if pd.notna(v)]
    return " / ".join(seen) if seen else None


def ranking_table(durability: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ranking (module docstring) from a durability table and the metrics table."""
    if durability.empty or "selected" not in durability:
        return pd.DataFrame()
    chosen = durability[durability.selected.astype(str).str.lower() == "true"]
    relearn_col, k, facts = _relearn_column(durability.columns)
    prune_cols = [c for c in durability.columns
                  if re.fullmatch(r"prune_s[0-9.e+-]+", c) and not c.endswith("_vs_unpruned")]
    rows = pd.DataFrame([_one(r, relearn_col, prune_cols, metrics)
                         for _, r in chosen.iterrows()])
    if rows.empty:
        return rows
    numeric = [f"{m}{end}" for m in MEASURES + ("relearn_before", "knowmem_retain")
               for end in ("", "_ci_low", "_ci_high")] + ["prune_sparsity"]
    text = ["quant", "worst_4bit_quant", "worst_attack", "verdict", "verdict_facts"]
    grouped = rows.groupby(KEYS, sort=False)
    table = grouped[numeric].mean()
    for c in text:
        table[c] = grouped[c].agg(_joined)
    table["seeds"] = grouped.seed.agg(lambda s: " ".join(str(int(v)) for v in sorted(s)))
    table = table.reset_index()
    table["relearn_k"] = int(k) if k is not None else pd.NA
    table["relearn_facts"] = facts
    table = table.sort_values(["bench", "worst", "full", "method"], na_position="last",
                              kind="stable").reset_index(drop=True)
    table.insert(0, "rank", table.groupby("bench").cumcount() + 1)
    lead = ["rank", "bench", "method", "hp", "seeds", "quant"]
    body = [f"{m}{end}" for m in MEASURES for end in ("", "_ci_low", "_ci_high")]
    rest = ["worst_attack", "worst_4bit_quant", "relearn_k", "relearn_facts", "relearn_before",
            "relearn_before_ci_low", "relearn_before_ci_high", "prune_sparsity",
            "knowmem_retain", "knowmem_retain_ci_low", "knowmem_retain_ci_high", "verdict",
            "verdict_facts"]
    return table[lead + body + rest]


def _pct(r, m) -> str:
    if pd.isna(r[m]):
        return "–"
    return f"{100 * r[m]:.1f} [{100 * r[m + '_ci_low']:.1f}, {100 * r[m + '_ci_high']:.1f}]"


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no attacked unlearned model at its selected hp)\n"
    k, facts = table.relearn_k.iloc[0], table.relearn_facts.iloc[0]
    head = ["rank", "bench", "method", "hp", "full precision", "worst 4-bit",
            f"relearn k={k} ({facts})", "prune (matched)", "worst case", "KnowMem_r", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        four = _pct(r, "worst_4bit") + (f" {r.worst_4bit_quant}" if pd.notna(r.worst_4bit_quant)
                                        else "")
        prune = _pct(r, "prune") + (f" s={r.prune_sparsity:g}" if pd.notna(r.prune_sparsity)
                                    else "")
        worst = _pct(r, "worst") + (f" ({r.worst_attack})" if pd.notna(r.worst_attack) else "")
        util = "–" if pd.isna(r.knowmem_retain) else (
            f"{r.knowmem_retain:.1f} [{r.knowmem_retain_ci_low:.1f}, "
            f"{r.knowmem_retain_ci_high:.1f}]")
        cells = [str(r["rank"]), str(r.bench), str(r.method), str(r.hp), _pct(r, "full"), four,
                 _pct(r, "relearn"), prune, worst, util, f"{r.verdict} ({r.verdict_facts})"]
        lines.append("| " + " | ".join(cells) + " |")
    return ("Durability ranking: each method at its selected hp. Knowledge retained, % of the "
            "target's KnowMem_f at the same quant (pruned: of the target pruned at the same "
            "sparsity), 95% CI over items; worst case: the largest over the attacks measured "
            "(4-bit, relearning, pruning), sorted lowest (most durable) first. KnowMem_r: "
            "ROUGE-L F1 ×100 at full precision. Verdict: the durability label "
            "(durability.md gives its rule).\n\n" + "\n".join(lines) + "\n")


def ranking_figure(table: pd.DataFrame):
    """One point per method: retained at full precision (x) against worst-case retained after
    attack (y), with their intervals and the diagonal y = x (above it: an attack brings
    knowledge back)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from relapse.report.figures import STYLE, _colour

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 5.0))
        shown = table.dropna(subset=["full", "worst"]) if len(table) else table
        for i, bench in enumerate(dict.fromkeys(shown.bench) if len(shown) else []):
            part = shown[shown.bench == bench]
            x, y = 100 * part.full.to_numpy(float), 100 * part.worst.to_numpy(float)
            xlo, xhi = (100 * part[c].to_numpy(float) for c in ("full_ci_low", "full_ci_high"))
            ylo, yhi = (100 * part[c].to_numpy(float) for c in ("worst_ci_low", "worst_ci_high"))
            # a bound that is NaN (no interval) draws no bar rather than failing
            ax.errorbar(x, y, xerr=np.nan_to_num([x - xlo, xhi - x]),
                        yerr=np.nan_to_num([y - ylo, yhi - y]),
                        fmt="o", color=_colour(i), ecolor=_colour(i), elinewidth=0.8,
                        capsize=2, label=bench)
            for xi, yi, m in zip(x, y, part.method):
                ax.annotate(m, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=8)
        values = [100 * float(v) for c in ("full", "worst", "full_ci_high", "worst_ci_high")
                  for v in (shown[c] if len(shown) else []) if pd.notna(v)]
        top = max([100.0] + values) * 1.05
        ax.plot([0, top], [0, top], color="0.5", linestyle="--", linewidth=1,
                label="y = x (no attack effect)")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("knowledge retained at full precision (% of target)")
        ax.set_ylabel("worst-case knowledge retained after attack (% of target)")
        ax.legend(loc="lower right")
    return fig


def write_ranking(durability_path, metrics_path, out_stem, figure_stem) -> pd.DataFrame:
    """ranking.{csv,md} at `out_stem` and the figure (PNG, SVG) at `figure_stem`."""
    from relapse.io import write_csv, write_text
    from relapse.report.figures import save

    durability = pd.read_csv(durability_path, dtype={"method": str, "hp": str})
    metrics = pd.read_parquet(metrics_path) if metrics_path else None
    table = ranking_table(durability, metrics)
    write_csv(f"{out_stem}.csv", table)
    write_text(f"{out_stem}.md", to_markdown(table))
    save(ranking_figure(table), figure_stem)
    return table
