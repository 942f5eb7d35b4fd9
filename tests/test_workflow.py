"""The Snakemake workflow: dry-run job counts, config errors before any job, and (slow) the
small config end to end: outputs, value ranges, no-op rerun, and a one-branch rerun."""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from progress_watch import run_watched, snakemake_progress

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # Bounded by progress (no job event or log growth for 10 min), not by a wall clock: a
    # loaded CI machine makes a run slow, not stuck.
    proc = run_watched([*SNAKEMAKE, "-d", str(workdir), "--cores", "2", *args],
                       stall_s=600, progress=snakemake_progress(workdir))
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from a dry run's 'Job stats' table."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def test_dry_run_of_the_default_plans_the_grid(tmp_path):
    counts = planned_jobs(snakemake(tmp_path, "-n"))
    assert counts == {
        "prepare_data": 2, "train_tokenizer": 1, "train_reference": 2, "snap_reference": 2,
        # 2 arms x (2 full runs, each saving epochs 10 and 20, + 1 lora run): an epochs axis
        # costs one training job
        "unlearn": 6,
        "select_epoch": 10,               # 2 arms x 5 unlearned models
        "quantize": 42, "evaluate": 42,   # 2 arms x (5 + target + retrain) x 3 quants
        "diagnose": 10,                   # one per unlearned model, over rtn-w8 and rtn-w4
        # attacks: synthbio's retrain + 2 unlearned models (the selected hp and the strongest)
        # x (none-w16, rtn-w4) x (relearn, prune); relearn forget-k20 and holdout-k20, prune
        # s0.5 evaluated, and the target pruned at s0.5 at both quants (the matched reference
        # of pruning); represent: one per unlearned model at none-w16
        "attack": 14, "evaluate_attack": 20, "represent": 2, "attack_tables": 1, "durability": 1,
        "ranking": 1, "check_cells": 1, "report": 1, "all": 1, "total": 159}


def test_bad_config_fails_before_any_job(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", "device=tpu", check=False)
    assert proc.returncode != 0
    assert "device: 'tpu' is not allowed" in proc.stdout + proc.stderr
    assert not (tmp_path / "results" / "synthbio").exists()


def test_a_named_configfile_replaces_the_default(tmp_path):
    counts = planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(ROOT / "tests/data/small.yaml")))
    assert counts["unlearn"] == 4 and counts["evaluate"] == 24 and counts["diagnose"] == 4


def _evaluate_commands(tmp_path, privleak, schemes=None, targets=()):
    """{(method, quant): the evaluate command line} of a dry run of the small config with
    `privleak` settings (and `schemes`), asking for `targets`."""
    cfg = yaml.safe_load((ROOT / "tests/data/small.yaml").read_text())
    cfg["evaluation"]["privleak"].update(privleak)
    if schemes is not None:
        cfg["quantization"]["schemes"] = schemes
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, *targets, "-n", "-p", "--configfile", str(path), check=False)
    commands = {}
    for line in proc.stdout.splitlines():
        if "relapse evaluate" in line:
            found = re.search(r"--method (\S+) .*--quant (\S+) ", line)
            commands[found.groups()] = line
    return proc, commands


def _flags(command):
    """The retrain metrics an evaluate command is given, by flag."""
    return dict(re.findall(r"(--(?:full-)?retrain-metrics) (\S+)", command))


RETRAIN = "results/small/retrain/default/s0/{}/metrics.parquet"
CELLS = [f"results/small/{m}/default/s0/rtn-w4/metrics.parquet" for m in ("target", "retrain")]


@pytest.mark.parametrize("reference", ["full", "matched", ["full", "matched"]])
def test_privleak_reference_is_a_dag_edge(tmp_path, reference):
    """full (the default, MUSE's): every cell, the 4-bit retrain included, waits for the
    full-precision retrain's evaluation, which needs none; matched: each cell waits for the
    retrain at its quant; both: both edges, and the retrain is never its own input."""
    proc, commands = _evaluate_commands(tmp_path, {"reference": reference}, targets=CELLS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refs = [reference] if isinstance(reference, str) else reference
    full = {"--full-retrain-metrics": RETRAIN.format("none-w16")} if "full" in refs else {}
    matched = {"--retrain-metrics": RETRAIN.format("rtn-w4")} if "matched" in refs else {}
    expected = {("target", "rtn-w4"): {**full, **matched}, ("retrain", "rtn-w4"): full}
    if "full" in refs:
        expected[("retrain", "none-w16")] = {}
    assert {cell: _flags(c) for cell, c in commands.items()} == expected


def test_full_reference_without_a_full_precision_cell_fails_before_any_job(tmp_path):
    schemes = [{"scheme": "rtn", "bits": [4], "group_size": 64}]
    proc, _ = _evaluate_commands(tmp_path, {"reference": "full"}, schemes)
    assert proc.returncode != 0
    assert "evaluation.privleak.reference: 'full'" in proc.stdout + proc.stderr
    assert "{scheme: none" in proc.stdout + proc.stderr
    proc, commands = _evaluate_commands(tmp_path, {"reference": "matched"}, schemes, CELLS[:1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _flags(commands[("target", "rtn-w4")]) == {"--retrain-metrics": RETRAIN.format("rtn-w4")}


@pytest.mark.slow
def test_small_config_end_to_end(tmp_path):
    config = tmp_path / "small.yaml"
    shutil.copy(ROOT / "tests" / "data" / "small.yaml", config)
    snakemake(tmp_path, "--configfile", str(config))

    table = pd.read_parquet(tmp_path / "results" / "tables" / "metrics.parquet")
    keys = ["bench", "method", "hp", "params", "seed", "quant", "quant_scheme", "bits",
            "metric", "split", "stat", "value", "ci_low", "ci_high", "n"]
    assert set(keys) <= set(table.columns)
    assert set(table.bench) == {"small", "small-qat"}
    assert set(table.method) == {"target", "retrain", "npo_gdr", "ga_gdr"}
    assert set(table.quant) == {"none-w16", "rtn-w4", "bnb-w4"}
    assert (table.n > 0).all()
    assert ((table.ci_low <= table.value + 1e-9) & (table.value <= table.ci_high + 1e-9)).all()
    rouge = table[table.stat == "rougeL_f1"]
    assert rouge.value.between(0, 100).all()

    def value(method, metric, split, quant="none-w16", bench="small", stat=None):
        rows = table[(table.bench == bench) & (table.method == method) & (table.metric == metric)
                     & (table.split == split) & (table.quant == quant)]
        if stat:
            rows = rows[rows.stat == stat]
        assert len(rows) == 1, rows
        return float(rows.value.iloc[0])

    assert value("target", "knowmem", "forget") >= 80
    assert value("target", "knowmem", "retain") >= 80
    # never-trained people: the target can only guess from the templates
    assert value("target", "qa_em", "holdout") <= 0.25
    assert value("retrain", "qa_em", "forget") <= 0.25
    # provenance travels inside the file
    from relapse.io import read_parquet_metadata

    meta = read_parquet_metadata(tmp_path / "results" / "tables" / "metrics.parquet")
    assert meta["versions"]["torch"].startswith("2.13") and meta["config_hash"]
    # numerics: portable (the default) reached the jobs
    assert {k: meta["numerics"][k] for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")} == {
        "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
    summary = (tmp_path / "results" / "tables" / "summary.md").read_text()
    assert "retained" in summary and "npo_gdr" in summary

    # Survival diagnostics: one file per unlearned model, a row per Linear and quant.
    diag = pd.concat(pd.read_parquet(p) for p in
                     (tmp_path / "results").glob("small*/*/*/s0/diagnostics.parquet"))
    assert len(diag) == 2 * 2 * 2 * 28       # 2 arms x 2 methods x 2 quants x 28 Linear
    assert set(diag.quant) == {"rtn-w4", "bnb-w4"}
    full = diag[diag.method == "npo_gdr"]
    assert (full.changed_fraction > 0).all() and full.update_survival.notna().all()
    # lora_merge: adapter keeps the LoRA update in full precision: it survives by construction,
    # which the rows say instead of reporting survival 1.0 as a finding
    lora = diag[(diag.method == "ga_gdr") & (diag.changed_fraction > 0)]
    assert len(lora) and (lora.lora_merge == "adapter").all()
    assert lora.update_survival.isna().all() and lora.same_code_fraction.isna().all()
    assert lora.note.str.contains("by construction").all()
    manifest = json.loads((tmp_path / "results" / "small" / "ga_gdr").glob("*/s0/bnb-w4/model")
                          .__next__().joinpath("quant_manifest.json").read_text())
    assert manifest["library"] == "bitsandbytes" and manifest["lora_merge"] == "adapter"

    # Nothing changed: nothing to do.
    assert planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(config))) == {}

    # One method's lr changes: only that branch (and the report) is scheduled.
    cfg = yaml.safe_load(config.read_text())
    cfg["methods"]["npo_gdr"]["lr"] = 2.0e-4
    config.write_text(yaml.safe_dump(cfg))
    counts = planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(config)))
    assert counts == {"unlearn": 2, "select_epoch": 2, "quantize": 6, "evaluate": 6,
                      "diagnose": 2, "check_cells": 1, "report": 1, "all": 1, "total": 21}


def test_every_planned_shell_command_parses_with_the_cli(tmp_path):
    """The rules and the CLI agree: each command a dry run prints is accepted by the parser,
    and its --settings is a JSON object."""
    import json
    import shlex

    from relapse.cli import build_parser

    proc = snakemake(tmp_path, "-n", "-p", "--configfile", str(ROOT / "tests/data/small.yaml"))
    commands = [line.split("relapse ", 1)[1] for line in proc.stdout.splitlines()
                if "relapse " in line and "--settings" in line]
    seen = set()
    for command in commands:
        tokens = shlex.split(command.split(" > ", 1)[0])
        args = build_parser().parse_args(tokens)
        settings = args.settings
        if settings.startswith("@"):        # a settings file (the report's: the whole config)
            settings = (tmp_path / settings[1:]).read_text()
        assert isinstance(json.loads(settings), dict)
        seen.add(args.command)
    assert seen == {"prepare-data", "train-tokenizer", "train-reference", "snap-reference",
                    "unlearn", "select-epoch", "quantize", "diagnose", "evaluate", "report"}


@pytest.mark.slow
def test_selected_models_only_are_quantized(tmp_path):
    """quantization.models: selected: every hp is evaluated at full precision, the select_hps
    checkpoint picks one per method, and only that hp (with target and retrain) is quantized,
    evaluated and diagnosed; the report's selection agrees with the checkpoint's."""
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "small.yaml").read_text())
    del cfg["benchmarks"]["small-qat"]
    cfg["methods"] = {"npo_gdr": {"params": "full", "lr": [1.0e-4, 3.0e-4], "epochs": 5,
                                  "alpha": 5, "beta": 0.1}}
    cfg["quantization"] = {"models": "selected", "diagnostics": {"samples": 8},
                           "schemes": [{"scheme": "none", "bits": [16]},
                                       {"scheme": "rtn", "bits": [4], "group_size": 64}]}
    config = tmp_path / "selected.yaml"
    config.write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "--configfile", str(config))

    root = tmp_path / "results" / "small" / "npo_gdr"
    chosen = pd.read_csv(tmp_path / "results" / "small" / "selection.csv")
    assert list(chosen.method) == ["npo_gdr"]
    picked = chosen.hp.iloc[0]
    hps = sorted(p.name for p in root.iterdir())
    assert len(hps) == 2 and picked in hps
    for hp in hps:
        quants = sorted(p.parent.name for p in (root / hp / "s0").glob("*/metrics.parquet"))
        assert quants == (["none-w16", "rtn-w4"] if hp == picked else ["none-w16"]), hp
        assert (root / hp / "s0" / "diagnostics.parquet").exists() == (hp == picked)
    table = pd.read_parquet(tmp_path / "results" / "tables" / "metrics.parquet")
    at4 = table[(table.quant == "rtn-w4") & (table.method == "npo_gdr")]
    assert set(at4.hp) == {picked}
    report_pick = pd.read_csv(tmp_path / "results" / "tables" / "selection.csv")
    assert list(report_pick.hp) == [picked]
    assert planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(config))) == {}
