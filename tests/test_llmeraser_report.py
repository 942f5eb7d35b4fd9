"""The llmeraser table (relapse.report.llmeraser): agreement files + the evaluation's KnowMem on
the edited items -> results/tables/llmeraser.{parquet,md}, checked against hand numbers."""

import math

import pandas as pd
import pytest

from relapse.report import llmeraser as report

# The damping is no hp (it is the fit's λ, in agreement.parquet): rows differ by iterations here.
HP = "iterations=200_params=lora_solver=cg_tol=0.0001"
HP2 = "iterations=50_params=lora_solver=cg_tol=0.0001"


def _items():
    # Two edited items (the correct QA) and one unedited: only the edited ones count.
    return pd.DataFrame({"question": ["Q1", "Q2", "Q3"], "answer": ["A1", "A2", "A3"],
                         "edited": [True, True, False]})


def _samples():
    """KnowMem F1 per item (rougeL_f1 in [0, 1]) of target, gold (retrain) and llmeraser."""
    f1 = {  # method, hp, quant -> (Q1, Q2, Q3)
        ("target", "default", "none-w16"): (1.0, 0.5, 0.0),
        ("retrain", "default", "none-w16"): (0.0, 0.0, 1.0),
        ("llmeraser", HP, "none-w16"): (0.5, 0.5, 1.0),
        ("target", "default", "rtn-w4"): (1.0, 1.0, 0.0),
        ("retrain", "default", "rtn-w4"): (1.0, 1.0, 0.0),
        ("llmeraser", HP, "rtn-w4"): (0.0, 1.0, 0.0),
        ("llmeraser", HP2, "none-w16"): (0.0, 0.0, 0.0),
    }
    rows = []
    for (method, hp, quant), values in f1.items():
        scheme, bits = ("none", 16) if quant == "none-w16" else ("rtn", 4)
        for q, a, v in zip(["Q1", "Q2", "Q3"], ["A1", "A2", "A3"], values):
            rows.append({"bench": "b", "method": method, "hp": hp, "seed": 0, "quant": quant,
                         "quant_scheme": scheme, "bits": bits, "metric": "knowmem",
                         "split": "forget", "question": q, "answer": a, "rougeL_f1": v})
        # another metric on the same question must not count
        rows.append({**rows[-1], "metric": "verbmem", "question": "Q1", "answer": "A1",
                     "rougeL_f1": 0.9})
    return pd.DataFrame(rows)


def _agreement(hp, seconds, to_gold, damping, residual):
    values = {("qa_accuracy_edited", "target"): 1.0, ("nll_edited", "target"): 0.5,
              ("qa_accuracy_edited", "gold"): 0.0, ("nll_edited", "gold"): 3.0,
              ("qa_accuracy_edited", "llmeraser"): 0.5, ("nll_edited", "llmeraser"): 1.0,
              ("delta_w_l2_to_gold", "target"): 4.0, ("delta_w_l2", "target"): 10.0,
              ("delta_w_l2_to_gold", "gold"): 0.0, ("delta_w_l2", "gold"): 9.0,
              ("delta_w_l2_to_gold", "llmeraser"): to_gold, ("delta_w_l2", "llmeraser"): 11.0,
              ("seconds", "llmeraser"): seconds, ("seconds", "gold"): 30.0,
              ("time_ratio_gold_over_llmeraser", "llmeraser"): 30.0 / seconds,
              ("solver_residual", "llmeraser"): residual}
    return pd.DataFrame([{"metric": m, "model": who, "value": v, "bench": "b",
                          "method": "llmeraser", "hp": hp, "seed": 0, "solver": "cg",
                          "damping": damping, "task": "removal"} for (m, who), v in values.items()])


def _log(hp, residuals, status):
    return pd.DataFrame({"iteration": range(len(residuals)), "residual": residuals,
                         "seconds": 0.1, "solver": "cg", "status": status, "bench": "b",
                         "method": "llmeraser", "hp": hp, "seed": 0})


@pytest.fixture
def table():
    # The recorded (recomputed) residuals differ from the logs' last rows, as CG's recursive
    # residual can drift from the true one.
    agreement = pd.concat([_agreement(HP, 2.0, 3.0, 1.0, 3e-5), _agreement(HP2, 10.0, 5.0, 0.01, 0.15)])
    logs = pd.concat([_log(HP, [1.0, 0.1, 1e-5], "converged"),
                      _log(HP2, [1.0, 0.5, 0.2, 0.1], "max_iterations")])
    return report.collect(agreement, logs, _samples(), {"b": _items()})


def _row(table, hp, quant):
    got = table[(table.hp == hp) & (table.quant == quant)]
    assert len(got) == 1
    return got.iloc[0]


def test_knowmem_on_the_edited_items_is_the_evaluations_against_target_and_gold(table):
    # one row per llmeraser model x quant
    assert len(table) == 3
    r = _row(table, HP, "none-w16")
    # edited items Q1, Q2 only: target (1 + .5)/2, gold 0, llmeraser (.5 + .5)/2, x100
    assert r.knowmem_edited_target == pytest.approx(75.0)
    assert r.knowmem_edited_gold == pytest.approx(0.0)
    assert r.knowmem_edited_llmeraser == pytest.approx(50.0)
    assert r.knowmem_edited_items == 2
    # (50 - 75) / (0 - 75): a third of the gap closed
    assert r.knowmem_gap_closed == pytest.approx(1 / 3)
    # per item |llmeraser - gold|: (50 + 50) / 2
    assert r.knowmem_item_diff == pytest.approx(50.0)
    # at rtn-w4 target and gold are compared at rtn-w4 too, and score the same: no gap to close
    q = _row(table, HP, "rtn-w4")
    assert (q.knowmem_edited_target, q.knowmem_edited_gold, q.knowmem_edited_llmeraser) == \
        pytest.approx((100.0, 100.0, 50.0))
    assert math.isnan(q.knowmem_gap_closed)
    assert q.knowmem_item_diff == pytest.approx(50.0)


def test_solve_time_and_weight_agreement_columns(table):
    r = _row(table, HP, "none-w16")
    assert (r.solver, r.damping, r.task) == ("cg", 1.0, "removal")
    assert (r.solver_status, r.iterations, r.residual) == ("converged", 2, pytest.approx(3e-5))
    assert r.logged_residual == pytest.approx(1e-5)
    assert (r.seconds, r.gold_seconds, r.time_ratio) == (2.0, 30.0, pytest.approx(15.0))
    # teacher-forced columns kept beside KnowMem
    assert (r.qa_accuracy_edited_target, r.qa_accuracy_edited_llmeraser,
            r.qa_accuracy_edited_gold) == (1.0, 0.5, 0.0)
    assert r.nll_edited_gold == 3.0
    # 1 - 3 / 4
    assert r.delta_w_gap_closed == pytest.approx(0.25)
    assert (r.delta_w_l2_to_gold_target, r.delta_w_l2_to_gold_llmeraser) == (4.0, 3.0)
    assert "delta_w_l2_to_gold_gold" not in table
    s = _row(table, HP2, "none-w16")
    assert (s.damping, s.solver_status, s.iterations, s.residual) == \
        (0.01, "max_iterations", 3, pytest.approx(0.15))
    assert s.delta_w_gap_closed == pytest.approx(1 - 5 / 4)
    # HP2 was not evaluated at rtn-w4 in these samples: only its full-precision row
    assert list(table[table.hp == HP2].quant) == ["none-w16"]


def test_markdown_reads_target_to_llmeraser_with_gold_in_parentheses(table):
    text = report.to_markdown(table)
    first, second = text.split("**KnowMem on the edited items at each quant**")
    row = next(line for line in first.splitlines() if "| cg | 1 |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:10] == ["b", "removal", "cg", "1", "converged", "3e-05", "2", "2.0", "30", "15.0"]
    assert cells[10:] == ["75.0 → 50.0 (0.0)", "0.33", "1.00 → 0.50 (0.00)",
                          "0.50 → 1.00 (3.00)", "4.00 → 3.00"]
    # only full-precision rows in the first table; every quant in the second
    assert "rtn-w4" not in first and second.count("| rtn-w4 |") == 1
    assert "| b | cg | 1 | rtn-w4 | 100.0 → 50.0 (100.0) | – | 50.0 | 2 |" in second


def test_rows_that_share_solver_and_damping_name_the_hp_keys_that_differ():
    rows = pd.DataFrame({"bench": ["b", "b", "b"], "solver": ["lissa", "lissa", "cg"],
                         "damping": [1.0, 1.0, 1.0], "seed": [0, 0, 0],
                         "hp": ["damping=1_scale=30_solver=lissa", "damping=1_scale=100_solver=lissa",
                                "damping=1_solver=cg"]})
    assert report._labels(rows) == ["lissa scale=30", "lissa scale=100", "cg"]


def test_plan_lists_llmeraser_models_their_cells_and_the_baselines(root):
    from relapse.config import load_config

    cfg = load_config(root / "config" / "llmeraser.yaml")
    got = report.plan(cfg, list(cfg["benchmarks"]))
    assert len(got["unlearned"]) == 9 and all(p.endswith("/unlearned") for p in got["unlearned"])
    # 9 llmeraser models (cg, lissa, adam per bench) + 3 targets + 3 golds, at none-w16 and rtn-w4
    assert len(got["samples"]) == (9 + 6) * 2
    assert sorted(got["lora_setting"]) == [f"results/lora-{t}/lora_setting"
                                           for t in ("query", "removal", "response")]
    assert report.plan(cfg, []) == {}
    assert report.plan({**cfg, "methods": {"ga": {}}}, list(cfg["benchmarks"])) == {}


def test_cli_writes_parquet_and_markdown_from_the_stage_folders(tmp_path):
    from relapse.cli import main
    from relapse.io import read_parquet_metadata

    unlearned = tmp_path / "unlearned"
    unlearned.mkdir()
    _agreement(HP, 2.0, 3.0, 0.01, 3e-5).to_parquet(unlearned / "agreement.parquet")
    _log(HP, [1.0, 1e-5], "converged").drop(columns=["bench", "method", "hp", "seed"]).to_parquet(
        unlearned / "solver_log.parquet")
    (tmp_path / "ls").mkdir()
    _items().to_parquet(tmp_path / "ls" / "items.parquet")
    _samples().to_parquet(tmp_path / "samples.parquet")
    out = tmp_path / "tables"
    assert main(["llmeraser-table", "--settings", '{"config": {"seeds": [0]}}',
                 "--table", str(out / "llmeraser.parquet"), "--markdown", str(out / "llmeraser.md"),
                 "--unlearned", str(unlearned), "--samples", str(tmp_path / "samples.parquet"),
                 "--items", f"b={tmp_path / 'ls'}"]) in (0, None)
    got = pd.read_parquet(out / "llmeraser.parquet")
    assert len(got) == 2 and set(got.iterations) == {1}
    assert "config_hash" in read_parquet_metadata(out / "llmeraser.parquet")
    assert "75.0 → 50.0 (0.0)" in (out / "llmeraser.md").read_text()


@pytest.mark.slow
def test_llmeraser_config_plans_the_table_and_attacks_on_llmeraser_cells(root, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    snakemake = Path(sys.executable).parent / "snakemake"
    out = subprocess.run([str(snakemake), "-n", "--cores", "1", "-s", str(root / "Snakefile"),
                          "--configfile", str(root / "config" / "llmeraser.yaml"),
                          "--directory", str(tmp_path), "results/tables/llmeraser.md",
                          "results/tables/durability.md"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    lines = text.splitlines()
    assert any(line.split() == ["llmeraser_table", "1"] for line in lines)
    # prune and relearn on the llmeraser cell of CG, the target and the gold, per bench
    assert any(line.split() == ["attack", "18"] for line in lines)
    cg = "iterations=200_params=lora_solver=cg_tol=0.0001"
    adam = "adam_lr=0.001_iterations=200_params=lora_scale=100_solver=adam_tol=0.0001"
    assert f"results/lora-query/llmeraser/{cg}/s0/none-w16/prune/models" in text
    assert f"results/lora-query/llmeraser/{adam}/s0/none-w16/prune/models" not in text
