"""The report stage: every cell's metrics -> results/tables/* and results/figures/*.

Outputs (names fixed in plan.py, which workflow/rules/report.smk declares):
  tables/metrics.parquet          every metric row, with provenance
  tables/summary.{md,csv}         quick per-quant overview (what `make run` prints)
  tables/selection.csv            the selected hp of each method, and whether it met the floor
  tables/{main,retained,grid}.{md,tex,csv}   the paper tables (a), (b), (c)
  figures/{retained_by_precision,retained_heatmap}.{png,svg}
  figures/survival_by_layer.{png,svg}   only with diagnostics
  figures/relearn_curves.{png,svg}      only with a relearning table
  tables/{worst_case,revival,diagnostics_vs_attacks}.{md,csv} and their figures: the parts
                                  `meta` names (meta_eval.py, plan.meta_parts)
  tables/faithfulness.{md,csv}          the meta-evaluation's faithfulness (report.faithfulness)
  tables/metric_robustness.{parquet,md,csv}, figures/metric_robustness.{png,svg}
                                        only with an attacks table (report.metric_robustness)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from relapse.io import write_csv, write_text
from relapse.report import captions
from relapse.report.measures import (has_world, lm_eval_measures, main_measures, measures,
                                     quant_order, wide)
from relapse.report.plan import DIAGNOSTICS_FIGURE, FIGURES, RELEARN_FIGURE
from relapse.report.paper_tables import PaperTable, grid_table, main_table, retained_table
from relapse.report.selection import DEFAULT as DEFAULT_SELECTION
from relapse.report.selection import select_hps

DEFAULT_REPORT = {"retained_metrics": ["knowmem_forget", "verbmem_forget"],
                  "selection": DEFAULT_SELECTION, "faithfulness": {"min_pool": 5},
                  "utility_budget": 0.10, "min_correlation_models": 5}


def report_settings(cfg: dict) -> dict:
    got = cfg.get("report", {})
    return {"retained_metrics": got.get("retained_metrics", DEFAULT_REPORT["retained_metrics"]),
            "selection": {**DEFAULT_REPORT["selection"], **got.get("selection", {})},
            "faithfulness": {**DEFAULT_REPORT["faithfulness"], **got.get("faithfulness", {})},
            **{k: got.get(k, DEFAULT_REPORT[k])
               for k in ("utility_budget", "min_correlation_models")}}


def retained_keys(settings: dict) -> list[str]:
    """The retained quantities the wide frame computes: KnowMem_f (the grid table's) and the
    configured ones."""
    return list(dict.fromkeys(["knowmem_forget", *settings["retained_metrics"]]))


def with_keys(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics table as published: every key column present (`stage` = evaluate for rows
    of the evaluation stage)."""
    if "stage" not in metrics:
        metrics = metrics.assign(stage="evaluate")
    return metrics


def paper_tables(metrics: pd.DataFrame, cfg: dict, samples: pd.DataFrame | None = None
                 ) -> tuple[dict[str, PaperTable], pd.DataFrame, pd.DataFrame, list[str]]:
    """(tables by name, the wide frame, the selection, the quant order). `samples`: the
    per-item scores the intervals resample (inputs.read_samples), with the evaluation's
    bootstrap settings."""
    settings = report_settings(cfg)
    cfg = {**cfg, "report": settings}
    frame = wide(metrics, retained_keys(settings), samples,
                 cfg.get("evaluation", {}).get("bootstrap", {}))
    quants = quant_order(metrics)
    chosen = select_hps(frame, settings["selection"])
    columns, world = main_measures(metrics), has_world(metrics)
    tables = {
        "main": main_table(frame, chosen, quants, captions.main_caption(cfg, world), columns),
        "retained": retained_table(frame, chosen, quants, settings["retained_metrics"],
                                   captions.retained_caption(cfg),
                                   mean_retained(metrics, samples, chosen,
                                                 settings["retained_metrics"], cfg)),
        "grid": grid_table(frame, quants, captions.grid_caption(cfg, world), columns),
    }
    return tables, frame, chosen, quants


def mean_retained(metrics: pd.DataFrame, samples: pd.DataFrame | None, chosen: pd.DataFrame,
                  retained: list[str], cfg: dict) -> dict[tuple, tuple[float, float]]:
    """(bench, quant, measure name) -> (lo, hi) of the retained table's mean (GDR/KLR) row."""
    from relapse.report.intervals import mean_retained_intervals
    from relapse.report.measures import RETAINABLE, bootstrap_settings, measure_rows
    from relapse.report.paper_tables import mean_row_members

    boot = bootstrap_settings(cfg.get("evaluation", {}).get("bootstrap"))
    members = mean_row_members(chosen)
    out = {}
    for key in retained:
        m = RETAINABLE[key]
        for (bench, quant), ci in mean_retained_intervals(measure_rows(metrics, m), samples, m,
                                                          boot, members).items():
            out[(bench, quant, m.name)] = ci
    return out


def write_tables(tables: dict[str, PaperTable], chosen: pd.DataFrame, tables_dir: Path) -> None:
    from relapse.report.latex import to_latex
    from relapse.report.markdown import to_markdown

    marks = {(b, m): "†" for b, m, ok in zip(chosen.bench, chosen.method, chosen.meets_floor)
             if not ok}
    for name, table in tables.items():
        labels = ("method", "hp") if name == "grid" else ("method",)
        write_text(tables_dir / f"{name}.md", to_markdown(table, marks=marks))
        write_text(tables_dir / f"{name}.tex", to_latex(table, labels, marks=marks))
        write_csv(tables_dir / f"{name}.csv", table.flat())
    write_csv(tables_dir / "selection.csv", chosen)


def write_figures(frame: pd.DataFrame, chosen: pd.DataFrame, quants: list[str], figures_dir: Path,
                  diagnostics: pd.DataFrame | None = None, relearn: pd.DataFrame | None = None
                  ) -> list[Path]:
    from relapse.report import figures

    out = figures.save(figures.retained_bars(frame, chosen, quants), figures_dir / FIGURES[0])
    out += figures.save(figures.retained_heatmap(frame, quants), figures_dir / FIGURES[1])
    if diagnostics is not None:
        out += figures.save(figures.survival_by_layer(diagnostics, chosen),
                            figures_dir / DIAGNOSTICS_FIGURE)
    if relearn is not None:
        out += figures.save(figures.relearn_curves(relearn, chosen), figures_dir / RELEARN_FIGURE)
    return out


def build_report(inputs: list[str], cfg: dict, table_out: str | Path, tables_dir: str | Path,
                 figures_dir: str | Path, diagnostics: list[str] | None = None,
                 relearn: str | None = None, samples: list[str] | None = None,
                 meta: list[str] | None = None, attacks: str | None = None,
                 attack_samples: list[str] | None = None,
                 represent: list[str] | None = None) -> None:
    """`inputs`: every cell's metrics.parquet; `samples`: their samples.parquet (per-item
    scores, for the intervals); `meta`: the meta_eval parts to write, from the attack table
    `attacks`, the attacked cells' `attack_samples` and the `represent` (repr.parquet) files;
    `attacks` also gives the metric-robustness table and figure."""
    from relapse.io import write_parquet
    from relapse.provenance import provenance
    from relapse.report.inputs import read_diagnostics, read_relearn, read_samples
    from relapse.report.intervals import sample_columns
    from relapse.report.tables import concat_metrics, summary_table, to_markdown

    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    metrics = with_keys(concat_metrics(inputs))
    write_parquet(table_out, metrics, provenance(cfg, report=report_settings(cfg)))

    summary = summary_table(metrics)
    caption = ("Per quant: KnowMem_f, VerbMem_f, KnowMem_r (ROUGE-L F1 x100, loss variant "
               f"{cfg['unlearning'].get('loss_variant', 'paper')}), PrivLeak (Min-K% AUC "
               f"{captions.privleak_text(cfg)}, %), PPL_r (retain_eval perplexity) where "
               "computed, and retained. " + captions.RETAINED_DEFINITION + ", for KnowMem_f.")
    write_text(tables_dir / "summary.md", to_markdown(summary, caption))
    write_csv(tables_dir / "summary.csv", summary)

    wanted = measures(retained_keys(report_settings(cfg)), has_world(metrics),
                      lm_eval_measures(metrics))
    items = read_samples(samples or [], *sample_columns(wanted))
    tables, frame, chosen, quants = paper_tables(metrics, cfg, items)
    write_tables(tables, chosen, tables_dir)
    write_figures(frame, chosen, quants, figures_dir, read_diagnostics(diagnostics or []),
                  read_relearn(relearn))
    if meta:
        from relapse.report.meta_eval import write_meta

        write_meta(metrics, cfg, tables_dir, figures_dir, set(meta), attacks,
                   list(dict.fromkeys([*(samples or []), *(attack_samples or [])])),
                   diagnostics, represent)
    write_meta_evaluation(metrics, cfg, tables_dir, figures_dir, attacks,
                          list(dict.fromkeys([*(samples or []), *(attack_samples or [])])))


def write_meta_evaluation(metrics: pd.DataFrame, cfg: dict, tables_dir: Path, figures_dir: Path,
                          attacks: str | None, samples: list[str]) -> None:
    """Faithfulness always; metric robustness (table and heatmap) when an attacks table is
    given."""
    from relapse.provenance import provenance
    from relapse.report import figures
    from relapse.report.faithfulness import write_faithfulness
    from relapse.report.inputs import read_item_scores
    from relapse.report.measures import bootstrap_settings
    from relapse.report.metric_robustness import ITEM_SCORES, write_robustness
    from relapse.report.plan import ROBUSTNESS_FIGURE

    boot = bootstrap_settings(cfg.get("evaluation", {}).get("bootstrap"))
    write_faithfulness(metrics, tables_dir, report_settings(cfg)["faithfulness"]["min_pool"],
                       boot)
    if not attacks:
        return
    table = pd.read_parquet(attacks)
    frames = [read_item_scores(samples, name, set(table.split), column)
              for name, column in dict.fromkeys((s[0], s[1]) for s in ITEM_SCORES.values())]
    frames += [read_item_scores(samples, name, {"forget_vs_holdout"}, "score", ("member",))
               for name in sorted(set(table.metric)) if name.startswith("mia_")]
    frames = [f for f in frames if f is not None]
    items = pd.concat(frames, ignore_index=True) if frames else None
    robust = write_robustness(metrics, table, tables_dir, items, boot,
                              provenance(cfg, report=report_settings(cfg)))
    figures.save(figures.robustness_heatmap(robust), figures_dir / ROBUSTNESS_FIGURE)
