"""Paper figures (matplotlib, Agg): each function returns a Figure; `save` writes PNG + SVG.

Okabe-Ito colours (colour-blind safe) for categories, cividis for the heatmap, 11 pt fonts,
labelled axes with units. The figures read the same seed-averaged wide frame as the tables.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from relapse.grid import BASELINES  # noqa: E402
from relapse.report.measures import method_order, quant_label  # noqa: E402

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442",
             "#000000"]
STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "svg.fonttype": "none",
         "axes.spines.top": False, "axes.spines.right": False}
from relapse.report.plan import FIGURE_FORMATS as FORMATS  # noqa: E402
UNITS = {"knowmem": "ROUGE-L F1 ×100", "verbmem": "ROUGE-L F1 ×100", "qa_em": "exact match",
         "verbmem_facts": "facts recalled", "privleak": "%", "ppl": "perplexity"}


def _colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def save(fig, stem: str | Path, dpi: int = 150) -> list[Path]:
    """Write `stem.png` and `stem.svg` atomically; close the figure."""
    from relapse.io import atomic_file

    out = []
    for fmt in FORMATS:
        path = Path(f"{stem}.{fmt}")
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        out.append(path)
    plt.close(fig)
    return out


def _selected(frame: pd.DataFrame, chosen: pd.DataFrame | None) -> pd.DataFrame:
    """Rows of `frame` at each method's selected hp; a method with no selected hp among the
    rows keeps all of its hps (averaged by the caller)."""
    if chosen is None or chosen.empty:
        return frame
    pick = {(b, m): h for b, m, h in zip(chosen.bench, chosen.method, chosen.hp)}
    present = set(zip(frame.bench, frame.method, frame.hp))

    def keep(b, m, h):
        p = pick.get((b, m))
        return p is None or (b, m, p) not in present or h == p

    return frame[[keep(*k) for k in zip(frame.bench, frame.method, frame.hp)]]


def retained_bars(wide: pd.DataFrame, chosen: pd.DataFrame, quants: list[str],
                  measure: str = "KnowMem_f"):
    """Grouped bars: x = method (selected hp, and retrain as the floor), one bar per precision,
    y = knowledge retained (% of the target at the same quant), error bars = its 95% CI: the
    paired bootstrap of the ratio over items and seeds (measures.wide; none without per-item
    scores). One panel per bench."""
    col = f"retained {measure}"
    rows = _selected(wide[wide.method != "target"], chosen)
    benches = list(dict.fromkeys(rows.bench))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(benches), figsize=(1.2 + 2.2 * max(1, len(
            method_order(rows.method))) * len(benches), 3.6), squeeze=False, sharey=True)
        for ax, bench in zip(axes[0], benches):
            sub = rows[rows.bench == bench]
            methods = method_order(sub.method)
            width = 0.8 / max(1, len(quants))
            x = np.arange(len(methods))
            for j, quant in enumerate(quants):
                cell = sub[sub.quant == quant].groupby("method")[[col, f"{col} lo", f"{col} hi"]].mean()
                cell = cell.reindex(methods) * 100
                y = cell[col].to_numpy(dtype=float)
                err = np.vstack([y - cell[f"{col} lo"].to_numpy(dtype=float),
                                 cell[f"{col} hi"].to_numpy(dtype=float) - y])
                err = np.where(np.isfinite(err), np.clip(err, 0, None), 0)
                ax.bar(x - 0.4 + width * (j + 0.5), y, width, yerr=err, capsize=2,
                       color=_colour(j), edgecolor="black", linewidth=0.4,
                       label=quant_label(quant), error_kw={"linewidth": 0.8})
            ax.axhline(100, color="black", linestyle="--", linewidth=0.8)
            ax.set_xticks(x, methods, rotation=20, ha="right")
            ax.set_title(bench)
            ax.set_xlabel("method (selected hp)")
        axes[0][0].set_ylabel(f"knowledge retained, {measure}\n(% of target at same precision)")
        axes[0][-1].legend(title="precision", frameon=False, loc="upper left",
                           bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
    return fig


def short_hps(hps) -> dict[str, str]:
    """hp id -> only the key=value pairs that vary among `hps` (all of it when none vary)."""
    from relapse.grid import parse_hp_id

    parsed = {h: parse_hp_id(h) for h in hps}
    keys = sorted({k for p in parsed.values() for k in p})
    varying = [k for k in keys if len({str(p.get(k)) for p in parsed.values()}) > 1]
    return {h: " ".join(f"{k}={p[k]:g}" if isinstance(p.get(k), float) else f"{k}={p.get(k)}"
                        for k in varying if k in p) or h for h, p in parsed.items()}


def _stacked_panels(sizes: list[int], width: float, row_height: float):
    """One heatmap panel per bench, stacked, each as tall as its rows, sharing the x axis."""
    return plt.subplots(len(sizes), 1, squeeze=False, sharex=True, height_ratios=sizes,
                        layout="constrained", figsize=(width, 1.2 + row_height * sum(sizes)))


def _annotated_image(ax, values: np.ndarray, vmax: float, fmt: str, fontsize: int):
    """The cividis image of `values` on [0, vmax], each finite cell written in it (dark text
    on the light end of the map)."""
    image = ax.imshow(values, cmap="cividis", vmin=0, vmax=vmax, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=fontsize,
                    color="black" if v > 0.55 * vmax else "white")
    return image


def _finish_stacked(fig, axes, image, labels: list[str], xlabel: str, colour_label: str):
    last = axes[-1, 0]
    last.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    last.set_xlabel(xlabel)
    cbar = fig.colorbar(image, ax=list(axes[:, 0]), fraction=0.05, pad=0.02)
    cbar.set_label(colour_label)


def retained_heatmap(wide: pd.DataFrame, quants: list[str], measure: str = "KnowMem_f"):
    """Heatmap: rows = method x hp (every unlearned model, seed mean; hps show only the keys
    that vary), columns = scheme-bits, colour and text = knowledge retained (%). One panel per
    bench, stacked."""
    col = f"retained {measure}"
    rows = wide[~wide.method.isin(BASELINES)]
    benches = list(dict.fromkeys(rows.bench))
    sizes = [len(rows[rows.bench == b][["method", "hp"]].drop_duplicates()) for b in benches]
    with plt.rc_context(STYLE):
        fig, axes = _stacked_panels(sizes, 3.5 + 1.1 * len(quants), 0.4)
        image = None
        for ax, bench in zip(axes[:, 0], benches):
            sub = rows[rows.bench == bench]
            grid = (sub.pivot_table(index=["method", "hp"], columns="quant", values=col,
                                    aggfunc="mean", sort=False) * 100)
            order = [(m, h) for m in method_order(sub.method)
                     for h in sorted(set(sub.hp[sub.method == m]))]
            grid = grid.reindex(index=pd.MultiIndex.from_tuples(order), columns=quants)
            image = _annotated_image(ax, grid.to_numpy(dtype=float), 100, ".0f", 9)
            short = short_hps(sub.hp.unique())
            ax.set_yticks(range(len(order)), [f"{m}  {short[h]}" for m, h in order])
            ax.set_ylabel("method, hp")
            ax.set_title(bench)
        _finish_stacked(fig, axes, image, [quant_label(q) for q in quants],
                        "quantization (scheme, bits)",
                        f"knowledge retained, {measure}\n(% of target at same precision)")
    return fig


def _lines_by_quant(ax, frame: pd.DataFrame, x: str, y: str, quants: list[str]) -> None:
    for j, quant in enumerate(quants):
        sub = frame[frame.quant == quant]
        if sub.empty:
            continue
        curve = sub.groupby(x)[y].mean().sort_index()
        ax.plot(curve.index, curve.to_numpy(), marker="o", markersize=3, color=_colour(j),
                label=quant_label(quant))


DIAGNOSTIC_PANELS = (("update_survival", "update survival\n(1 = survives, 0 = erased)"),
                     ("same_code_fraction", "same quantized code\nas target (fraction)"),
                     ("delta_over_step", "mean |ΔW| / quant. step\n(steps)"))


def survival_by_layer(diag: pd.DataFrame, chosen: pd.DataFrame | None = None):
    """Per decoder layer (mean over its Linear modules, seeds and, where no selection applies,
    hps): update survival, same-code fraction and |ΔW|/step; one line per quant, one column of
    panels per (bench, method)."""
    diag = _selected(diag, chosen)
    models = list(dict.fromkeys(zip(diag.bench, diag.method)))
    quants = list(dict.fromkeys(diag.quant))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(DIAGNOSTIC_PANELS), len(models), squeeze=False, sharex=True,
                                 figsize=(1.5 + 3.2 * len(models), 2.2 * len(DIAGNOSTIC_PANELS)))
        for c, (bench, method) in enumerate(models):
            sub = diag[(diag.bench == bench) & (diag.method == method)]
            for r, (column, label) in enumerate(DIAGNOSTIC_PANELS):
                ax = axes[r][c]
                _lines_by_quant(ax, sub, "layer", column, quants)
                if r == 0:
                    ax.set_title(f"{bench} / {method}")
                    ax.axhline(1, color="black", linestyle=":", linewidth=0.8)
                if column != "delta_over_step":
                    # Both fractions read against 0 and 1: autoscaling made a 1% wobble around
                    # 1 look like a collapse.
                    low, high = ax.get_ylim()
                    ax.set_ylim(min(0.0, low), max(1.05, high))
                if c == 0:
                    ax.set_ylabel(label)
                if r == len(DIAGNOSTIC_PANELS) - 1:
                    ax.set_xlabel("decoder layer")
                    ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0][-1].legend(title="precision", frameon=False, loc="upper left",
                           bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
    return fig


def relearn_curves(relearn: pd.DataFrame, chosen: pd.DataFrame | None = None):
    """Metric value against relearning steps; one row of panels per (metric, split), one column
    per (bench, method), one line per quant."""
    relearn = _selected(relearn, chosen)
    models = list(dict.fromkeys(zip(relearn.bench, relearn.method)))
    pairs = list(dict.fromkeys(zip(relearn.metric, relearn.split)))
    quants = list(dict.fromkeys(relearn.quant))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(pairs), len(models), squeeze=False, sharex=True,
                                 figsize=(1.5 + 3.2 * len(models), 0.6 + 2.4 * len(pairs)))
        for c, (bench, method) in enumerate(models):
            for r, (metric, split) in enumerate(pairs):
                ax = axes[r][c]
                sub = relearn[(relearn.bench == bench) & (relearn.method == method)
                              & (relearn.metric == metric) & (relearn.split == split)]
                _lines_by_quant(ax, sub, "step", "value", quants)
                if r == 0:
                    ax.set_title(f"{bench} / {method}")
                if c == 0:
                    ax.set_ylabel(f"{metric} on {split}\n({UNITS.get(metric, 'value')})")
                if r == len(pairs) - 1:
                    ax.set_xlabel("relearning steps (count)")
        axes[0][-1].legend(title="precision", frameon=False, loc="upper left",
                           bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
    return fig


def robustness_heatmap(table: pd.DataFrame):
    """Heatmap of metric robustness (report.metric_robustness): rows = metric (split), columns =
    attacks (quantization, relearning, pruning, then the harmonic mean), colour and text = the
    score (1: the attack never makes the metric read knowledge back). One panel per bench."""
    from relapse.report.metric_robustness import FAMILIES

    if table.empty:
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(4, 1.5))
            ax.text(0.5, 0.5, "no attacked unlearned model", ha="center", va="center")
            ax.set_axis_off()
        return fig
    benches = list(dict.fromkeys(table.bench))
    order = table.sort_values("family", key=lambda s: s.map(FAMILIES.index), kind="stable")
    attacks = list(dict.fromkeys(order.attack))
    sizes = [len(table[table.bench == b][["metric", "split"]].drop_duplicates()) for b in benches]
    with plt.rc_context(STYLE):
        fig, axes = _stacked_panels(sizes, 4.0 + 1.0 * len(attacks), 0.35)
        image = None
        for ax, bench in zip(axes[:, 0], benches):
            sub = table[table.bench == bench]
            grid = sub.pivot_table(index=["metric", "split"], columns="attack", values="value",
                                   aggfunc="mean").reindex(columns=attacks)
            image = _annotated_image(ax, grid.to_numpy(dtype=float), 1, ".2f", 8)
            ax.set_yticks(range(len(grid)), [f"{m} ({s})" for m, s in grid.index])
            ax.set_ylabel("metric (split)")
            ax.set_title(bench)
        _finish_stacked(fig, axes, image, attacks, "attack",
                        "robustness score\n(1 = no knowledge read back)")
    return fig
