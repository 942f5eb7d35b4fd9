"""A PaperTable as a LaTeX booktabs table (needs \\usepackage{booktabs,graphicx}).

Layout: one label column (the method; the hp as well in the full grid), then one column group
per precision under a \\cmidrule'd group header. Rows are grouped by bench under an italic
bench row; missing values print as --.
"""

from __future__ import annotations

import math

from relapse.report.measures import quant_label
from relapse.report.paper_tables import PaperTable

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
            "†": r"$^\dagger$"}


def escape(text: str) -> str:
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def _number(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    return f"{value:.{digits}f}"


def to_latex(table: PaperTable, label_columns: tuple[str, ...] = ("method",), digits: int = 1,
             marks: dict | None = None) -> str:
    """`label_columns` are the text columns printed per row; `marks` maps (bench, method) to a
    suffix for the method cell (e.g. † for a fallback selection)."""
    marks = marks or {}
    n_labels, n_per = len(label_columns), len(table.columns)
    n_cols = n_labels + n_per * len(table.groups)
    spec = "l" * n_labels + "r" * n_per * len(table.groups)
    lines = [r"\begin{table*}[t]", r"\centering", r"\small",
             rf"\caption{{{escape(table.caption)}}}", rf"\label{{tab:{table.name}}}",
             r"\resizebox{\textwidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    header = ["" for _ in label_columns]
    rules = []
    for i, quant in enumerate(table.groups):
        start = n_labels + i * n_per + 1
        header.append(rf"\multicolumn{{{n_per}}}{{c}}{{{escape(quant_label(quant))}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + n_per - 1}}}")
    lines.append(" & ".join(header) + r" \\")
    lines.append(" ".join(rules))
    names = [escape(c.capitalize()) for c in label_columns]
    lines.append(" & ".join(names + [m.tex for m in table.columns] * len(table.groups)) + r" \\")
    benches = list(dict.fromkeys(table.labels.bench))
    for bench in benches:
        lines.append(r"\midrule")
        if len(benches) > 1:
            lines.append(rf"\multicolumn{{{n_cols}}}{{l}}{{\textit{{{escape(bench)}}}}} \\")
        for i in table.labels.index[table.labels.bench == bench]:
            row = table.labels.loc[i]
            cells = [escape(row[c]) for c in label_columns]
            cells[0] += escape(marks.get((row.bench, row.method), ""))
            for quant in table.groups:
                cells += [_number(table.values.loc[i, f"{quant}|{m.name}"], digits)
                          for m in table.columns]
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}", ""]
    return "\n".join(lines)
