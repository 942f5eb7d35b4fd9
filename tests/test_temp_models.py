"""quantization.temp_models: true marks the quantized model folders and the attacked model
folders temp(): Snakemake deletes them once every job that reads them is done (the slow
tests/test_resume.py shows it on a real run, with unchanged tables)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["results/synthbio/retrain/default/s0/rtn-w4/model",
          "results/synthbio/retrain/default/s0/rtn-w4/relearn/models"]


@pytest.mark.parametrize("temp_models", [True, False])
def test_quantized_and_attacked_models_are_temp_when_asked(tmp_path, temp_models):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["quantization"]["temp_models"] = temp_models
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    for folder in MODELS + ["results/synthbio/reference/target",
                            "results/synthbio/retrain/default/s0/rtn-w4/prune/models/s0.5"]:
        (tmp_path / folder).mkdir(parents=True)
    # lists the existing outputs that are temp(), deletes nothing (-n)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                           "-d", str(tmp_path), "--configfile", str(tmp_path / "cfg.yaml"),
                           "--delete-temp-output", "-n"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    would = sorted(line.split("Would delete ", 1)[1] for line in
                   (proc.stdout + proc.stderr).splitlines() if "Would delete " in line)
    expected = MODELS + ["results/synthbio/retrain/default/s0/rtn-w4/prune/models"]
    assert would == (sorted(expected) if temp_models else [])
    assert all((tmp_path / folder).is_dir() for folder in MODELS)
