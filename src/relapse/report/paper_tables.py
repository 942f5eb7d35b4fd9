"""The paper tables, as data: (a) main, (b) knowledge retained, (c) the full grid.

Each is a `PaperTable`: label columns (bench, method, hp) and value columns grouped by precision
(one group per quant id in the data, full precision first). `latex.py` and `markdown.py` render
them; `flat()` is the CSV (full precision numbers, no rounding), which also holds each number's
95% interval (measures.wide, intervals.py) in `<quant> <measure> lo` / `hi` columns after the
values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from relapse.grid import BASELINES
from relapse.report.measures import (MAIN, RETAINABLE, Measure, is_utility_constrained,
                                     method_order)

MEAN_ROW = "mean (GDR/KLR)"


@dataclass
class PaperTable:
    name: str
    caption: str
    labels: pd.DataFrame                 # bench, method, hp (strings), one row per table row
    groups: list[str]                    # quant ids, in column order
    columns: list[Measure]               # the measures under each group
    values: pd.DataFrame                 # columns "<quant>|<measure name>", same rows as labels
    percent: bool = False                # values are ratios x 100 (%)
    notes: list[str] = field(default_factory=list)
    intervals: pd.DataFrame | None = None   # "<quant>|<name> lo" / "hi", same rows as values

    def column(self, quant: str, measure: str) -> pd.Series:
        return self.values[f"{quant}|{measure}"]

    def flat(self) -> pd.DataFrame:
        """The CSV: label columns, `<quant> <measure>` columns, then `<quant> <measure> lo` and
        `hi` (the values' 95% intervals)."""
        parts = [self.labels, self.values] + ([self.intervals] if self.intervals is not None
                                              else [])
        out = pd.concat([p.reset_index(drop=True) for p in parts], axis=1)
        out.columns = [c.replace("|", " ") for c in out.columns]
        return out


def _values(rows: pd.DataFrame, quants: list[str], cols: list[tuple[str, str, float]]
            ) -> pd.DataFrame:
    """For each row (bench, method, hp) of `rows`, the wide frame's `source` column at each
    quant times `scale`, named `<quant>|<name>`; `cols` is [(name, source column, scale)]."""
    out = {}
    for quant in quants:
        for name, source, scale in cols:
            out[f"{quant}|{name}"] = [row.get((quant, source), float("nan")) * scale
                                      for row in rows["_cells"]]
    return pd.DataFrame(out, index=rows.index)


def _intervals(rows: pd.DataFrame, quants: list[str], cols: list[tuple[str, str, float]]
               ) -> pd.DataFrame:
    """`_values` of the interval bounds: `<quant>|<name> lo` and `hi`, from `<source> lo/hi`."""
    return _values(rows, quants, [(f"{name} {end}", f"{source} {end}", scale)
                                  for name, source, scale in cols for end in ("lo", "hi")])


def _index_cells(wide: pd.DataFrame) -> dict:
    """(bench, method, hp) -> {(quant, column): value}."""
    out: dict = {}
    value_cols = [c for c in wide.columns if c not in ("bench", "method", "hp", "quant")]
    for rec in wide.to_dict("records"):
        cell = out.setdefault((rec["bench"], rec["method"], rec["hp"]), {})
        for col in value_cols:
            cell[(rec["quant"], col)] = rec[col]
    return out


def _rows(wide: pd.DataFrame, chosen: pd.DataFrame | None) -> pd.DataFrame:
    """Label rows: per bench, target, retrain, then each method at its selected hp (every hp of
    every method when `chosen` is None)."""
    cells = _index_cells(wide)
    rows = []
    for bench in dict.fromkeys(wide.bench):
        in_bench = wide[wide.bench == bench]
        for method in method_order(in_bench.method):
            if chosen is not None and method not in BASELINES:
                hit = chosen[(chosen.bench == bench) & (chosen.method == method)]
                hps = list(hit.hp)
            else:
                hps = sorted(dict.fromkeys(in_bench[in_bench.method == method].hp))
            for hp in hps:
                rows.append({"bench": bench, "method": method, "hp": hp,
                             "_cells": cells.get((bench, method, hp), {})})
    return pd.DataFrame(rows, columns=["bench", "method", "hp", "_cells"])


def main_table(wide: pd.DataFrame, chosen: pd.DataFrame, quants: list[str],
               caption: str, columns: list[Measure] | None = None) -> PaperTable:
    """(a) Rows: target, retrain, each method at its selected hp; per quant: M1-M4 (or
    `columns`: main_measures adds KnowMem_world)."""
    columns = list(columns or MAIN)
    rows = _rows(wide, chosen)
    cols = [(m.name, m.name, 1.0) for m in columns]
    notes = [f"† {b}/{m}: no hp met the KnowMem_r floor" for b, m, ok in
             zip(chosen.bench, chosen.method, chosen.meets_floor) if not ok]
    return PaperTable("main", caption, rows[["bench", "method", "hp"]], quants, columns,
                      _values(rows, quants, cols), notes=notes,
                      intervals=_intervals(rows, quants, cols))


def mean_row_members(chosen: pd.DataFrame) -> dict[str, list[tuple[str, str]]]:
    """bench -> the (method, hp) rows that the retained table's mean row averages: each
    utility-constrained (GDR/KLR) method at its selected hp."""
    out: dict[str, list[tuple[str, str]]] = {}
    for bench, method, hp in zip(chosen.bench, chosen.method, chosen.hp):
        if is_utility_constrained(method):
            out.setdefault(bench, []).append((method, hp))
    return out


def retained_table(wide: pd.DataFrame, chosen: pd.DataFrame, quants: list[str],
                   retained: list[str], caption: str,
                   mean_intervals: dict[tuple, tuple[float, float]] | None = None) -> PaperTable:
    """(b) Knowledge retained (unlearned / target at matched quant) per method x precision, for
    each retained measure, with the retrain model as a reference row and, per bench, the mean
    over the utility-constrained (GDR/KLR) methods. `mean_intervals`: (bench, quant, measure
    name) -> (lo, hi) of that mean (intervals.mean_retained_intervals: one paired bootstrap of
    the mean of ratios); without it the mean row has no interval."""
    measures = [RETAINABLE[k] for k in retained]
    rows = _rows(wide, chosen)
    rows = rows[rows.method != "target"].reset_index(drop=True)   # 100% by definition
    cols = [(m.name, f"retained {m.name}", 100.0) for m in measures]
    values, intervals = _values(rows, quants, cols), _intervals(rows, quants, cols)
    labels = rows[["bench", "method", "hp"]]
    out_labels, out_values, out_intervals = [], [], []
    for bench in dict.fromkeys(labels.bench):
        mask = labels.bench == bench
        out_labels.append(labels[mask])
        out_values.append(values[mask])
        out_intervals.append(intervals[mask])
        constrained = mask & labels.method.map(is_utility_constrained)
        if constrained.any():
            out_labels.append(pd.DataFrame([{"bench": bench, "method": MEAN_ROW, "hp": ""}]))
            out_values.append(values[constrained].mean().to_frame().T)
            # a mean of the methods' bounds is not an interval of their mean: the bootstrap of
            # the mean itself, where the per-item scores allow it
            mean_ci = pd.DataFrame(float("nan"), index=[0], columns=intervals.columns)
            for quant in quants:
                for m in measures:
                    lo, hi = (mean_intervals or {}).get((bench, quant, m.name),
                                                        (float("nan"), float("nan")))
                    mean_ci[f"{quant}|{m.name} lo"] = 100.0 * lo
                    mean_ci[f"{quant}|{m.name} hi"] = 100.0 * hi
            out_intervals.append(mean_ci)
    return PaperTable("retained", caption, pd.concat(out_labels, ignore_index=True), quants,
                      measures, pd.concat(out_values, ignore_index=True), percent=True,
                      intervals=pd.concat(out_intervals, ignore_index=True))


def grid_table(wide: pd.DataFrame, quants: list[str], caption: str,
               columns: list[Measure] | None = None) -> PaperTable:
    """(c) Every bench x method x hp: M1-M4 (or `columns`) and KnowMem_f retained, per quant
    (appendix)."""
    columns = list(columns or MAIN)
    rows = _rows(wide, None)
    ret = Measure("Ret_f", "knowmem", "forget", "retained", "KnowMem_f ret. %", r"Ret.$_f$ \%")
    cols = [(m.name, m.name, 1.0) for m in columns] + [("Ret_f", "retained KnowMem_f", 100.0)]
    return PaperTable("grid", caption, rows[["bench", "method", "hp"]], quants, [*columns, ret],
                      _values(rows, quants, cols), intervals=_intervals(rows, quants, cols))
