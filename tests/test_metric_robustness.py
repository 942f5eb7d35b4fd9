"""The meta-evaluation of the metrics (report/metric_robustness.py, report/faithfulness.py): Q, R,
pruning and the harmonic mean on hand-made tables against numbers worked out here; the
faithfulness AUC against sklearn; the refusal under the minimum pool; the report stage's files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from relapse.report.faithfulness import faithfulness_table
from relapse.report.metric_robustness import (harmonic_mean, quant_score, relearn_score,
                                              robustness_table)

B, H1, H2 = "b", "lr=0.001", "lr=0.003"


def _row(method, hp, quant, metric, split, stat, value, seed=0, **attack):
    return {"bench": B, "method": method, "hp": hp, "seed": seed, "quant": quant,
            "metric": metric, "split": split, "stat": stat, "value": float(value), **attack}


# KnowMem_f of each model: the un-attacked cells at three quants, then relearning (k = 5 on
# forget data, and on holdout data, which is the control and must not count) and pruning, all
# at full precision.
KNOW = {("target", "default"): {"none-w16": 90, "rtn-w8": 90, "rtn-w4": 88},
        ("retrain", "default"): {"none-w16": 5, "rtn-w8": 5, "rtn-w4": 6},
        ("ga", H1): {"none-w16": 20, "rtn-w8": 10, "rtn-w4": 40},
        ("ga", H2): {"none-w16": 30, "rtn-w8": 60, "rtn-w4": 30}}
RELEARNED = {("retrain", "default"): 15, ("ga", H1): 60, ("ga", H2): 25}
CONTROL = {("retrain", "default"): 5, ("ga", H1): 90, ("ga", H2): 90}
PRUNED = {("target", "default"): 80, ("ga", H1): 25, ("ga", H2): 10}


def tables():
    metrics, attacks = [], []
    for (method, hp), by_quant in KNOW.items():
        for quant, value in by_quant.items():
            metrics.append(_row(method, hp, quant, "knowmem", "forget", "rougeL_f1", value))
    for (method, hp), value in RELEARNED.items():
        attacks.append(_row(method, hp, "none-w16", "knowmem", "forget", "rougeL_f1", value,
                            attack="relearn", attack_data="forget", attack_steps=5.0,
                            sparsity=np.nan))
        attacks.append(_row(method, hp, "none-w16", "knowmem", "forget", "rougeL_f1",
                            CONTROL[(method, hp)], attack="relearn", attack_data="holdout",
                            attack_steps=5.0, sparsity=np.nan))
    for (method, hp), value in PRUNED.items():
        attacks.append(_row(method, hp, "none-w16", "knowmem", "forget", "rougeL_f1", value,
                            attack="prune", attack_data="none", attack_steps=np.nan,
                            sparsity=0.5))
    for (method, hp) in RELEARNED:      # the un-attacked rows attack_tables adds
        attacks.append(_row(method, hp, "none-w16", "knowmem", "forget", "rougeL_f1",
                            KNOW[(method, hp)]["none-w16"], attack="none", attack_data="none",
                            attack_steps=0.0, sparsity=np.nan))
    return pd.DataFrame(metrics), pd.DataFrame(attacks)


def _get(table, attack, metric="knowmem", split="forget"):
    row = table[(table.attack == attack) & (table.metric == metric) & (table.split == split)]
    assert len(row) == 1, (attack, metric, split)
    return row.iloc[0]


def test_q_r_pruning_and_harmonic_mean_on_a_hand_made_table():
    metrics, attacks = tables()
    table = robustness_table(metrics, attacks)
    # quantization: before = full precision; H1 20 -> 40 at 4 bits (revived: 20/40), 20 -> 10
    # at 8 bits (fell: 1); H2 30 -> 30 (1), 30 -> 60 (30/60)
    q4 = np.mean([20 / 40, 1.0])
    q8 = np.mean([1.0, 30 / 60])
    # relearning on forget: H1 gains 40, the retrain 10 -> 10/40; H2 loses 5 -> 1
    r5 = np.mean([10 / 40, 1.0])
    # pruning: H1 20 -> 25 (20/25), H2 30 -> 10 (1)
    p5 = np.mean([20 / 25, 1.0])
    assert _get(table, "quantization rtn-w4").value == pytest.approx(q4, rel=1e-12)
    assert _get(table, "quantization rtn-w8").value == pytest.approx(q8, rel=1e-12)
    assert _get(table, "relearn k5 @none-w16").value == pytest.approx(r5, rel=1e-12)
    assert _get(table, "prune s0.5 @none-w16").value == pytest.approx(p5, rel=1e-12)
    hm = _get(table, "harmonic mean")
    assert hm.value == pytest.approx(sps.hmean([q4, q8, r5, p5]), rel=1e-12)
    assert hm.family == "robustness" and hm.n_models == 2
    # the control relearning (holdout data) is not an attack row; the target is not scored
    assert set(table.attack) == {"quantization rtn-w4", "quantization rtn-w8",
                                 "relearn k5 @none-w16", "prune s0.5 @none-w16",
                                 "harmonic mean"}
    assert (table[table.family != "robustness"].n_models == 2).all()
    # no per-item scores: no interval
    assert table.ci_low.isna().all() and (table.interval == "none: no per-item scores").all()


def test_paper_case_one_q_and_one_r_is_their_harmonic_mean():
    metrics, attacks = tables()
    metrics = metrics[metrics.quant != "rtn-w8"]
    attacks = attacks[attacks.attack != "prune"]
    table = robustness_table(metrics, attacks)
    q, r = np.mean([0.5, 1.0]), np.mean([0.25, 1.0])
    assert _get(table, "harmonic mean").value == pytest.approx(2 * q * r / (q + r), rel=1e-12)


def test_orientation_mia_auc_and_privleak():
    """An MIA AUC falls as knowledge returns (relapse's scores are losses), so quantization
    that lowers it revives knowledge; PrivLeak past the retrain (positive) is no knowledge."""
    rows = [_row("ga", H1, "none-w16", "mia_loss", "forget_vs_holdout", "auc", 0.4),
            _row("ga", H1, "rtn-w4", "mia_loss", "forget_vs_holdout", "auc", 0.2),
            _row("ga", H1, "none-w16", "privleak", "forget", "privleak", 20.0),
            _row("ga", H1, "rtn-w4", "privleak", "forget", "privleak", -50.0),
            _row("ga", H1, "none-w16", "ppl", "retain_eval", "perplexity", 10.0),
            _row("ga", H1, "rtn-w4", "ppl", "retain_eval", "perplexity", 30.0)]
    table = robustness_table(pd.DataFrame(rows), None)
    # knowledge 1 - AUC: 0.6 before, 0.8 after
    assert _get(table, "quantization rtn-w4", "mia_loss", "forget_vs_holdout").value == \
        pytest.approx(0.6 / 0.8, rel=1e-12)
    # knowledge -PrivLeak/100: -0.2 (counts as 0) before, 0.5 after: everything read back
    assert _get(table, "quantization rtn-w4", "privleak", "forget").value == 0.0
    assert "ppl" not in set(table.metric)           # no knowledge reading: left out


def test_zero_and_sign_rules():
    assert quant_score(0.0, 0.0) == 1.0                   # nothing before, nothing after
    assert quant_score(5.0, 0.0) == 1.0                   # knowledge fell to 0
    assert quant_score(0.0, 5.0) == 0.0                   # all of it read back
    assert quant_score(-1.0, 0.5) == 0.0                  # a negative value is no knowledge
    assert relearn_score(0.0, 5.0) == 1.0                 # relearning added nothing
    assert relearn_score(-3.0, 5.0) == 1.0
    assert relearn_score(10.0, -3.0) == 0.0               # the retrain lost, the model gained
    assert relearn_score(10.0, 20.0) == 1.0               # capped at 1
    assert relearn_score(8.0, 2.0) == 0.25
    assert math.isnan(float(relearn_score(np.nan, 1.0)))
    assert harmonic_mean([1.0, 0.0, 0.5]) == 0.0
    assert harmonic_mean([np.nan, 0.5, 1.0]) == pytest.approx(sps.hmean([0.5, 1.0]), rel=1e-12)
    assert math.isnan(float(harmonic_mean([np.nan, np.nan])))
    # vectorised over resamples (columns), as the intervals use it
    got = harmonic_mean(np.array([[0.5, 1.0], [0.25, 0.0]]), axis=0)
    assert got[0] == pytest.approx(sps.hmean([0.5, 0.25]), rel=1e-12) and got[1] == 0.0


def _items(frame_rows, per_item):
    """samples rows: the cell's keys and one score per item (KnowMem's rougeL_f1 in [0, 1])."""
    out = []
    for keys in frame_rows:
        for item, score in enumerate(per_item[keys["key"]]):
            out.append({"bench": B, "method": keys["method"], "hp": keys["hp"], "seed": 0,
                        "quant": keys["quant"], "metric": "knowmem", "split": "forget",
                        "item": item, "rougeL_f1": score, **keys.get("attack", {})})
    return pd.DataFrame(out)


def test_intervals_pair_the_items_of_every_cell():
    """A model whose 4-bit score is exactly twice its full-precision one on every item has Q =
    1/2 in every resample when the items are drawn once for both cells: a zero-width interval
    at 1/2 (drawn apart, it would spread)."""
    rng = np.random.default_rng(1)
    before = rng.uniform(0.05, 0.45, size=40)
    metrics = pd.DataFrame([
        _row("ga", H1, "none-w16", "knowmem", "forget", "rougeL_f1", 100 * before.mean()),
        _row("ga", H1, "rtn-w4", "knowmem", "forget", "rougeL_f1", 200 * before.mean())])
    samples = _items([{"key": "b", "method": "ga", "hp": H1, "quant": "none-w16"},
                      {"key": "a", "method": "ga", "hp": H1, "quant": "rtn-w4"}],
                     {"b": before, "a": 2 * before})
    row = _get(robustness_table(metrics, None, samples, {"samples": 200, "seed": 3}),
               "quantization rtn-w4")
    assert row.value == pytest.approx(0.5, rel=1e-12)
    assert row.ci_low == pytest.approx(0.5, rel=1e-12)
    assert row.ci_high == pytest.approx(0.5, rel=1e-12)
    assert row.n_items == 40 and row.interval.startswith("percentile bootstrap")
    # a 4-bit cell that varies on its own: the interval is a real spread around the value
    samples.loc[samples.quant == "rtn-w4", "rougeL_f1"] = rng.uniform(0.1, 0.9, size=40)
    metrics.loc[1, "value"] = 100 * samples[samples.quant == "rtn-w4"].rougeL_f1.mean()
    row = _get(robustness_table(metrics, None, samples, {"samples": 400, "seed": 3}),
               "quantization rtn-w4")
    assert row.ci_low < row.value < row.ci_high


def test_resampled_cell_means_is_the_item_bootstrap_for_one_cell():
    """One cell, one seed: the same draws as stats.bootstrap_ci, whose percentiles it must give
    (the mean of n numbers in float64: rtol a few eps * n)."""
    from relapse.stats import bootstrap_ci, resampled_cell_means

    x = np.random.default_rng(5).uniform(0, 1, size=30)
    means = resampled_cell_means([x[None, :]], samples=500, seed=7)
    assert means.shape == (500, 1)
    _, low, high = bootstrap_ci(x, samples=500, seed=7)
    got = np.percentile(means[:, 0], [2.5, 97.5])
    rtol = 8 * np.finfo(np.float64).eps * x.size
    assert got[0] == pytest.approx(low, rel=rtol) and got[1] == pytest.approx(high, rel=rtol)


# --- faithfulness ------------------------------------------------------------------------------

def _pool():
    """Target at 3 seeds x 2 quants, retrain at 5 cells; KnowMem and an MIA AUC overlapping."""
    rows = []
    know_t = [80, 70, 30, 90, 60, 85]
    know_r = [10, 35, 30, 5, 75]
    auc_t = [0.1, 0.3, 0.6, 0.2, 0.45, 0.05]
    auc_r = [0.5, 0.45, 0.3, 0.55, 0.7]
    cells_t = [(s, q) for s in (0, 1, 2) for q in ("none-w16", "rtn-w4")]
    cells_r = [(0, "none-w16"), (0, "rtn-w4"), (0, "rtn-w8"), (1, "none-w16"), (1, "rtn-w4")]
    for (s, q), k, a in zip(cells_t, know_t, auc_t):
        rows += [_row("target", "default", q, "knowmem", "forget", "rougeL_f1", k, seed=s),
                 _row("target", "default", q, "mia_loss", "forget_vs_holdout", "auc", a, seed=s)]
    for (s, q), k, a in zip(cells_r, know_r, auc_r):
        rows += [_row("retrain", "default", q, "knowmem", "forget", "rougeL_f1", k, seed=s),
                 _row("retrain", "default", q, "mia_loss", "forget_vs_holdout", "auc", a,
                      seed=s)]
    rows.append(_row("ga", H1, "none-w16", "knowmem", "forget", "rougeL_f1", 50))
    return pd.DataFrame(rows), (know_t, know_r, auc_t, auc_r)


def test_faithfulness_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    metrics, (know_t, know_r, auc_t, auc_r) = _pool()
    table = faithfulness_table(metrics, min_pool=5, boot={"samples": 200, "seed": 0})
    labels = [1] * 6 + [0] * 5
    know = table[table.metric == "knowmem"].iloc[0]
    assert know.auc == pytest.approx(roc_auc_score(labels, know_t + know_r), rel=1e-12)
    # the MIA AUC read the knowledge way round: 1 - AUC
    mia = table[table.metric == "mia_loss"].iloc[0]
    assert mia.auc == pytest.approx(roc_auc_score(labels, [1 - a for a in auc_t + auc_r]),
                                    rel=1e-12)
    assert (know.n_positive, know.n_negative) == (6, 5) and know.reason == ""
    assert know.ci_low <= know.auc <= know.ci_high
    assert 0.5 < know.auc < 1.0 and 0.5 < mia.auc < 1.0        # overlapping pools


def test_faithfulness_refuses_under_the_minimum_pool():
    metrics, _ = _pool()
    table = faithfulness_table(metrics, min_pool=6)
    assert table.auc.isna().all() and table.ci_low.isna().all()
    assert (table.n_negative == 5).all()
    assert all("5 never-trained" in r and "min_pool is 6" in r for r in table.reason)


def test_min_pool_is_validated():
    import yaml

    from relapse.config import ConfigError, validate

    cfg = yaml.safe_load(open(pytest.importorskip("pathlib").Path(__file__).resolve().parents[1]
                              / "config" / "config.yaml"))
    assert validate(cfg)["report"]["faithfulness"]["min_pool"] == 5
    cfg["report"] = {"faithfulness": {"min_pool": 1}}
    with pytest.raises(ConfigError, match="report.faithfulness.min_pool: 1 is less than"):
        validate(cfg)


# --- the report stage -------------------------------------------------------------------------

def test_report_stage_writes_the_meta_evaluation(tmp_path):
    """`relapse report --attacks`: the robustness table (its numbers as above), faithfulness and
    the heatmap, exactly the files plan.outputs(attacks=True) declares; without --attacks, no
    robustness files."""
    import json

    from relapse.cli import main
    from relapse.report.plan import outputs

    metrics, attacks = tables()
    metrics = metrics.assign(params="full", quant_scheme=metrics.quant.str.split("-").str[0],
                             bits=metrics.quant.str.extract(r"w(\d+)")[0].astype(int),
                             ci_low=metrics.value - 1, ci_high=metrics.value + 1, n=10)
    extra = metrics[metrics.metric == "knowmem"].assign(split="retain", value=95.0)
    metrics = pd.concat([metrics, extra], ignore_index=True)
    cells = []
    for i, (_, cell) in enumerate(metrics.groupby(["method", "hp", "quant"])):
        path = tmp_path / "cells" / f"{i}.parquet"
        path.parent.mkdir(exist_ok=True)
        cell.to_parquet(path, index=False)
        cells.append(str(path))
    attack_path = tmp_path / "attacks.parquet"
    attacks.to_parquet(attack_path, index=False)
    cfg = {"unlearning": {"loss_variant": "paper"},
           "quantization": {"schemes": [{"scheme": "none", "bits": [16]},
                                        {"scheme": "rtn", "bits": [8, 4]}]},
           "report": {"faithfulness": {"min_pool": 2}}}

    def run(root, *extra_args):
        return main(["report", "--settings", json.dumps({"config": cfg}),
                     "--table", str(root / "tables" / "metrics.parquet"),
                     "--tables", str(root / "tables"), "--figures", str(root / "figures"),
                     *cells, *extra_args])

    root = tmp_path / "with"
    assert run(root, "--attacks", str(attack_path)) == 0
    written = {str(p.relative_to(tmp_path)).replace("with/", "results/", 1)
               for p in root.rglob("*") if p.is_file()}
    assert written == {o.path for o in outputs(attacks=True).values()}
    table = pd.read_parquet(root / "tables" / "metric_robustness.parquet")
    assert _get(table, "relearn k5 @none-w16").value == pytest.approx(np.mean([10 / 40, 1.0]),
                                                                      rel=1e-12)
    assert pd.read_csv(root / "tables" / "metric_robustness.csv").shape[0] == len(table)
    assert "| b | knowmem | forget |" in (root / "tables" / "metric_robustness.md").read_text()
    assert (root / "figures" / "metric_robustness.png").read_bytes()[:4] == b"\x89PNG"
    faith = pd.read_csv(root / "tables" / "faithfulness.csv")
    know = faith[(faith.metric == "knowmem") & (faith.split == "forget")].iloc[0]
    assert (know.n_positive, know.n_negative, know.auc) == (3, 3, 1.0)

    bare = tmp_path / "without"
    assert run(bare) == 0
    assert not list(bare.rglob("metric_robustness*"))
    assert (bare / "tables" / "faithfulness.md").exists()


def _mia_samples(cells):
    """MIA samples rows: per cell, per-text loss scores of 12 forget texts (member 1) and 12
    holdout texts (member 0), items numbered within each class as evaluate writes them."""
    out = []
    for quant, (forget, holdout) in cells.items():
        for member, scores in ((1.0, forget), (0.0, holdout)):
            for item, score in enumerate(scores):
                out.append({"bench": B, "method": "ga", "hp": H1, "seed": 0, "quant": quant,
                            "metric": "mia_loss", "split": "forget_vs_holdout", "item": item,
                            "member": member, "score": float(score)})
    return pd.DataFrame(out)


def test_mia_intervals_draw_the_texts_once_for_every_cell():
    """The 4-bit cell's scores are a monotone map of the full-precision ones: the same ranks,
    so the same AUC in every resample that draws the same texts for both: Q = 1, a zero-width
    interval. A 4-bit cell that forgets less (members' losses lower) gets Q < 1 with a spread."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    forget, holdout = rng.uniform(0, 3, 12), rng.uniform(1, 4, 12)
    labels = [1] * 12 + [0] * 12

    def auc_row(quant, f, h):
        # relapse's orientation: AUC of the loss score with forget texts labelled 1
        return _row("ga", H1, quant, "mia_loss", "forget_vs_holdout", "auc",
                    roc_auc_score(labels, np.r_[f, h]))

    metrics = pd.DataFrame([auc_row("none-w16", forget, holdout),
                            auc_row("rtn-w4", 2 * forget + 1, 2 * holdout + 1)])
    samples = _mia_samples({"none-w16": (forget, holdout),
                            "rtn-w4": (2 * forget + 1, 2 * holdout + 1)})
    row = _get(robustness_table(metrics, None, samples, {"samples": 300, "seed": 0}),
               "quantization rtn-w4", "mia_loss", "forget_vs_holdout")
    assert (row.value, row.ci_low, row.ci_high) == (1.0, 1.0, 1.0)
    assert row.n_items == 24
    revived = forget * 0.3                                  # members look more familiar
    metrics = pd.DataFrame([auc_row("none-w16", forget, holdout),
                            auc_row("rtn-w4", revived, holdout)])
    samples = _mia_samples({"none-w16": (forget, holdout), "rtn-w4": (revived, holdout)})
    row = _get(robustness_table(metrics, None, samples, {"samples": 300, "seed": 0}),
               "quantization rtn-w4", "mia_loss", "forget_vs_holdout")
    before = 1 - roc_auc_score(labels, np.r_[forget, holdout])
    after = 1 - roc_auc_score(labels, np.r_[revived, holdout])
    assert after > before and row.value == pytest.approx(before / after, rel=1e-12)
    assert row.ci_low < row.value <= row.ci_high <= 1.0
    # without the texts' classes, no interval
    row = _get(robustness_table(metrics, None, samples.drop(columns="member")),
               "quantization rtn-w4", "mia_loss", "forget_vs_holdout")
    assert math.isnan(row.ci_low) and row.interval == "none: no per-item scores"
