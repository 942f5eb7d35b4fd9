"""config/muse.yaml and config/tofu.yaml plan with no data and no model on disk (hub ids only,
no GPU here), with the job count per rule that their grids imply, counted by hand."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def planned(tmp_path, config: str) -> dict[str, int]:
    proc = subprocess.run([str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
                           "-n", "--cores", "2", "--quiet", "rules",
                           "--configfile", str(ROOT / "config" / config)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    stats = proc.stdout.split("Job stats:")[1].split("Reasons:")[0]
    counts = dict((m[0], int(m[1])) for m in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M))
    assert not (tmp_path / "results").exists()  # a plan, nothing run or fetched
    return counts


# 9 quant cells: none-w16, bnb fp4/nf4 w4, bnb int8 w8, rtn w8/w4, gptq w8/w4, awq w4.
QUANTS = 9


def test_muse_plan(tmp_path):
    counts = planned(tmp_path, "muse.yaml")
    # 12 methods (6 + SURE) x 4 lr x 2 params = 96 training runs per corpus, 2 corpora
    runs = 12 * 4 * 2 * 2
    # 8 methods carry two epoch values (News' and Books'), 4 carry one: 20 x 4 lr x 2 params
    models = (8 * 2 + 4) * 4 * 2 * 2
    cells = (models + 2 * 2) * QUANTS  # + target and retrain of each corpus
    # check_corpus is planned only because fetch_pretrained needs its output: the corpus is
    # checked before any model is downloaded
    want = {"check_corpus": 2, "fetch_pretrained": 4, "prepare_corpus": 2, "unlearn": runs,
            "select_epoch": models, "diagnose": models, "quantize": cells, "evaluate": cells,
            "check_cells": 1, "report": 1, "all": 1}
    assert {k: counts.get(k, 0) for k in want} == want
    assert counts["total"] == sum(want.values()) + sum(
        v for k, v in counts.items() if k not in want and k != "total")


def test_tofu_plan(tmp_path):
    counts = planned(tmp_path, "tofu.yaml")
    models = 12 * 4 * 2  # one epoch value: one model per training run
    cells = (models + 2) * QUANTS
    want = {"check_corpus": 1, "fetch_pretrained": 2, "prepare_corpus": 1, "unlearn": models,
            "select_epoch": models, "diagnose": models, "quantize": cells, "evaluate": cells,
            "check_cells": 1, "report": 1, "all": 1}
    assert {k: counts.get(k, 0) for k in want} == want


def test_smollm2_full_plans_the_revival_protocol_up_to_the_selection(tmp_path):
    """config/smollm2-full.yaml ([revival-real]): 4 methods x 3 lr x 2 seeds, full parameters,
    the paper's alpha and beta; before the select_hps checkpoint only what is known is planned:
    every unlearned model at full precision, and target and retrain at all 10 quants."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "smollm2-full.yaml").read_text())
    assert cfg["quantization"]["models"] == "selected"
    assert set(cfg["methods"]) == {"ga_gdr", "ga_klr", "npo_gdr", "npo_klr"}
    for name, method in cfg["methods"].items():
        assert method["params"] == "full" and method["epochs"] == 5 and method["alpha"] == 1
        assert method["lr"] == [1.0e-5, 3.0e-5, 1.0e-4]
        assert method.get("beta", 0.1) == 0.1
    assert cfg["benchmarks"]["smollm2full"]["reference"]["params"] == "full"
    counts = planned(tmp_path, "smollm2-full.yaml")
    models = 4 * 3 * len(cfg["seeds"])
    quants = sum(len(e["bits"]) for e in cfg["quantization"]["schemes"])
    assert quants == 10
    want = {"load_gguf": 1, "prepare_data_pretrained": 1, "finetune_reference": 2,
            "unlearn": models, "select_epoch": models, "select_hps": 1,
            "quantize": models + 2 * quants, "evaluate": models + 2 * quants, "report": 1}
    assert {k: counts.get(k, 0) for k in want} == want
    assert "diagnose" not in counts          # only the selected models', after the checkpoint
