"""Bad input at run time: each fault stops its job with a message that names the file (or the
job) and what is wrong, instead of a bare library traceback or a silently wrong result."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from relapse import cli


def test_a_tokenizer_without_a_pad_token_pads_with_eos(tmp_path, tiny_lm):
    from relapse.models.tokenizer import load_tokenizer

    folder, _, _ = tiny_lm
    shutil.copytree(folder, tmp_path / "m")
    config = tmp_path / "m" / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("pad_token", None)
    config.write_text(json.dumps(data))
    special = tmp_path / "m" / "special_tokens_map.json"
    if special.exists():
        special.write_text(json.dumps({k: v for k, v in json.loads(special.read_text()).items()
                                       if k != "pad_token"}))
    tok = load_tokenizer(tmp_path / "m")
    assert tok.pad_token == tok.eos_token == "</s>"
    assert tok(["a b", "a"], padding=True)["input_ids"][1][-1] == tok.eos_token_id

    # no pad, eos or unk to pad with: the folder is named
    data.pop("eos_token", None), data.pop("unk_token", None)
    config.write_text(json.dumps(data))
    if special.exists():
        special.write_text("{}")
    tokenizer_json = json.loads((tmp_path / "m" / "tokenizer.json").read_text())
    tokenizer_json["model"]["unk_token"] = None
    (tmp_path / "m" / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    with pytest.raises(ValueError, match=r"/m: the tokenizer has no pad token, and no eos or unk"):
        load_tokenizer(tmp_path / "m")


def test_an_empty_forget_split_stops_the_data_stage_and_unlearn(tmp_path, tiny_lm):
    from relapse.data.prepare import require_training_splits
    from relapse.unlearn.trainer import unlearn

    empty = pd.DataFrame({"text": []})
    with pytest.raises(ValueError, match=r"out/forget\.parquet: the forget split would be empty "
                                         r"\(0 texts\) from the muse corpus"):
        require_training_splits({"forget": empty, "retain": pd.DataFrame({"text": ["x"]})},
                                tmp_path / "out", "muse corpus from /data/news")
    with pytest.raises(ValueError, match=r"retain\.parquet: the retain split would be empty"):
        require_training_splits({"forget": pd.DataFrame({"text": ["x"]}), "retain": empty},
                                tmp_path / "out", "muse corpus")

    folder, _, _ = tiny_lm
    data = tmp_path / "data"
    data.mkdir()
    empty.to_parquet(data / "forget.parquet")
    pd.DataFrame({"text": ["Ann lives in Oslo."]}).to_parquet(data / "retain.parquet")
    with pytest.raises(ValueError, match=r"data/forget\.parquet: the forget split is empty"):
        unlearn("ga_gdr", {"lr": 1e-3, "epochs": 1, "alpha": 1, "params": "full"}, 0, folder,
                data, {"batch_size": 2}, tmp_path / "run")
    pd.DataFrame({"text": ["Bo lives in Rome."]}).to_parquet(data / "forget.parquet")
    empty.to_parquet(data / "retain.parquet")
    with pytest.raises(ValueError, match=r"data/retain\.parquet: the retain split \(ga_gdr "
                                         r"regularizes on it\) is empty"):
        unlearn("ga_gdr", {"lr": 1e-3, "epochs": 1, "alpha": 1, "params": "full"}, 0, folder,
                data, {"batch_size": 2}, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("keep", [0.5, 0.0001])
def test_a_truncated_safetensors_file_names_the_file(tmp_path, tiny_lm, keep):
    from relapse.models.io import CorruptModelError, load_model
    from relapse.quantize.runtime import load_quantized_model

    folder, _, _ = tiny_lm
    shutil.copytree(folder, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:max(1, int(len(data) * keep))])
    for load in (load_model, load_quantized_model):
        with pytest.raises(CorruptModelError, match=r"m/model\.safetensors: not a readable "
                                                    r"safetensors file .*truncated or corrupt"):
            load(tmp_path / "m")


def test_a_model_folder_with_a_cut_config_names_the_file(tmp_path, tiny_lm):
    from relapse.models.io import CorruptModelError, load_model

    folder, _, _ = tiny_lm
    shutil.copytree(folder, tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    config.write_text(config.read_text()[:40])
    with pytest.raises(CorruptModelError, match=r"m/config\.json: not valid JSON"):
        load_model(tmp_path / "m")
    config.unlink()
    with pytest.raises(CorruptModelError, match=r"m/config\.json: missing"):
        load_model(tmp_path / "m")


def test_a_truncated_parquet_split_names_the_file(tmp_path):
    from relapse.data.prepare import load_split

    pd.DataFrame({"text": [f"text {i}" for i in range(200)]}).to_parquet(tmp_path / "forget.parquet")
    data = (tmp_path / "forget.parquet").read_bytes()
    (tmp_path / "forget.parquet").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"forget\.parquet: not a readable Parquet file "
                                         r"\(\d+ bytes: .*\); it is truncated or corrupt"):
        load_split(tmp_path, "forget")
    (tmp_path / "retain.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"retain\.parquet: not a readable Parquet file \(0 "):
        load_split(tmp_path, "retain")


def test_max_items_zero_is_never_read_as_every_item(tmp_path):
    """The schema rejects 0 (tests/data/bad_configs/max_items_zero.yaml); a caller that passes
    it anyway gets an error, not the whole split (0 is falsy)."""
    from relapse.evaluate.stage import EvalContext

    pd.DataFrame({"question": ["q"] * 5}).to_parquet(tmp_path / "knowmem_forget_qa.parquet")
    ctx = EvalContext(None, None, tmp_path, {}, 1)
    assert len(ctx.split("knowmem_forget_qa", 2)) == 2
    assert len(ctx.split("knowmem_forget_qa")) == 5
    with pytest.raises(ValueError, match="max_items for split 'knowmem_forget_qa' is 0"):
        ctx.split("knowmem_forget_qa", 0)


def _evaluate_args(tmp_path, settings):
    return ["evaluate", "--settings", json.dumps(settings), "--threads", "3", "--bench", "b",
            "--method", "npo_gdr", "--hp", "default", "--seed", "0", "--quant", "rtn-w4",
            "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d"),
            "--metrics", str(tmp_path / "m.parquet"), "--samples", str(tmp_path / "s.parquet")]


@pytest.mark.parametrize("error", ["torch", "python"])
def test_out_of_memory_names_the_rule_and_its_resources(tmp_path, monkeypatch, capsys, error):
    import torch

    def stage(*args, **kwargs):
        if error == "torch":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise MemoryError()

    import relapse.evaluate.stage

    monkeypatch.setattr(relapse.evaluate.stage, "evaluate_model", stage)
    monkeypatch.setattr(cli, "_cgroup_memory_mb", lambda: None)
    settings = {"device": "cpu", "evaluation": {}, "mem_mb": 4000,
                "quant": {"scheme": "rtn", "bits": 4}}
    assert cli.main(_evaluate_args(tmp_path, settings)) == cli.OUT_OF_MEMORY
    err = capsys.readouterr().err
    assert "relapse: out of memory: relapse evaluate (rule evaluate) (bench b, method npo_gdr, " \
           "hp default, seed 0, quant rtn-w4) had threads 3, mem_mb 4000, device cpu" in err
    assert "resources.evaluate.mem_mb" in err
    assert ("Tried to allocate 2.00 GiB" in err) == (error == "torch")
    # without mem_mb in its settings, the message says so
    settings.pop("mem_mb")
    monkeypatch.setattr(cli, "_cgroup_memory_mb", lambda: 8192)
    assert cli.main(_evaluate_args(tmp_path, settings)) == cli.OUT_OF_MEMORY
    assert "mem_mb not given to the job, a memory limit of 8192 MB (cgroup)" \
        in capsys.readouterr().err


def test_the_cgroup_memory_limit_is_read(tmp_path):
    (tmp_path / "memory.max").write_text("4294967296\n")
    assert cli._cgroup_memory_mb(str(tmp_path / "memory.max")) == 4096
    (tmp_path / "memory.max").write_text("max\n")
    assert cli._cgroup_memory_mb(str(tmp_path / "memory.max")) is None
    assert cli._cgroup_memory_mb(str(tmp_path / "absent")) is None


def test_other_errors_keep_their_traceback(tmp_path, monkeypatch):
    import relapse.evaluate.stage

    def stage(*args, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(relapse.evaluate.stage, "evaluate_model", stage)
    with pytest.raises(RuntimeError, match="a real bug"):
        cli.main(_evaluate_args(tmp_path, {"device": "cpu", "evaluation": {},
                                           "quant": {"scheme": "rtn", "bits": 4}}))


def test_a_cuda_only_scheme_on_cpu_fails_clearly(tmp_path, tiny_lm, monkeypatch, capsys):
    from relapse.quantize import registry
    from relapse.quantize.stage import quantize_model

    folder, _, _ = tiny_lm
    rtn = registry.get_quantizer("rtn")
    monkeypatch.setattr(type(rtn), "devices", ("cuda",))
    with pytest.raises(RuntimeError, match=r"quantization scheme 'rtn' \(torch\) has kernels "
                                           r"only for cuda, and this job runs on cpu"):
        quantize_model(folder, tmp_path / "q", "rtn", 4, {"group_size": 32}, device="cpu")
    assert not (tmp_path / "q").exists()

    # a library that finds no kernel for the device while it runs: the CLI says which job
    import relapse.quantize.stage

    def stage(*args, **kwargs):
        raise NotImplementedError("Could not run 'bitsandbytes::int8_linear' with arguments "
                                  "from the 'CPU' backend.")

    monkeypatch.setattr(relapse.quantize.stage, "quantize_model", stage)
    code = cli.main(["quantize", "--settings", json.dumps({"device": "cpu", "quant": {
        "scheme": "bnb", "bits": 8}}), "--source", str(folder), "--out", str(tmp_path / "q")])
    assert code == cli.NO_KERNEL
    err = capsys.readouterr().err
    assert "relapse: no kernel for this device: relapse quantize (rule quantize) had threads 1" \
           in err and "device cpu" in err and "'CPU' backend" in err


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    """SIGKILL runs no cleanup: the temporary folder (a whole model) of the killed job stays
    beside its output until the job reruns; then it goes, and other outputs' are kept."""
    from relapse.io import atomic_dir, write_json

    (tmp_path / ".model.tmp-dead1").mkdir()
    (tmp_path / ".model.tmp-dead1" / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / ".metrics.parquet.tmp-dead2").write_bytes(b"half")
    (tmp_path / ".other.tmp-live").mkdir()
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    write_json(tmp_path / "metrics.parquet", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-live", "metrics.parquet",
                                                         "model"]


def test_deterministic_mode_is_opt_in(monkeypatch):
    import torch

    from relapse.seeding import seed_everything

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("RELAPSE_DETERMINISTIC", raising=False)
    seed_everything(0)
    assert not torch.are_deterministic_algorithms_enabled()
    a = torch.rand(3)
    monkeypatch.setenv("RELAPSE_DETERMINISTIC", "1")
    try:
        seed_everything(0)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.equal(torch.rand(3), a)
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
