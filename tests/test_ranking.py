"""The durability ranking (relapse.report.ranking), the attack slice that follows the hp
selection (attacks.hps: selected), and config/defenses.yaml's plan."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from relapse.report.ranking import ranking_figure, ranking_table, to_markdown, write_ranking

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def _measure(name, value, half=0.05):
    """A durability column with its interval: value ± half (distinct per column so that a
    carried interval can be told apart)."""
    return {name: value, f"{name}_ci_low": value - half, f"{name}_ci_high": value + half}


def durability_rows():
    """Three methods at their selected hp and one unselected hp, written by hand: worst cases
    (max of worst_4bit, relearn held-out, matched prune) are 0.30 (a: prune), 0.50 (b: 4-bit)
    and 0.80 (c: relearn held-out)."""
    base = {"bench": "b", "seed": 0, "quant": "none-w16", "worst_4bit_quant": "rtn-w4",
            "label": "reversible", "label_heldout": "irreversible"}
    spec = [  # method, hp, selected, full, 4bit, relearn in-sample, relearn held-out, prune
        ("a", "lr=1", True, 0.20, 0.25, 0.95, 0.22, 0.30),
        ("b", "lr=1", True, 0.40, 0.50, 0.99, 0.45, 0.10),
        ("c", "lr=2", True, 0.10, 0.15, 0.90, 0.80, 0.20),
        ("c", "lr=1", False, 0.00, 0.00, 0.00, 0.00, 0.00),   # not selected: not ranked
    ]
    rows = []
    for method, hp, selected, full, four, rel, held, prune in spec:
        row = {**base, "method": method, "hp": hp, "selected": selected}
        row.update(_measure("full", full, 0.01))
        row.update(_measure("full_heldout", full + 0.02, 0.015))
        row.update(_measure("worst_4bit", four, 0.02))
        row.update(_measure("relearn_k20", rel, 0.03))
        row.update(_measure("relearn_k20_heldout", held, 0.04))
        row.update(_measure("control_k20", 0.99, 0.01))
        row.update(_measure("prune_s0.5", prune, 0.05))
        # the un-matched pruning ratio is the largest everywhere: the ranking must not read it
        row.update(_measure("prune_s0.5_vs_unpruned", 2.0, 0.1))
        rows.append(row)
    return pd.DataFrame(rows)


def utility_metrics():
    rows = []
    for i, (method, hp) in enumerate([("a", "lr=1"), ("b", "lr=1"), ("c", "lr=2"), ("c", "lr=1")]):
        for quant, value in (("none-w16", 90.0 + i), ("rtn-w4", 10.0)):
            rows.append({"bench": "b", "method": method, "hp": hp, "seed": 0, "quant": quant,
                         "metric": "knowmem", "split": "retain", "stat": "rougeL_f1",
                         "value": value, "ci_low": value - 2, "ci_high": value + 2})
        rows.append({"bench": "b", "method": method, "hp": hp, "seed": 0, "quant": "none-w16",
                     "metric": "knowmem", "split": "forget", "stat": "rougeL_f1",
                     "value": 1.0, "ci_low": 0.0, "ci_high": 2.0})
    return pd.DataFrame(rows)


def test_ranking_orders_by_the_worst_attack_and_carries_its_interval():
    table = ranking_table(durability_rows(), utility_metrics())
    assert table.method.tolist() == ["a", "b", "c"]          # worst 0.30 < 0.50 < 0.80
    assert table["rank"].tolist() == [1, 2, 3]
    assert table.hp.tolist() == ["lr=1", "lr=1", "lr=2"]     # the selected hps only
    worst = table.set_index("method")
    # worst case = max over the attacks, computed here from the hand-made numbers
    expect = {"a": ("prune", 0.30, 0.05), "b": ("worst_4bit", 0.50, 0.02),
              "c": ("relearn", 0.80, 0.04)}
    for method, (attack, value, half) in expect.items():
        r = worst.loc[method]
        assert r.worst_attack == attack
        assert r.worst == pytest.approx(value)
        assert (r.worst_ci_low, r.worst_ci_high) == pytest.approx((value - half, value + half))
    # each measure keeps its own interval; relearning is the held-out one, with its start
    a = worst.loc["a"]
    assert (a.full, a.full_ci_low, a.full_ci_high) == pytest.approx((0.20, 0.19, 0.21))
    assert (a.relearn, a.relearn_ci_low) == pytest.approx((0.22, 0.18))
    assert (a.relearn_before, a.relearn_before_ci_high) == pytest.approx((0.22, 0.235))
    assert a.relearn_facts == "held-out" and a.relearn_k == 20
    assert (a.prune, a.prune_sparsity) == pytest.approx((0.30, 0.5))
    assert a.worst_4bit_quant == "rtn-w4"
    # utility: KnowMem_r at the durability quant (full precision), with its interval
    assert (a.knowmem_retain, a.knowmem_retain_ci_low, a.knowmem_retain_ci_high) == \
        pytest.approx((90.0, 88.0, 92.0))
    assert worst.loc["c"].knowmem_retain == pytest.approx(92.0)
    assert a.verdict == "irreversible" and a.verdict_facts == "held-out"
    text = to_markdown(table)
    assert "| 1 | b | a | lr=1 | 20.0 [19.0, 21.0] |" in text
    assert "30.0 [25.0, 35.0] (prune)" in text


def test_ranking_without_prune_or_heldout_columns_uses_what_was_measured():
    """No pruning ran and no facts were held out: worst = max(4-bit, in-sample relearn); a
    method with no attack measured sorts last with a NaN worst case; no metrics: NaN utility."""
    frame = durability_rows()
    frame = frame[[c for c in frame.columns if not c.startswith("prune")
                   and "heldout" not in c]]
    frame.loc[frame.method == "b", ["worst_4bit", "relearn_k20"]] = NAN
    table = ranking_table(frame)
    assert table.method.tolist() == ["c", "a", "b"]          # 0.90, 0.95, none
    by = table.set_index("method")
    assert by.loc["a"].worst == pytest.approx(0.95) and by.loc["a"].worst_attack == "relearn"
    assert by.loc["a"].relearn_facts == "in-sample" and by.loc["a"].verdict == "reversible"
    assert math.isnan(by.loc["a"].prune) and math.isnan(by.loc["a"].prune_sparsity)
    assert math.isnan(by.loc["b"].worst) and by.loc["b"].worst_attack is None
    assert math.isnan(by.loc["a"].knowmem_retain)
    assert "| – |" in to_markdown(table)


def test_ranking_averages_seeds():
    one = durability_rows()
    two = one.copy()
    two["seed"] = 1
    two["full"] = two["full"] + 0.1
    two.loc[two.method == "a", "label_heldout"] = "reversible"
    table = ranking_table(pd.concat([one, two]))
    a = table.set_index("method").loc["a"]
    assert a.full == pytest.approx(0.25) and a.seeds == "0 1"
    assert a.verdict == "irreversible / reversible"


def test_ranking_figure_has_a_point_per_method_and_the_diagonal(tmp_path):
    table = ranking_table(durability_rows(), utility_metrics())
    fig = ranking_figure(table)
    ax = fig.axes[0]
    diagonal = [line for line in ax.lines
                if len(line.get_xdata()) == 2
                and np.allclose(line.get_xdata(), line.get_ydata())]
    assert diagonal
    points = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(points) == 1                                  # one bench: one series
    np.testing.assert_allclose(points[0].get_xdata(), 100 * table.full)
    np.testing.assert_allclose(points[0].get_ydata(), 100 * table.worst)
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b", "c"]

    durability, metrics = tmp_path / "durability.csv", tmp_path / "metrics.parquet"
    durability_rows().to_csv(durability, index=False)
    utility_metrics().to_parquet(metrics)
    out = write_ranking(durability, metrics, tmp_path / "ranking", tmp_path / "fig")
    for name in ("ranking.csv", "ranking.md", "fig.png", "fig.svg"):
        assert (tmp_path / name).stat().st_size > 0
    assert pd.read_csv(tmp_path / "ranking.csv").method.tolist() == out.method.tolist()


# --- attacks.hps: selected ------------------------------------------------------------------------

def test_attack_slice_follows_the_selection(default_config):
    from relapse.attacks import plan
    from relapse.config import ConfigError, validate

    cfg = json.loads(json.dumps(default_config))
    cfg["attacks"].update(hps="selected", quants=["none-w16"])
    cfg = validate(cfg)
    assert plan.follows_selection(cfg) and plan.attacks_unlearned(cfg)
    assert plan.attacks_relearn(cfg)
    before = plan.attack_cells(cfg)                         # the checkpoint has not run
    assert {c.method for c in before} == {"retrain", "target"}
    hp = "alpha=5_beta=0.1_epochs=20_lr=0.0003_params=full"
    after = plan.attack_cells(cfg, {"synthbio": {("npo_gdr", hp)}})
    new = [c for c in after if c not in before]
    assert {(c.method, c.hp) for c in new} == {("npo_gdr", hp)}
    assert sorted(c.variant for c in new) == ["forget-k20", "holdout-k20", "s0.5"]
    # the target is pruned (the matched reference) whether or not the selection is known
    assert [c for c in before if c.method == "target"] == \
        [c for c in after if c.method == "target"]
    samples = plan.durability_samples(cfg, {"synthbio": {("npo_gdr", hp)}})
    assert f"results/synthbio/npo_gdr/{hp}/s0/none-w16/samples.parquet" in samples

    bad = json.loads(json.dumps(default_config))
    bad["attacks"]["hps"] = "selectd"
    with pytest.raises(ConfigError, match="attacks.hps: 'selectd' is not valid; allowed: "
                                          "object; or array; or 'selected'"):
        validate(bad)


# --- config/defenses.yaml ---------------------------------------------------------------------------

def test_defenses_config_plans_every_method(tmp_path):
    """It validates, and its dry run plans both hps of every method (one training job each:
    one epoch value), each evaluated at full precision before the select_hps checkpoint, and
    the durability table and the ranking after it."""
    from relapse.config import load_config

    cfg = load_config(ROOT / "config" / "defenses.yaml")
    methods = set(cfg["methods"])
    from relapse.unlearn.oneshot import one_shot_methods
    from relapse.unlearn.registry import method_names

    from relapse.unlearn.registry import get_method

    trained = [get_method(m) for m in set(method_names()) - set(one_shot_methods())]
    configured = [get_method(m) for m in methods]
    # every forget loss, every method registered whole (rmu, pdu) and every defense variant
    missing = ({m.forget.name for m in trained} - {m.forget.name for m in configured})
    missing |= {m.name for m in trained if m.name in ("rmu", "pdu")} - methods
    kinds = {"sure": lambda m: m.saliency, **{s: (lambda m, s=s: m.smoothing == s)
                                              for s in ("sam", "rs", "wa")}}
    missing |= {k for k, has in kinds.items() if not any(has(m) for m in configured)}
    assert not missing, f"config/defenses.yaml lacks {sorted(missing)}"
    assert cfg["attacks"]["hps"] == "selected" and cfg["quantization"]["models"] == "selected"
    assert cfg["attacks"]["relearn"]["heldout"] > 0
    assert {"rtn-w4", "bnb_nf4-w4"} <= {f"{s.get('name', s['scheme'])}-w{b}"
                                        for s in cfg["quantization"]["schemes"]
                                        for b in s["bits"]}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                           "-d", str(tmp_path), "-n", "--cores", "2",
                           "--configfile", str(ROOT / "config" / "defenses.yaml")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    text = proc.stdout
    unlearn = re.findall(r"rule unlearn:\n(?:.*\n)*?\s+wildcards: bench=synthbio, method=(\w+),",
                         text)
    assert sorted(unlearn) == sorted(m for m in methods for _ in range(2))
    stats = text.split("Job stats:")[1]
    counts = dict((m[0], int(m[1])) for m in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M))
    models = 2 * len(methods)
    # before the checkpoint: every hp at full precision, target and retrain at the 3 quants,
    # and the baselines' attacks (retrain relearned and pruned, target pruned: the matched
    # reference), 2 relearn variants (forget, holdout) + 2 pruned models evaluated
    want = {"unlearn": models, "select_epoch": models, "quantize": models + 2 * 3,
            "evaluate": models + 2 * 3, "select_hps": 1, "attack": 3, "evaluate_attack": 4,
            "attack_tables": 1, "durability": 1, "ranking": 1, "report": 1}
    assert {k: counts.get(k, 0) for k in want} == want
    assert not (tmp_path / "results").exists()
    assert yaml.safe_load((ROOT / "config" / "defenses.yaml").read_text())["attacks"]["hps"] \
        == "selected"
