"""The report over the whole attack matrix: the worst attack under a utility budget, revival
across every hp, the diagnostics' rank correlation with the attacks, and their outputs."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from relapse.config import ConfigError, validate
from relapse.report import diagnostics_attacks as da
from relapse.report.attack_matrix import attack_matrix
from relapse.report.plan import META_DIAGNOSTICS, META_REVIVAL, META_WORST, meta_parts, outputs
from relapse.report.revival import revival_counts, revival_points
from relapse.report.worst_case import worst_case

BENCH, HP = "b", "h1"


def _row(method, quant, split, value, hp="default", seed=0, **attack):
    return {"bench": BENCH, "method": method, "hp": hp, "seed": seed, "quant": quant,
            "metric": "knowmem", "split": split, "stat": "rougeL_f1", "value": value, **attack}


def _tables(cells):
    """metrics (un-attacked) and attacks tables from (method, quant, attack dict, KnowMem_f,
    KnowMem_r) tuples."""
    m, a = [], []
    for method, quant, attack, f, r in cells:
        hp = "default" if method == "target" else HP
        rows = [_row(method, quant, "forget", f, hp, **attack),
                _row(method, quant, "retain", r, hp, **attack)]
        (a if attack else m).extend(rows)
    return pd.DataFrame(m), pd.DataFrame(a)


RELEARN = {"attack": "relearn", "attack_data": "forget", "attack_steps": 10.0, "sparsity": None}
PRUNE = {"attack": "prune", "attack_data": "none", "attack_steps": None, "sparsity": 0.5}


def test_the_worst_attack_within_the_budget_is_chosen_not_the_strongest():
    metrics, attacks = _tables([
        ("target", "none-w16", {}, 50.0, 90.0), ("target", "rtn-w4", {}, 40.0, 88.0),
        ("npo", "none-w16", {}, 10.0, 80.0),
        ("npo", "rtn-w4", {}, 12.0, 79.0),            # drop 1.25%: allowed, retained 12/40
        ("npo", "none-w16", RELEARN, 45.0, 60.0),     # the strongest: drop 25%, breaks 10%
        ("npo", "none-w16", PRUNE, 20.0, 74.0),       # drop 7.5%, retained 20/50: the pick
    ])
    matrix = attack_matrix(metrics, attacks)
    row = worst_case(matrix, 0.10).iloc[0]
    assert row.chosen_label == "none-w16 + prune s=0.5"
    assert row.chosen_retained == pytest.approx(20 / 50)
    assert row.chosen_utility_drop == pytest.approx(1 - 74 / 80)
    assert row.unattacked == pytest.approx(10 / 50)
    assert row.chosen_recovery == pytest.approx(20 / 50 - 10 / 50)
    assert row.strongest_label == "none-w16 + relearn forget k=10"
    assert row.strongest_retained == pytest.approx(45 / 50)
    assert row.strongest_breaks_budget
    assert (row.n_attacks, row.n_within_budget) == (3, 2)
    # the quantized model is divided by the target at its own quant
    q = matrix[matrix.label == "rtn-w4"].iloc[0]
    assert q.retained == pytest.approx(12 / 40)
    # a looser budget lets the strongest through
    loose = worst_case(matrix, 0.30).iloc[0]
    assert loose.chosen_label == loose.strongest_label and not loose.strongest_breaks_budget


def test_no_attack_within_the_budget_chooses_none():
    metrics, attacks = _tables([("target", "none-w16", {}, 50.0, 90.0),
                                ("npo", "none-w16", {}, 10.0, 80.0),
                                ("npo", "none-w16", RELEARN, 45.0, 60.0)])
    row = worst_case(attack_matrix(metrics, attacks), 0.10).iloc[0]
    assert row.chosen_label is None and math.isnan(row.chosen_retained)
    assert row.strongest_breaks_budget


def _items(method, quant, scores, hp=HP):
    return {(BENCH, method, hp, 0, quant, "none", "none", 0.0, 0.0, "forget"):
            pd.Series(scores, index=[f"q{i}" for i in range(len(scores))], dtype=float)}


def test_revival_counts_points_above_below_and_on_the_diagonal():
    n = 40
    rng = np.random.default_rng(1)
    target = rng.uniform(60, 100, n)
    cells = [("target", q, {}, target.mean(), 90.0) for q in ("none-w16", "rtn-w4")]
    items = {**_items("target", "none-w16", target, "default"),
             **_items("target", "rtn-w4", target, "default")}
    cases = {  # hp: (full-precision items, 4-bit items, expected position)
        "up": (np.zeros(n), target, "above"),          # 0% -> 100% retained
        "down": (target, np.zeros(n), "below"),
        "same": (target / 2, target / 2, "on"),        # identical items: d = 0 in every draw
        "none": (target / 2, target / 4, "undetermined"),   # no per-item scores below
    }
    for hp, (full, four, _) in cases.items():
        cells += [("npo", "none-w16", {}, full.mean(), 80.0),
                  ("npo", "rtn-w4", {}, four.mean(), 80.0)]
        if hp != "none":
            items |= _items("npo", "none-w16", full, hp) | _items("npo", "rtn-w4", four, hp)
    rows = []
    for i, (method, quant, attack, f, r) in enumerate(cells):
        hp = "default" if method == "target" else list(cases)[(i - 2) // 2]
        rows += [_row(method, quant, "forget", f, hp), _row(method, quant, "retain", r, hp)]
    matrix = attack_matrix(pd.DataFrame(rows))
    points = revival_points(matrix, items, {"samples": 300, "seed": 0}).set_index("hp")
    for hp, (full, four, where) in cases.items():
        assert points.loc[hp, "position"] == where, hp
        assert points.loc[hp, "diff"] == pytest.approx(four.mean() / target.mean()
                                                       - full.mean() / target.mean())
    assert points.loc["same", ["diff_ci_low", "diff_ci_high"]].tolist() == [0.0, 0.0]
    counts = revival_counts(points.reset_index()).iloc[0]
    assert (counts.points, counts.above, counts.below, counts.on, counts.undetermined) == \
        (4, 1, 1, 1, 1)


@pytest.mark.parametrize("x,y", [
    ([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]),
    ([0.1, 0.1, 0.3, 0.2, 0.9, 0.5, 0.5], [3, 1, 2, 2, 8, 5, 0]),     # ties on both sides
    ([5, 4, 3, 2, 1], [1, 2, 3, 4, 5]),
])
def test_spearman_matches_scipy(x, y):
    from scipy.stats import spearmanr

    assert da.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_correlations_refuse_under_the_minimum_and_answer_at_it():
    models = [{"bench": BENCH, "method": "npo", "hp": f"h{i}", "seed": 0} for i in range(6)]
    diag = pd.DataFrame([{**m, "diagnostic": "cka mean", "value": v}
                         for m, v in zip(models, [0.9, 0.8, 0.7, 0.75, 0.5, 0.4])])
    rec = pd.DataFrame([{**m, "attack": "rtn-w4", "recovery": r}
                        for m, r in zip(models, [0.0, 0.1, 0.3, 0.2, 0.5, 0.6])]
                       + [{**m, "attack": "relearn", "recovery": 0.1 * i}
                          for i, m in enumerate(models[:4])])
    table = da.correlations(diag, rec, min_models=5, boot={"samples": 200, "seed": 0})
    table = table.set_index("attack")
    from scipy.stats import spearmanr

    ok = table.loc["rtn-w4"]
    assert ok.n_models == 6 and ok.answer == "yes"
    assert ok.rho == pytest.approx(spearmanr([0.9, 0.8, 0.7, 0.75, 0.5, 0.4],
                                             [0.0, 0.1, 0.3, 0.2, 0.5, 0.6]).statistic)
    assert ok.rho_ci_low <= ok.rho <= ok.rho_ci_high
    few = table.loc["relearn"]
    assert few.n_models == 4 and math.isnan(few.rho) and "4 < 5" in few.answer
    md = da.to_markdown(table.reset_index(), 5)
    assert "1 of 2 pairs here have too few models" in md


def test_meta_parts_follow_what_the_config_gives():
    assert meta_parts(["none-w16"]) == set()
    assert meta_parts(["none-w16", "rtn-w8"]) == {META_WORST}
    assert meta_parts(["none-w16", "rtn-w4"], diagnosed=True) == \
        {META_WORST, META_REVIVAL, META_DIAGNOSTICS}
    assert "worst_case_relearn" in meta_parts(["none-w16"], attacked=True, relearn=True)


def test_every_part_is_written_where_the_plan_declares_it(tmp_path):
    from relapse.report.meta_eval import write_meta

    metrics, attacks = _tables([
        ("target", "none-w16", {}, 50.0, 90.0), ("target", "rtn-w4", {}, 40.0, 88.0),
        ("npo", "none-w16", {}, 10.0, 80.0), ("npo", "rtn-w4", {}, 12.0, 79.0),
        ("npo", "none-w16", RELEARN, 45.0, 60.0)])
    apath = tmp_path / "attacks.parquet"
    attacks.to_parquet(apath)
    survival = pd.DataFrame([{"bench": BENCH, "method": "npo", "hp": HP, "seed": 0,
                              "quant": "rtn-w4", "scheme": "rtn", "bits": 4, "module": "m",
                              "layer": 0, "delta_over_step": 1.0, "same_code_fraction": 0.5,
                              "update_survival": 0.7, "cosine": 1.0, "norm_ratio": 1.0}])
    spath = tmp_path / "diagnostics.parquet"
    survival.to_parquet(spath)
    parts = meta_parts(["none-w16", "rtn-w4"], attacked=True, relearn=True, diagnosed=True)
    written = write_meta(metrics, {}, tmp_path / "results/tables", tmp_path / "results/figures",
                         parts, str(apath), [], [str(spath)], [])
    declared = {o.path for k, o in outputs(meta=parts).items()
                if any(k.startswith(p) for p in parts)}
    assert {str(p.relative_to(tmp_path)) for p in written} == declared
    assert all((tmp_path / p).stat().st_size > 0 for p in declared)
    table = pd.read_csv(tmp_path / "results/tables/diagnostics_vs_attacks.csv")
    assert (table.n_models == 1).all() and table.rho.isna().all()


def test_a_utility_budget_outside_0_1_is_refused(root):
    raw = yaml.safe_load((root / "config" / "config.yaml").read_text())
    assert validate(copy.deepcopy(raw))["report"]["utility_budget"] == 0.1
    for key, value in (("utility_budget", 1.5), ("utility_budget", -0.1),
                       ("min_correlation_models", 2)):
        cfg = copy.deepcopy(raw)
        cfg.setdefault("report", {})[key] = value
        with pytest.raises(ConfigError, match=rf"report\.{key}"):
            validate(cfg)


def test_utility_is_mmlu_where_the_run_has_it():
    metrics, attacks = _tables([
        ("target", "none-w16", {}, 50.0, 90.0), ("npo", "none-w16", {}, 10.0, 80.0),
        ("npo", "none-w16", PRUNE, 30.0, 40.0)])     # KnowMem_r halves ...
    mmlu = [{**_row("npo", "none-w16", "test", v, HP, **a), "metric": "mmlu", "stat": "accuracy"}
            for v, a in ((0.60, {}), (0.57, PRUNE))]  # ... but MMLU drops 5%
    matrix = attack_matrix(pd.concat([metrics, pd.DataFrame(mmlu)], ignore_index=True), attacks)
    row = worst_case(matrix, 0.10).iloc[0]
    assert matrix.utility_measure.iloc[0] == "mmlu/test/accuracy"
    assert row.chosen_label == "none-w16 + prune s=0.5"
    assert row.chosen_utility_drop == pytest.approx(1 - 0.57 / 0.60)
