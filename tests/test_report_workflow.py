"""(slow) A tiny run end to end, then `snakemake --report`: the HTML holds every table and
figure with its rendered caption."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "device": "cpu", "seeds": [0],
    "benchmarks": {"tiny": {
        "corpus": {"kind": "synthetic", "people": 20, "forget": 0.2, "holdout": 0.2, "seed": 0},
        "reference": {"kind": "train", "arch": {"hidden": 64, "layers": 2, "heads": 2,
                                                 "intermediate": 128},
                      "tokenizer": {"vocab_size": 512}, "lr": 3.0e-3, "batch_size": 16,
                      "max_epochs": 8}}},
    "unlearning": {"batch_size": 8},
    "methods": {"npo_gdr": {"params": "full", "lr": [1.0e-4, 3.0e-4], "epochs": 1, "alpha": 1}},
    "quantization": {"schemes": [{"scheme": "none", "bits": [16]},
                                 {"scheme": "rtn", "bits": [4], "group_size": 64}]},
    "evaluation": {"metrics": ["knowmem", "verbmem", "privleak"],
                   "knowmem": {"shots": 1, "max_items": 8, "max_new_tokens": 8},
                   "verbmem": {"max_new_tokens": 8, "max_items": 4},
                   "bootstrap": {"samples": 20}},
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                           "-d", str(workdir), "--cores", "2", *args],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_html_report_of_a_finished_run(tmp_path):
    from relapse.report.plan import outputs

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    snakemake(tmp_path, "--configfile", str(config))
    for output in outputs().values():
        assert (tmp_path / output.path).stat().st_size > 0, output.path
    snakemake(tmp_path, "--configfile", str(config), "--report", "results/report.html")
    html = (tmp_path / "results" / "report.html").read_text()
    for output in outputs().values():
        if output.caption:
            assert Path(output.path).name in html, output.path
    # captions are rendered with the run's config: the selection rule and the quantizers
    assert "keep KnowMem_r at or above 90% of the target" in html
    assert "Knowledge retained" in html and "group size 64" in html
