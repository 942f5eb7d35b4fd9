"""The report's answers over the whole attack matrix (issue [meta-eval] items 3, 4, 6): the worst
attack under a utility budget, revival across every hp, and whether the diagnostics predict the
attacks. Which of them a run gets is plan.meta_parts' decision (what the config gives them);
this writes the tables and figures of the parts asked for.

  tables/worst_case.{md,csv}             worst_case.py
  figures/worst_case_relearn.{png,svg}   with relearning
  tables/revival.{md,csv}, figures/revival.{png,svg}   revival.py (csv: one row per point)
  tables/diagnostics_vs_attacks.{md,csv}, figures/diagnostics_vs_attacks.{png,svg}
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from relapse.io import write_csv, write_text
from relapse.report.plan import META_DIAGNOSTICS, META_RELEARN_FIGURE, META_REVIVAL, META_WORST

def write_meta(metrics: pd.DataFrame, cfg: dict, tables_dir: str | Path, figures_dir: str | Path,
               parts: set[str], attacks: str | None = None, samples: list[str] | None = None,
               diagnostics: list[str] | None = None, represent: list[str] | None = None
               ) -> list[Path]:
    """Write the parts named in `parts` (plan.META_*); `samples`: the samples.parquet of the
    un-attacked and attacked cells; `diagnostics`, `represent`: the survival and repr files."""
    from relapse.report import diagnostics_attacks as da
    from relapse.report import revival, worst_case
    from relapse.report.attack_matrix import _item_index, attack_matrix, item_paths_scores
    from relapse.report.build import report_settings
    from relapse.report.figures import save
    from relapse.report.inputs import read_diagnostics
    from relapse.report.measures import bootstrap_settings

    if not parts:
        return []
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    s = report_settings(cfg)
    boot = bootstrap_settings(cfg.get("evaluation", {}).get("bootstrap"))
    att = pd.read_parquet(attacks) if attacks and Path(attacks).exists() else None
    items = item_paths_scores(samples or [])
    matrix = attack_matrix(metrics, att, items, boot)
    budget = s["utility_budget"]
    worst = worst_case.worst_case(matrix, budget)
    out = []
    if META_WORST in parts:
        utility = matrix.utility_measure.iloc[0] if len(matrix) else "knowmem/retain/rougeL_f1"
        write_text(tables_dir / f"{META_WORST}.md", worst_case.to_markdown(worst, budget, utility))
        write_csv(tables_dir / f"{META_WORST}.csv", worst)
        out += [tables_dir / f"{META_WORST}.md", tables_dir / f"{META_WORST}.csv"]
    if META_RELEARN_FIGURE in parts:
        out += save(worst_case.relearn_figure(matrix, budget), figures_dir / META_RELEARN_FIGURE)
    if META_REVIVAL in parts:
        points = revival.revival_points(matrix, _item_index(items), boot)
        write_text(tables_dir / f"{META_REVIVAL}.md",
              revival.to_markdown(revival.revival_counts(points), points))
        write_csv(tables_dir / f"{META_REVIVAL}.csv", points)
        out += [tables_dir / f"{META_REVIVAL}.md", tables_dir / f"{META_REVIVAL}.csv"]
        out += save(revival.revival_figure(points), figures_dir / META_REVIVAL)
    if META_DIAGNOSTICS in parts:
        diag = da.diagnostic_values(da.read_repr(represent or []),
                                    read_diagnostics(diagnostics or []))
        rec = da.recoveries(matrix, worst)
        minimum = s["min_correlation_models"]
        table = da.correlations(diag, rec, minimum, boot)
        write_text(tables_dir / f"{META_DIAGNOSTICS}.md", da.to_markdown(table, minimum))
        write_csv(tables_dir / f"{META_DIAGNOSTICS}.csv", table)
        out += [tables_dir / f"{META_DIAGNOSTICS}.md", tables_dir / f"{META_DIAGNOSTICS}.csv"]
        out += save(da.scatter_figure(diag, rec, table), figures_dir / META_DIAGNOSTICS)
    return out
