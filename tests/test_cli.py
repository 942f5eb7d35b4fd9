import json
import subprocess
import sys

import pandas as pd
import pytest

from relapse.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "relapse", *args], capture_output=True, text=True)


@pytest.mark.parametrize("what,expected", [
    ("methods", {"ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr"}),
    ("quantizers", {"none", "rtn"}),
    ("metrics", {"knowmem", "verbmem"}),
])
def test_list_prints_one_name_per_line(what, expected):
    proc = _run("list", what)
    assert proc.returncode == 0
    names = proc.stdout.split()
    assert expected <= set(names) and names == sorted(names)


def test_validate_reports_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmarks: {}\nmethods: {ga: {lr: 1}}\nquantization: {schemes: []}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "benchmarks" in err and "quantization.schemes" in err


def test_stage_rejects_settings_that_are_not_json(tmp_path):
    with pytest.raises(SystemExit, match="not valid JSON"):
        main(["prepare-data", "--settings", "{corpus:", "--bench", "b", "--out", str(tmp_path / "d")])


def test_stage_reads_settings_from_a_file(tmp_path):
    settings = tmp_path / "s.json"
    settings.write_text('{"corpus": {"kind": "synthetic", "people": 12, "seed": 0}}')
    assert main(["prepare-data", "--settings", f"@{settings}", "--bench", "b",
                 "--out", str(tmp_path / "d")]) == 0
    # The file's settings took effect: 12 people (the synthetic default is another number), and
    # the manifest records the corpus it was built from.
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["corpus"] == {"kind": "synthetic", "people": 12, "seed": 0}
    assert len(pd.read_parquet(tmp_path / "d" / "people.parquet")) == 12


def test_cuda_request_on_cpu_fails_clearly():
    import torch

    from relapse.models.io import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(RuntimeError, match="device: cuda was requested"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
