"""Run-time integrity (issue [trustworthy] item 8): weights changed after they were written stop
the job that loads them; a split the manifest lists but that is gone stops the evaluation; a
non-finite metric is a failure naming the cell, never a row."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest


def _corrupt(file, offset=None, length=64 * 1024):
    """Overwrite `length` bytes in the middle of the tensor data (past the safetensors header),
    leaving the size and the header intact: the file still opens."""
    size = file.stat().st_size
    length = min(length, size // 4)
    offset = size // 2 if offset is None else offset
    with open(file, "r+b") as fh:
        fh.seek(offset)
        fh.write(os.urandom(length))
    assert file.stat().st_size == size


def test_weights_changed_in_place_are_refused(tmp_path, tiny_lm, monkeypatch):
    from relapse.models import io

    folder, model, tok = tiny_lm
    out = tmp_path / "m"
    io.save_model(model, out, folder)
    assert set(pd.read_json(out / io.WEIGHT_HASHES, typ="series").index) == {"model.safetensors"}
    io.load_model(out)                                   # intact: loads
    _corrupt(out / "model.safetensors")
    io._verified.clear()
    with pytest.raises(io.CorruptModelError, match=r"model\.safetensors: its content changed"):
        io.load_model(out)
    monkeypatch.setenv("RELAPSE_VERIFY_WEIGHTS", "1")
    io.set_weight_verification(False)                     # config integrity.verify_weights
    io.load_model(out)
    io.set_weight_verification(True)
    with pytest.raises(io.CorruptModelError):
        io.load_model(out)


def test_a_weight_file_the_record_does_not_list_is_refused(tmp_path, tiny_lm):
    from relapse.models import io

    folder, model, _ = tiny_lm
    out = tmp_path / "m"
    io.save_model(model, out, folder)
    shutil.copy(out / "model.safetensors", out / "model-00002-of-00002.safetensors")
    with pytest.raises(io.CorruptModelError, match="does not list"):
        io.check_model_files(out)


def test_the_full_precision_cell_carries_the_record_of_its_source(tmp_path, tiny_lm):
    """none-w16 hard-links its source's weights; the record travels with them, so a later write
    into the shared inode is caught in the cell too."""
    from relapse.models import io
    from relapse.quantize.stage import quantize_model

    folder, model, _ = tiny_lm
    src = tmp_path / "src"
    io.save_model(model, src, folder)
    cell = tmp_path / "cell"
    quantize_model(src, cell, "none", 16, {})
    assert (cell / io.WEIGHT_HASHES).read_text() == (src / io.WEIGHT_HASHES).read_text()
    _corrupt(src / "model.safetensors")
    io._verified.clear()
    assert os.path.samefile(src / "model.safetensors", cell / "model.safetensors")
    with pytest.raises(io.CorruptModelError, match="content changed"):
        io.check_model_files(cell)


def test_a_listed_split_that_is_gone_stops_knowmem(data_dir, tmp_path):
    from relapse.data.prepare import has_split, load_split

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    assert has_split(data, "knowmem_forget_qa")
    assert not has_split(data, "knowmem_world_qa")        # never written: not configured
    (data / "knowmem_forget_qa.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"knowmem_forget_qa\.parquet: split .* listed"):
        has_split(data, "knowmem_forget_qa")
    with pytest.raises(FileNotFoundError, match="listed in"):
        load_split(data, "knowmem_forget_qa")


def test_knowmem_fails_instead_of_dropping_a_deleted_split(data_dir, tmp_path, tiny_lm):
    from relapse.evaluate.registry import get_metric
    from relapse.evaluate.stage import EvalContext

    folder, model, tok = tiny_lm
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "knowmem_retain_qa.parquet").unlink()
    ctx = EvalContext(model, tok, data, {"knowmem": {"shots": 1, "max_new_tokens": 2,
                                                     "max_items": 2}}, 4)
    with pytest.raises(FileNotFoundError, match="knowmem_retain_qa"):
        get_metric("knowmem")(ctx)


def test_a_non_finite_metric_names_the_cell_and_the_metric():
    from relapse.evaluate.stage import require_finite

    keys = {"bench": "synthbio", "method": "ga", "hp": "lr=0.001", "seed": 0, "quant": "rtn-w4"}
    ok = {"metric": "knowmem", "split": "forget", "stat": "rougeL_f1", "value": 12.5}
    require_finite([ok], keys)
    bad = [ok, {**ok, "metric": "utility", "split": "holdout", "stat": "ppl",
                "value": float("inf")}, {**ok, "metric": "privleak", "value": float("nan")}]
    with pytest.raises(FloatingPointError) as err:
        require_finite(bad, keys)
    text = str(err.value)
    assert "synthbio/ga/lr=0.001/s0/rtn-w4" in text
    assert "utility/holdout/ppl = inf" in text and "privleak/forget/rougeL_f1 = nan" in text
    assert "12.5" not in text                            # only the bad ones are named
