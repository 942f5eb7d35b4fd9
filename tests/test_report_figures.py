"""Figures: each one's axes and labels (on the matplotlib objects), and the files the CLI writes,
including the optional survival-diagnostics and relearning figures from crafted tables."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from relapse.report import figures
from relapse.report.build import paper_tables
from test_report_paper import CFG, crafted_metrics


@pytest.fixture(scope="module")
def frames():
    _, frame, chosen, quants = paper_tables(crafted_metrics(), CFG)
    return frame, chosen, quants


def diagnostics_frame() -> pd.DataFrame:
    rows = []
    for quant, scheme, bits, survival in (("rtn-w8", "rtn", 8, 0.95), ("rtn-w4", "rtn", 4, 0.2)):
        for hp in ("alpha=1_lr=0.001_params=lora", "alpha=1_lr=0.003_params=lora"):
            for layer in range(3):
                for proj in ("q_proj", "v_proj"):
                    rows.append({"bench": "b1", "method": "npo_gdr", "hp": hp, "seed": 0,
                                 "quant": quant, "scheme": scheme, "bits": bits,
                                 "module": f"model.layers.{layer}.self_attn.{proj}",
                                 "layer": layer, "delta_over_step": 0.1 * bits,
                                 "same_code_fraction": 1 - 0.01 * bits,
                                 "update_survival": survival, "cosine": survival,
                                 "norm_ratio": 1.0})
    return pd.DataFrame(rows)


def relearn_frame() -> pd.DataFrame:
    rows = [{"bench": "b1", "method": m, "hp": "alpha=1_lr=0.001_params=lora", "seed": 0,
             "quant": q, "step": step, "metric": "knowmem", "split": "forget",
             "value": 20 + step * (2 if q == "rtn-w4" else 1)}
            for m in ("npo_gdr", "ga_klr") for q in ("none-w16", "rtn-w4") for step in (0, 5, 20)]
    return pd.DataFrame(rows)


def test_retained_bars(frames):
    frame, chosen, quants = frames
    fig = figures.retained_bars(frame, chosen, quants)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["b1", "b1-qat"]
    assert "knowledge retained" in axes[0].get_ylabel() and "%" in axes[0].get_ylabel()
    assert axes[0].get_xlabel() == "method (selected hp)"
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["retrain", "npo_gdr", "ga_klr", "rmu"]
    legend = axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["full (16-bit)", "rtn 8-bit",
                                                          "rtn 4-bit", "bnb_nf4 4-bit"]
    # bar heights are the retained % of the selected hp at each quant
    pick = chosen.set_index(["bench", "method"]).hp[("b1", "npo_gdr")]
    want = frame[(frame.bench == "b1") & (frame.method == "npo_gdr") & (frame.hp == pick)
                 & (frame.quant == "rtn-w4")]["retained KnowMem_f"].iloc[0] * 100
    bars = [p for p in axes[0].patches if p.get_facecolor()[:3] ==
            tuple(int(figures.OKABE_ITO[2][i:i + 2], 16) / 255 for i in (1, 3, 5))]
    assert bars[1].get_height() == pytest.approx(want)
    plt.close(fig)


def test_retained_heatmap(frames):
    frame, _, quants = frames
    fig = figures.retained_heatmap(frame, quants)
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 2 and heat[-1].get_xlabel() == "quantization (scheme, bits)"
    assert heat[0].get_ylabel() == "method, hp"
    assert heat[0].images[0].get_array().shape == (7, 4)    # 3 + 2 + 2 hps x 4 quants
    colorbar = [ax for ax in fig.axes if not ax.images][0]
    assert "knowledge retained" in colorbar.get_ylabel()
    assert figures.short_hps(["alpha=1_lr=0.001", "alpha=1_lr=0.003"]) == {
        "alpha=1_lr=0.001": "lr=0.001", "alpha=1_lr=0.003": "lr=0.003"}
    plt.close(fig)


def test_survival_by_layer_uses_the_selected_hp(frames):
    _, chosen, _ = frames
    diag = diagnostics_frame()
    diag.loc[diag.hp == "alpha=1_lr=0.003_params=lora", "update_survival"] = -5.0
    chosen = chosen.copy()
    chosen.loc[(chosen.bench == "b1") & (chosen.method == "npo_gdr"), "hp"] = \
        "alpha=1_lr=0.001_params=lora"
    fig = figures.survival_by_layer(diag, chosen)
    top, middle, bottom = fig.axes[:3]
    assert "update survival" in top.get_ylabel() and "fraction" in middle.get_ylabel()
    assert "|ΔW|" in bottom.get_ylabel() and bottom.get_xlabel() == "decoder layer"
    lines = {line.get_label(): line for line in top.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"rtn 8-bit", "rtn 4-bit"}
    np.testing.assert_allclose(lines["rtn 4-bit"].get_ydata(), [0.2, 0.2, 0.2])  # not -5
    plt.close(fig)


def test_relearn_curves(frames):
    fig = figures.relearn_curves(relearn_frame())
    assert [ax.get_title() for ax in fig.axes] == ["b1 / npo_gdr", "b1 / ga_klr"]
    assert fig.axes[0].get_xlabel().startswith("relearning steps")
    assert "knowmem on forget" in fig.axes[0].get_ylabel()
    line = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "rtn 4-bit"][0]
    assert list(line.get_xdata()) == [0, 5, 20] and list(line.get_ydata()) == [20, 30, 60]
    plt.close(fig)


def test_cli_writes_the_optional_figures(tmp_path):
    from relapse.cli import main
    from relapse.report.inputs import read_relearn

    cell = tmp_path / "cell.parquet"
    crafted_metrics().to_parquet(cell, index=False)
    diag = tmp_path / "diagnostics.parquet"
    diagnostics_frame().to_parquet(diag, index=False)
    relearn = tmp_path / "relearn.parquet"
    relearn_frame().to_parquet(relearn, index=False)
    import json

    cfg = {**CFG, "unlearning": {"loss_variant": "paper"}}
    rc = main(["report", "--settings", json.dumps({"config": cfg}),
               "--table", str(tmp_path / "t" / "metrics.parquet"), "--tables", str(tmp_path / "t"),
               "--figures", str(tmp_path / "f"), str(cell), "--diagnostics", str(diag),
               "--relearn", str(relearn)])
    assert rc == 0
    for name in ("retained_by_precision", "retained_heatmap", "survival_by_layer",
                 "relearn_curves"):
        png = (tmp_path / "f" / f"{name}.png").read_bytes()
        svg = (tmp_path / "f" / f"{name}.svg").read_text()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert "<svg" in svg
    relearn_frame().drop(columns="step").to_parquet(relearn, index=False)
    with pytest.raises(ValueError, match="missing columns step"):
        read_relearn(relearn)
