"""Local inputs that change are noticed (issue [trustworthy] item 3): a model folder re-saved at the
same path, or a dataset snapshot edited in place, reruns what read it; touching without changing
content does not; the hash cache keeps a big folder from being re-read on every dry run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hub_snapshots import muse_bench_config, muse_snapshot
from relapse import fingerprint as fp

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _tree(tmp_path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"alpha" * 100)
    (root / "sub" / "b.txt").write_text("beta")
    return root


def _touch_all(root: Path) -> None:
    for p in root.rglob("*"):
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))


def test_fingerprint_follows_content_not_mtime(tmp_path):
    root, cache = _tree(tmp_path), tmp_path / "cache.json"
    first = fp.fingerprint(root, cache)
    assert (first["files"], first["bytes"]) == (2, 504)
    _touch_all(root)
    assert fp.fingerprint(root, cache)["sha256"] == first["sha256"]
    # Same size, other bytes: a re-saved weight file.
    (root / "a.bin").write_bytes(b"alphA" * 100)
    changed = fp.fingerprint(root, cache)["sha256"]
    assert changed != first["sha256"]
    # A renamed file with the same bytes, and a new file, are changes too.
    (root / "sub" / "b.txt").rename(root / "sub" / "c.txt")
    renamed = fp.fingerprint(root, cache)["sha256"]
    assert renamed != changed
    (root / "extra.json").write_text("{}")
    assert fp.fingerprint(root, cache)["sha256"] != renamed


def test_fingerprint_of_a_file_is_its_content_hash(tmp_path):
    """Independent of the implementation's layout: two files with equal bytes and name in
    different folders have equal fingerprints; one byte off, they differ."""
    a, b = tmp_path / "x" / "w.gguf", tmp_path / "y" / "w.gguf"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(bytes(range(256)) * 10)
    assert fp.fingerprint(a, None)["sha256"] == fp.fingerprint(b, None)["sha256"]
    assert fp.file_sha256(a) == hashlib.sha256(bytes(range(256)) * 10).hexdigest()
    b.write_bytes(bytes(range(256)) * 9 + bytes(range(1, 257)[:255]) + b"\0")
    assert fp.fingerprint(a, None)["sha256"] != fp.fingerprint(b, None)["sha256"]


def test_cache_skips_unchanged_files(tmp_path, monkeypatch):
    root, cache = _tree(tmp_path), tmp_path / "cache.json"
    fp.fingerprint(root, cache)
    hashed = []
    real = fp.file_sha256
    monkeypatch.setattr(fp, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    fp.fingerprint(root, cache)
    assert hashed == []                          # nothing moved: nothing re-read
    (root / "sub" / "b.txt").write_text("BETA")
    fp.fingerprint(root, cache)
    assert hashed == ["b.txt"]                   # only the changed file


def test_a_hub_id_has_no_local_fingerprint(tmp_path):
    assert fp.local_fingerprint("muse-bench/MUSE-News", tmp_path / "c.json") == ""
    assert fp.local_fingerprint(None) == ""
    assert len(fp.local_fingerprint(str(_tree(tmp_path)), tmp_path / "c.json")) == 64


def _snakemake(run, config, *args):
    return subprocess.run([str(SNAKEMAKE), *args, "-s", str(ROOT / "Snakefile"), "-d", str(run),
                           "--cores", "2", "--configfile", str(config)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "",
                               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})


def _planned(run, config, target) -> dict[str, int]:
    proc = _snakemake(run, config, target, "-n", "--quiet", "rules")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    if "Job stats:" not in proc.stdout:
        return {}
    stats = proc.stdout.split("Job stats:")[1].split("Reasons:")[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M) if m[0] != "total"}


@pytest.mark.slow
def test_changed_local_sources_rerun_what_read_them(tmp_path, tiny_lm):
    """Fetch and prepare a MUSE-shaped bench from a local model folder and a local snapshot; then
    touching both plans nothing, editing an answer in the snapshot plans the preparation, and
    re-saving the model plans the fetch and the preparation after it."""
    import torch
    from safetensors.torch import load_file, save_file

    import shutil

    model_dir = tmp_path / "target_model"
    shutil.copytree(tiny_lm[0], model_dir)
    source = muse_snapshot(tmp_path / "MUSE-News")
    cfg = muse_bench_config(source, model_dir, [{"scheme": "none", "bits": [16]}])
    config = tmp_path / "muse_tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run, target = tmp_path / "run", "results/news/data"
    proc = _snakemake(run, config, target)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    manifest = json.loads((run / "results/news/reference/target/reference_manifest.json")
                          .read_text())
    assert manifest["source_sha256"] == fp.fingerprint(model_dir, None)["sha256"]
    data_manifest = json.loads((run / target / "manifest.json").read_text())
    assert data_manifest["source"]["source_sha256"] == fp.fingerprint(source, None)["sha256"]
    assert _planned(run, config, target) == {}

    _touch_all(source)
    _touch_all(model_dir)
    assert _planned(run, config, target) == {}

    qa = source / "knowmem" / "forget_qa-00000-of-00001.parquet"
    frame = pd.read_parquet(qa)
    frame.loc[0, "answer"] = "an edited answer"
    frame.to_parquet(qa, index=False)
    assert _planned(run, config, target) == {"prepare_corpus": 1}    # the models stay

    weights = load_file(model_dir / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + torch.ones_like(weights[name])
    (model_dir / "model.safetensors").unlink()     # save_pretrained writes a new file
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    assert _planned(run, config, target) == {"fetch_pretrained": 1, "prepare_corpus": 1}
