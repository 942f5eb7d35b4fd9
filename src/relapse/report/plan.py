"""The report rule's outputs, as data: the Snakefile wraps each in report() with its caption.

Kept here (not in the .smk) so that the file names written by build.py and the ones the rule
declares come from one place, and so that tests can check them without Snakemake. Imported
when the Snakefile is parsed (by every SLURM job too), so it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TABLES = ("main", "retained", "grid")
TABLE_FORMATS = ("md", "tex", "csv")
FIGURES = ("retained_by_precision", "retained_heatmap")
DIAGNOSTICS_FIGURE = "survival_by_layer"
RELEARN_FIGURE = "relearn_curves"
# The meta-evaluation (report.metric_robustness, report.faithfulness): faithfulness from the
# metrics alone, robustness (tables + heatmap) only when attacks ran.
FAITHFULNESS = "faithfulness"
FAITHFULNESS_FORMATS = ("md", "csv")
ROBUSTNESS = "metric_robustness"
ROBUSTNESS_FORMATS = ("parquet", "md", "csv")
ROBUSTNESS_FIGURE = "metric_robustness"
FIGURE_FORMATS = ("png", "svg")
# Over the whole attack matrix (meta_eval.py): each a table (md, csv) and a figure, but the
# relearning one, a figure only.
META_WORST = "worst_case"
META_RELEARN_FIGURE = "worst_case_relearn"
META_REVIVAL = "revival"
META_DIAGNOSTICS = "diagnostics_vs_attacks"
META_TABLE_FORMATS = ("md", "csv")
TABLES_DIR = "results/tables"
FIGURES_DIR = "results/figures"
# The durability ranking (relapse.report.ranking): only when an unlearned model is attacked.
RANKING = "ranking"
RANKING_FIGURE = "durability_ranking"


@dataclass(frozen=True)
class Output:
    path: str
    caption: str | None = None           # relative to workflow/rules/
    category: str | None = None
    subcategory: str | None = None
    labels: dict = field(default_factory=dict)


def meta_parts(quants, attacked: bool = False, relearn: bool = False, diagnosed: bool = False
               ) -> set[str]:
    """Which meta_eval outputs a run has what they need for: the worst case, an attack beyond
    the un-attacked quant (another quant, or an attacked cell); revival, a full-precision quant
    (none-*) and a 4-bit one; the relearning figure, relearning; the diagnostics, the worst
    case and a diagnostic (survival or repr files)."""
    quants = list(quants)
    parts = set()
    if len(quants) > 1 or attacked:
        parts.add(META_WORST)
    if any(q.startswith("none-") for q in quants) and any(q.endswith("-w4") for q in quants):
        parts.add(META_REVIVAL)
    if relearn:
        parts.add(META_RELEARN_FIGURE)
    if diagnosed and META_WORST in parts:
        parts.add(META_DIAGNOSTICS)
    return parts


def outputs(diagnostics: bool = False, relearn: bool = False, meta: set[str] = frozenset(),
            attacks: bool = False) -> dict[str, Output]:
    """Every output of the report rule by name; those with a caption go into the HTML report.
    `meta`: the meta_eval parts the run has (meta_parts); `attacks`: whether an attack
    table exists (metric robustness)."""
    out = {
        "table": Output(f"{TABLES_DIR}/metrics.parquet"),
        "summary_md": Output(f"{TABLES_DIR}/summary.md"),
        "summary_csv": Output(f"{TABLES_DIR}/summary.csv"),
        "selection": Output(f"{TABLES_DIR}/selection.csv", "../report/selection.rst", "Tables",
                            "hp selection", {"table": "selection", "format": "csv"}),
    }
    for name in TABLES:
        for fmt in TABLE_FORMATS:
            out[f"{name}_{fmt}"] = Output(f"{TABLES_DIR}/{name}.{fmt}",
                                          f"../report/table_{name}.rst", "Tables", name,
                                          {"table": name, "format": fmt})
    for fmt in FAITHFULNESS_FORMATS:
        out[f"{FAITHFULNESS}_{fmt}"] = Output(f"{TABLES_DIR}/{FAITHFULNESS}.{fmt}")
    for fmt in ROBUSTNESS_FORMATS * attacks:
        out[f"{ROBUSTNESS}_{fmt}"] = Output(f"{TABLES_DIR}/{ROBUSTNESS}.{fmt}")
    figures = list(FIGURES) + [DIAGNOSTICS_FIGURE] * diagnostics + [RELEARN_FIGURE] * relearn
    for name in figures:
        for fmt in FIGURE_FORMATS:
            out[f"{name}_{fmt}"] = Output(f"{FIGURES_DIR}/{name}.{fmt}",
                                          f"../report/figure_{name}.rst", "Figures", name,
                                          {"figure": name, "format": fmt})
    for name in (META_WORST, META_REVIVAL, META_DIAGNOSTICS):
        if name in meta:
            for fmt in META_TABLE_FORMATS:
                out[f"{name}_{fmt}"] = Output(f"{TABLES_DIR}/{name}.{fmt}",
                                              f"../report/table_{name}.rst", "Tables", name,
                                              {"table": name, "format": fmt})
    for name in (META_RELEARN_FIGURE, META_REVIVAL, META_DIAGNOSTICS):
        if name in meta:
            for fmt in FIGURE_FORMATS:
                out[f"{name}_figure_{fmt}"] = Output(
                    f"{FIGURES_DIR}/{name}.{fmt}", f"../report/figure_{name}.rst", "Figures",
                    name, {"figure": name, "format": fmt})
    for fmt in FIGURE_FORMATS * attacks:
        out[f"{ROBUSTNESS_FIGURE}_figure_{fmt}"] = Output(
            f"{FIGURES_DIR}/{ROBUSTNESS_FIGURE}.{fmt}", f"../report/figure_{ROBUSTNESS_FIGURE}.rst",
            "Figures", ROBUSTNESS_FIGURE, {"figure": ROBUSTNESS_FIGURE, "format": fmt})
    return out


def ranking_outputs() -> dict[str, Output]:
    """The ranking rule's outputs: the table (Markdown, CSV) and its figure (PNG, SVG)."""
    out = {f"table_{fmt}": Output(f"{TABLES_DIR}/{RANKING}.{fmt}", "../report/table_ranking.rst",
                                  "Tables", RANKING, {"table": RANKING, "format": fmt})
           for fmt in ("md", "csv")}
    for fmt in FIGURE_FORMATS:
        out[f"figure_{fmt}"] = Output(f"{FIGURES_DIR}/{RANKING_FIGURE}.{fmt}",
                                      f"../report/figure_{RANKING_FIGURE}.rst", "Figures",
                                      RANKING_FIGURE, {"figure": RANKING_FIGURE, "format": fmt})
    return out


def optional_flags(diagnostics, relearn, meta=(), attacks=(), attack_samples=(), represent=()
                   ) -> str:
    """The `relapse report` flags for the optional inputs the plan has (an empty string when
    none)."""
    flags = ""
    if meta:
        flags += " --meta " + " ".join(sorted(meta))
    if attacks:
        flags += f" --attacks {list(attacks)[0]}"
    if attack_samples:
        flags += " --attack-samples " + " ".join(str(p) for p in attack_samples)
    if represent:
        flags += " --represent " + " ".join(str(p) for p in represent)
    if diagnostics:
        flags += " --diagnostics " + " ".join(str(p) for p in diagnostics)
    if relearn:
        flags += f" --relearn {list(relearn)[0]}"
    return flags
