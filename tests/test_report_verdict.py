"""The reversibility verdict (report/verdict.py) and the durability table that carries it
(report/durability.py): each branch on hand-made per-item scores whose intervals are known in
advance, the intervals against an independent normal-theory computation, pruning matched with
the target pruned at the same sparsity, the plan that prunes the target, and the config keys."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from relapse.report.verdict import verdict

BOOT = {"samples": 2000, "seed": 0}
Z = 1.959963984540054      # the standard normal's 97.5% quantile


def ones(n: int, hits) -> pd.Series:
    """Per-item KnowMem scores (x100) of n items: 100 on the items `hits`, else 0."""
    out = np.zeros(n)
    out[list(hits)] = 100.0
    return pd.Series(out, index=pd.RangeIndex(n, name="item"))


def roles(n, target, unlearned, relearned, control, retrain):
    return {"target": ones(n, target), "unlearned": ones(n, unlearned),
            "relearned": ones(n, relearned), "control": ones(n, control),
            "retrain_relearned": ones(n, retrain)}


# --- the branches -------------------------------------------------------------------------------

def test_reversible_when_every_interval_is_clear():
    """T knows all 50 items, U 5 of them; F all 50, C the 5 U knew plus 2, R 10: every
    quantity's interval is far from its bound (kept 0.1, recovery 0.9, beyond control 0.41,
    beyond retrain 0.8, each resampled over 50 items)."""
    n = 50
    got = verdict(roles(n, range(n), range(5), range(n), range(7), range(10)), boot=BOOT)
    assert got["label"] == "reversible"
    assert got["kept"] == pytest.approx(0.1) and got["recovery"] == pytest.approx(0.9)
    assert got["beyond_control"] == pytest.approx(0.5 * 0.9 - 0.04)
    assert got["beyond_retrain"] == pytest.approx(0.8)
    assert got["kept_ci_high"] < 0.75 and got["recovery_ci_low"] > 0
    assert got["n_items"] == n and got["km_target"] == pytest.approx(100)


def test_the_issue_cases_are_not_reversible():
    """T = 1, U = 0.9, F = 0.85, C = 0.7 (the old rule: F >= T/2 and C - U = -0.2 <
    0.5 (F - U) = -0.025, reversible), and U = F = 0.9: nothing was forgotten. 100 items: U's
    kept 0.9 has a 97.5% bound near 0.96, far above 0.75."""
    n = 100
    first = verdict(roles(n, range(n), range(90), range(85), range(70), range(40)), boot=BOOT)
    second = verdict(roles(n, range(n), range(90), range(90), range(70), range(40)), boot=BOOT)
    for got in (first, second):
        assert got["label"] == "not forgotten"
        assert got["kept"] == pytest.approx(0.9) and got["kept_ci_high"] >= 0.75
    # With a margin that only asks for 1% forgotten, U = 0.9 is forgotten, but a recovery of
    # F - U = -0.05 is not one: no longer reversible either.
    loose = verdict(roles(n, range(n), range(90), range(85), range(70), range(40)),
                    {"forget_margin": 0.01}, BOOT)
    assert loose["kept_ci_high"] < 0.99 and loose["recovery_ci_low"] < 0
    assert loose["label"] == "inconclusive"


def test_f_just_above_r_with_wide_intervals_is_inconclusive():
    """F = 0.51 against R = 0.50 on 100 items that disagree (F knows items 0-50, R 50-99): the
    per-item difference is +-1 on 99 items, so (F - R)/T = 0.01 with a standard error near 0.1:
    its interval holds 0 and reaches above the 0.1 margin -- neither verdict is established."""
    n = 100
    got = verdict(roles(n, range(n), [], range(51), [], range(50, 100)), boot=BOOT)
    assert got["beyond_retrain"] == pytest.approx(0.01)
    assert got["beyond_retrain_ci_low"] < 0 < 0.1 < got["beyond_retrain_ci_high"]
    assert got["label"] == "inconclusive" and "beyond_retrain" in got["reason"]


def test_f_equal_to_r_on_the_same_items_is_irreversible():
    """The same means, F = 0.51 and R = 0.50, but on the same items (F knows 0-50, R 0-49):
    the paired difference is 1 on item 50 only. A resample leaves item 50 out with probability
    (1 - 1/100)^100 = 0.366 > 2.5%, so lo = 0 (not above R), and holds it more than 4 times
    with probability 0.019 < 2.5%, so hi <= 0.04 (within the 0.1 margin): irreversible."""
    n = 100
    got = verdict(roles(n, range(n), [], range(51), [], range(50)), boot=BOOT)
    assert got["beyond_retrain_ci_low"] == 0.0 and got["beyond_retrain_ci_high"] <= 0.04
    assert got["label"] == "irreversible"
    # The same when relearning brings back nothing at all: F = U on every item.
    none = verdict(roles(n, range(n), range(10), range(10), range(10), range(10)), boot=BOOT)
    assert none["recovery_ci_low"] == none["recovery_ci_high"] == 0.0
    assert none["label"] == "irreversible"


def test_a_control_that_recovers_as_much_is_not_reversible():
    """C = F: the control brings back all that forget data does, so control_ratio (F - U) -
    (C - U) = -0.5 (F - U) < 0 on every resample; F is far above R, so not irreversible."""
    n = 50
    got = verdict(roles(n, range(n), range(5), range(n), range(n), range(10)), boot=BOOT)
    assert got["beyond_control_ci_high"] < 0 and got["label"] == "inconclusive"
    assert "beyond_control" in got["reason"]


def test_undetermined_without_a_cell_or_a_target_that_knows():
    n = 20
    cells = roles(n, range(n), range(2), range(n), range(2), range(4))
    assert verdict({**cells, "retrain_relearned": None}, boot=BOOT)["label"] == "undetermined"
    assert verdict({**cells, "target": None}, boot=BOOT)["label"] == "undetermined"
    zero = roles(n, [], [], range(n), [], [])
    assert verdict(zero, boot=BOOT)["label"] == "undetermined"
    # Not forgotten needs only T and U.
    kept = roles(n, range(n), range(n), range(n), range(n), range(n))
    assert verdict({**kept, "relearned": None}, boot=BOOT)["label"] == "not forgotten"
    # Items are paired by their key: disjoint keys share nothing.
    shifted = {**cells, "unlearned": cells["unlearned"].set_axis(range(100, 100 + n))}
    assert verdict(shifted, boot=BOOT)["label"] == "undetermined"


# --- the intervals ------------------------------------------------------------------------------

def test_intervals_match_normal_theory_on_many_items():
    """On 400 items with scores in [0, 100], each percentile interval's ends are within a
    quarter standard error of the delta-method normal interval (an independent computation:
    the ratio of means r = mean(d)/mean(t) has influence (d_i - r t_i)/mean(t) per item); the
    Monte Carlo error of a 2.5% quantile over 2000 resamples is about 0.06 standard errors."""
    rng = np.random.default_rng(7)
    n = 400
    t = rng.uniform(50, 100, n)
    u = t * rng.uniform(0, 0.4, n)
    f = np.clip(u + rng.normal(30, 25, n), 0, 100)
    c = np.clip(u + rng.normal(5, 20, n), 0, 100)
    r = np.clip(rng.normal(35, 30, n), 0, 100)
    series = {k: pd.Series(v) for k, v in zip(
        ("target", "unlearned", "relearned", "control", "retrain_relearned"), (t, u, f, c, r))}
    got = verdict(series, boot=BOOT)
    numerators = {"kept": u, "recovery": f - u, "beyond_control": 0.5 * (f - u) - (c - u),
                  "beyond_retrain": f - r}
    for name, d in numerators.items():
        ratio = d.mean() / t.mean()
        se = np.std((d - ratio * t) / t.mean(), ddof=1) / np.sqrt(n)
        assert got[name] == pytest.approx(ratio, rel=1e-12)
        assert got[f"{name}_ci_low"] == pytest.approx(ratio - Z * se, abs=0.25 * se)
        assert got[f"{name}_ci_high"] == pytest.approx(ratio + Z * se, abs=0.25 * se)


def test_paired_item_means_draws_the_items_once_for_every_model():
    """Two models whose scores differ by the same 3 on every item: their resampled means
    differ by exactly 3 in every resample (an unpaired draw would scatter the difference)."""
    from relapse.stats import paired_item_means

    x = np.random.default_rng(1).uniform(0, 100, 30)
    means = paired_item_means(np.stack([x + 3, x]), samples=500, seed=2)
    assert means.shape == (500, 2)
    np.testing.assert_allclose(means[:, 0] - means[:, 1], 3.0, rtol=0, atol=1e-12)
    assert means[:, 1].std() > 1     # ... while each mean does vary


# --- the durability table -----------------------------------------------------------------------

def _row(method, quant, value, attack="none", data="none", steps=0.0, sparsity=np.nan, hp="h"):
    return {"bench": "b", "method": method, "hp": "default" if method in ("target", "retrain")
            else hp, "seed": 0, "quant": quant, "metric": "knowmem", "split": "forget",
            "stat": "rougeL_f1", "value": value, "ci_low": value - 2, "ci_high": value + 2,
            "attack": attack, "attack_data": data, "attack_steps": steps, "sparsity": sparsity}


def _items(method, quant, series, attack="none", data="none", steps=0.0, sparsity=np.nan):
    """samples.parquet rows of one cell: rougeL_f1 in [0, 1] (the metric's value / 100)."""
    return pd.DataFrame({"bench": "b", "method": method,
                         "hp": "default" if method in ("target", "retrain") else "h",
                         "seed": 0, "quant": quant, "metric": "knowmem", "split": "forget",
                         "item": series.index, "rougeL_f1": series.to_numpy() / 100,
                         "attack": attack, "attack_data": data, "attack_steps": steps,
                         "sparsity": sparsity})


def _frames(n, target, unlearned, relearned, control, retrain):
    """attacks, metrics and item scores of one unlearned model at full precision, made from
    the same per-item scores (the means are the items' means)."""
    cells = roles(n, target, unlearned, relearned, control, retrain)
    mean = {k: float(v.mean()) for k, v in cells.items()}
    q = "none-w16"
    metrics = pd.DataFrame([_row("target", q, mean["target"]), _row("npo", q, mean["unlearned"])])
    attacks = pd.DataFrame([
        _row("npo", q, mean["unlearned"]),
        _row("npo", q, mean["relearned"], "relearn", "forget", 20.0),
        _row("npo", q, mean["control"], "relearn", "holdout", 20.0),
        _row("retrain", q, mean["retrain_relearned"], "relearn", "forget", 20.0),
        _row("npo", q, 0.3 * mean["unlearned"], "prune", "none", 0.0, 0.5),
        _row("target", q, 0.5 * mean["target"], "prune", "none", 0.0, 0.5)])
    samples = pd.concat([
        _items("target", q, cells["target"]), _items("npo", q, cells["unlearned"]),
        _items("npo", q, cells["relearned"], "relearn", "forget", 20.0),
        _items("npo", q, cells["control"], "relearn", "holdout", 20.0),
        _items("retrain", q, cells["retrain_relearned"], "relearn", "forget", 20.0)])
    return attacks, metrics, samples


def test_durability_reads_the_verdict_from_item_scores_and_matches_pruning():
    from relapse.report.durability import durability_table, to_markdown

    n = 100
    # the old rule's first case: T = 1, U = 0.9, F = 0.85, C = 0.7 (old label: reversible)
    attacks, metrics, samples = _frames(n, range(n), range(90), range(85), range(70), range(40))
    row = durability_table(attacks, metrics, None, None, samples, BOOT).iloc[0]
    assert row.label == "not forgotten" and row.kept == pytest.approx(0.9)
    assert row.relearn_k20 == pytest.approx(0.85) and row.retrain_relearn == pytest.approx(0.4)
    # Pruning: the model pruned keeps 0.3 x 90 = 27 of the un-pruned target's 100, and of the
    # target pruned at the same sparsity (50): 27 / 50.
    assert row["prune_s0.5"] == pytest.approx(27 / 50)
    assert row["prune_s0.5_ci_low"] == pytest.approx(25 / 50)
    assert row["prune_s0.5_vs_unpruned"] == pytest.approx(27 / 100)
    # A clearly reversible model; without the item scores, no verdict.
    attacks, metrics, samples = _frames(50, range(50), range(5), range(50), range(7), range(10))
    table = durability_table(attacks, metrics, None, None, samples, BOOT)
    assert table.iloc[0].label == "reversible"
    assert durability_table(attacks, metrics).iloc[0].label == "undetermined"
    # No pruned target: the matched number is missing, not the un-pruned one in its place.
    alone = durability_table(attacks[~((attacks.method == "target") & (attacks.attack == "prune"))],
                             metrics, None, None, samples, BOOT).iloc[0]
    assert np.isnan(alone["prune_s0.5"]) and alone["prune_s0.5_vs_unpruned"] == \
        pytest.approx(0.3 * 5 / 50)
    text = to_markdown(table)
    assert "reversible" in text and "hi(U/T) >= 0.75" in text and "verdict: kept" in text
    with pytest.raises(ValueError, match="min_recovery"):
        durability_table(attacks, metrics, None, {"min_recovery": 0.5}, samples, BOOT)


def test_write_durability_puts_every_number_and_interval_in_labels_csv(tmp_path):
    from relapse.report.durability import write_durability

    attacks, metrics, samples = _frames(50, range(50), range(5), range(50), range(7), range(10))
    attacks.to_parquet(tmp_path / "attacks.parquet")
    metrics.to_parquet(tmp_path / "metrics.parquet")
    paths = []
    for i, (_, cell) in enumerate(samples.groupby(["method", "attack", "attack_data"])):
        if cell.attack.iloc[0] == "none":      # an un-attacked cell's file has no attack keys
            cell = cell.drop(columns=["attack", "attack_data", "attack_steps", "sparsity"])
        cell.to_parquet(tmp_path / f"s{i}.parquet")
        paths.append(str(tmp_path / f"s{i}.parquet"))
    paths.append(str(tmp_path / "missing.parquet"))     # a cell not evaluated: skipped
    write_durability(tmp_path / "attacks.parquet", tmp_path / "metrics.parquet", None,
                     tmp_path / "durability", tmp_path / "labels.csv", {"retrain_margin": 0.2},
                     paths, BOOT)
    labels = pd.read_csv(tmp_path / "labels.csv")
    r = labels.iloc[0]
    assert r.label == "reversible" and r.n_items == 50 and "0.2 (retrain_margin)" in r.rule
    for q in ("kept", "recovery", "beyond_control", "beyond_retrain"):
        assert {q, f"{q}_ci_low", f"{q}_ci_high"} <= set(labels.columns)
    assert r.km_retrain_relearned == pytest.approx(20.0) and isinstance(r.reason, str)
    assert "prune_s0.5_vs_unpruned" in pd.read_csv(tmp_path / "durability.csv").columns


# --- the plan prunes the target; the config ----------------------------------------------------

def test_plan_prunes_the_target_even_when_baselines_leave_it_out(default_config):
    from relapse.attacks import plan

    cfg = json.loads(json.dumps(default_config))
    cfg["attacks"].update(benchmarks=["synthbio"], baselines=["retrain"],
                          quants=["none-w16", "rtn-w4"], hps={"params": "full", "lr": 3e-4})
    cells = plan.attack_cells(cfg)
    target = [c for c in cells if c.method == "target"]
    assert {(c.attack, c.quant, c.variant) for c in target} == \
        {("prune", q, "s0.5") for q in ("none-w16", "rtn-w4")}
    files = plan.durability_samples(cfg)
    assert "results/synthbio/target/default/s0/none-w16/prune/s0.5/samples.parquet" in files
    assert "results/synthbio/target/default/s0/rtn-w4/samples.parquet" in files
    assert all(f"{c.root}/{c.attack}/{c.variant}/samples.parquet" in files for c in cells)
    assert len(files) == len(set(files))
    # With nothing unlearned attacked, no target is pruned for it.
    cfg["attacks"]["hps"] = {"lr": 12345}
    assert not [c for c in plan.attack_cells(cfg) if c.method == "target"]


def test_label_config_keys(default_config):
    from relapse.config import ConfigError, validate

    cfg = json.loads(json.dumps(default_config))
    assert validate(cfg)["attacks"]["label"] == {
        "steps": None, "control": "holdout", "quant": None, "forget_margin": 0.25,
        "control_ratio": 0.5, "retrain_margin": 0.1}
    for key in ("min_recovery", "beyond_retrain"):
        bad = json.loads(json.dumps(cfg))
        bad["attacks"]["label"] = {key: 0.5}
        with pytest.raises(ConfigError, match=f"attacks.label.{key}: .*removed"):
            validate(bad)
    for value in (0, 1, 1.5):
        bad = json.loads(json.dumps(cfg))
        bad["attacks"]["label"] = {"forget_margin": value}
        with pytest.raises(ConfigError, match="forget_margin"):
            validate(bad)
