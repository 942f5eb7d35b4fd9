"""A PaperTable as a GitHub Markdown table: bold caption, then one header row whose value
columns read `<precision> <measure>`; missing values print as –."""

from __future__ import annotations

import math

from relapse.report.measures import quant_label
from relapse.report.paper_tables import PaperTable


def _number(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def to_markdown(table: PaperTable, digits: int = 1, marks: dict | None = None) -> str:
    marks = marks or {}
    labels = list(table.labels.columns)
    header = labels + [f"{quant_label(q)} {m.label}" for q in table.groups for m in table.columns]
    lines = [f"**{table.caption}**", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * len(labels) + ["---:"] * (len(header) - len(labels))) + "|"]
    for i in table.labels.index:
        row = table.labels.loc[i]
        cells = [str(row[c]) for c in labels]
        cells[labels.index("method")] += marks.get((row.bench, row.method), "")
        cells += [_number(table.values.loc[i, f"{q}|{m.name}"], digits)
                  for q in table.groups for m in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"{note}  " for note in table.notes]
    return "\n".join(lines) + "\n"
