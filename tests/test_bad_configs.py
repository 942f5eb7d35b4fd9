"""Every malformed config in tests/data/bad_configs/ fails before any job, with a message that
names the key path, the value and what is allowed.

Each NAME.yaml starts with a comment block: a description, then one `# expect: TEXT` line per
substring the error must contain, and optionally `# stage: runtime` for errors that depend on
the machine (device: cuda without a GPU), or `# snapshot: KIND FAULT` for a local dataset
snapshot (tests/hub_snapshots.py) with one fault (FAULTS below), built in tmp_path, whose path
replaces @SNAPSHOT@ in the config. The configs are read the way the CLI reads them
(relapse.config.load_yaml: duplicate keys and YAML syntax errors are caught there), validated,
then checked against this machine as a local run would be.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from relapse.config import ConfigError, check_device, load_yaml, validate

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "data" / "bad_configs"
FILES = sorted(BAD.glob("*.yaml"))
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def header(path: Path) -> tuple[list[str], str | None]:
    expects, stage = [], None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s*(expect|stage):\s*(.+?)\s*$", line)
        if match and match.group(1) == "expect":
            expects.append(match.group(2))
        elif match:
            stage = match.group(2)
    return expects, stage


def _snapshot_fault(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            return None
        match = re.match(r"#\s*snapshot:\s*(.+?)\s*$", line)
        if match:
            return match.group(1)
    return None


def _rewrite(file: Path, change) -> None:
    import pandas as pd

    change(pd.read_parquet(file)).to_parquet(file, index=False)


def _readme_with_exact_paths(root: Path) -> None:
    """The README lists each file by its name, as some uploads do (not by a pattern)."""
    readme = root / "README.md"
    text = readme.read_text()
    readme.write_text(re.sub(r"path: (\S+)-\*", r"path: \1-00000-of-00001.parquet", text))


FAULTS = {
    # a split with no rows: the data job ended in DatasetGenerationError / StopIteration
    "empty-split": lambda root, kind: _rewrite(
        next(root.glob("raw/forget-*" if kind == "muse" else "forget10/train-*")),
        lambda frame: frame.iloc[:0]),
    # a column relapse reads is missing: found only in the data job
    "missing-column": lambda root, kind: _rewrite(
        next(root.glob("verbmem/forget-*" if kind == "muse" else "forget10_perturbed/train-*")),
        lambda frame: frame.drop(columns=["gt" if kind == "muse" else "perturbed_answer"])),
    # a partial download: the README's pattern matches no file
    "partial-download": lambda root, kind: next(root.glob("raw/retain1-*")).unlink(),
    # the README names a file that is not there: datasets "cannot list its configs"
    "readme-missing-file": lambda root, kind: (_readme_with_exact_paths(root),
                                               next(root.glob("privleak/holdout-*")).unlink()),
    # a truncated file
    "truncated-file": lambda root, kind: next(root.glob("knowmem/forget_qa-*")).write_bytes(
        next(root.glob("knowmem/forget_qa-*")).read_bytes()[:40]),
}


def materialize(path: Path, tmp_path: Path) -> Path:
    """The config itself, or (with `# snapshot:`) a copy pointing at a faulty snapshot."""
    fault = _snapshot_fault(path)
    if fault is None:
        return path
    from hub_snapshots import muse_snapshot, tofu_snapshot

    kind, name = fault.split()
    root = (muse_snapshot if kind == "muse" else tofu_snapshot)(tmp_path / "snapshot")
    FAULTS[name](root, kind)
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace("@SNAPSHOT@", str(root)))
    return copy


def load_and_check(path: Path) -> dict:
    cfg = validate(load_yaml(path))
    check_device(cfg, local=True)
    return cfg


def test_there_are_enough_cases_and_each_says_what_it_expects():
    assert len(FILES) >= 40
    for path in FILES:
        assert header(path)[0], f"{path.name}: no '# expect:' line"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_bad_config_is_rejected_with_a_clear_message(path, monkeypatch, tmp_path):
    expects, stage = header(path)
    path = materialize(path, tmp_path)
    # No GPU, whatever this machine has: runtime cases must fail, the others must not pass
    # only because of the machine.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError) as err:
        if stage == "runtime":
            cfg = validate(load_yaml(path))     # valid as a config: only this machine lacks
            with pytest.raises(ConfigError):
                check_device(cfg, local=True)
            check_device(cfg, local=True)
        else:
            load_and_check(path)
    message = str(err.value)
    for text in expects:
        assert text in message, f"{text!r} missing from:\n{message}"


def test_the_bad_configs_differ_from_a_valid_one_only_in_the_fault(tmp_path):
    """The cases are one edit from a config that passes, so each tests its own fault."""
    text = (BAD / "method_lr_negative.yaml").read_text().replace("lr: -0.0001", "lr: 0.0001")
    good = tmp_path / "good.yaml"
    good.write_text(text)
    load_and_check(good)


def test_cuda_is_fine_where_jobs_do_not_run_here(monkeypatch):
    """A dry run, or a cluster's submit host, plans GPU jobs without a GPU of its own."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cfg = validate(load_yaml(BAD / "device_cuda_no_gpu.yaml"))
    check_device(cfg, local=False)


def test_no_nvidia_device_is_named_in_the_message(monkeypatch):
    import shutil

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(Path, "exists", lambda self: False)
    with pytest.raises(ConfigError, match="no NVIDIA GPU is visible here"):
        check_device({"device": "cuda"}, local=True)


def snakemake(workdir: Path, *args: str, env=None) -> str:
    import os

    proc = subprocess.run([*SNAKEMAKE, "-d", str(workdir), "--cores", "1", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert proc.returncode != 0, proc.stdout[-2000:]
    return proc.stdout + proc.stderr


# The workflow validates with relapse.config.validate and checks nothing itself, so `relapse
# validate` and a dry run agree: here on faults the workflow used to find itself while planning
# (llmeraser without lora_setting was an InputFunctionException with a traceback), or only in a
# job (an hp value, a mistyped local path).
@pytest.mark.parametrize("name", ["yaml_duplicate_bench", "scheme_bits_unsupported",
                                  "llmeraser_without_lora_setting", "llmeraser_lora_merge_adapter",
                                  "attacks_quant_unknown", "privleak_full_without_none",
                                  "llmeraser_damping_is_not_an_hp", "corpus_source_local_missing"])
def test_snakemake_dry_run_shows_the_clear_message(tmp_path, name):
    out = snakemake(tmp_path, "-n", "--configfile", str(BAD / f"{name}.yaml"))
    for text in header(BAD / f"{name}.yaml")[0]:
        assert text in out, f"{text!r} missing from:\n{out[-3000:]}"
    assert "Traceback" not in out
    assert not (tmp_path / "results").exists()


def test_a_local_cuda_run_without_a_gpu_stops_before_any_job(tmp_path):
    out = snakemake(tmp_path, "--configfile", str(BAD / "device_cuda_no_gpu.yaml"),
                    env={"CUDA_VISIBLE_DEVICES": ""})
    assert "device: 'cuda' but CUDA_VISIBLE_DEVICES='' hides every GPU" in out, out[-3000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
