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
FIGURE_FORMATS = ("png", "svg")
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


def outputs(diagnostics: bool = False, relearn: bool = False) -> dict[str, Output]:
    """Every output of the report rule by name; those with a caption go into the HTML report."""
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
    figures = list(FIGURES) + [DIAGNOSTICS_FIGURE] * diagnostics + [RELEARN_FIGURE] * relearn
    for name in figures:
        for fmt in FIGURE_FORMATS:
            out[f"{name}_{fmt}"] = Output(f"{FIGURES_DIR}/{name}.{fmt}",
                                          f"../report/figure_{name}.rst", "Figures", name,
                                          {"figure": name, "format": fmt})
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


def optional_flags(diagnostics, relearn) -> str:
    """The `relapse report` flags for the optional inputs the plan has (an empty string when
    none)."""
    flags = ""
    if diagnostics:
        flags += " --diagnostics " + " ".join(str(p) for p in diagnostics)
    if relearn:
        flags += f" --relearn {list(relearn)[0]}"
    return flags
