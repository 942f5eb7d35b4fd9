"""A params=lora checkpoint is its peft adapter and a pointer to its base (relapse.models.adapter):
merged on load into exactly the weights the merged checkpoint used to hold, refused when its
base changed, and adapter-sized on disk."""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from relapse.models.adapter import LORA_BASE, StaleAdapterError
from relapse.models.io import TOKENIZER_FILES, load_model
from relapse.unlearn.trainer import unlearn

CFG = {"batch_size": 4, "grad_clip": 1.0, "loss_variant": "paper",
       "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear"}}
HP = {"lr": 1e-2, "epochs": 2, "params": "lora"}


def _old_merges(monkeypatch):
    """What the checkpoint saved before adapters: peft's merge_and_unload of (a copy of) the
    training model, upcast to fp32 first under a bf16 base, captured at each save."""
    import relapse.unlearn.checkpoints as checkpoints

    merged, real = {}, checkpoints.save_checkpoint

    def spy(model, is_lora, folder, *args, **kwargs):
        old = copy.deepcopy(model)
        if any(p.dtype != torch.float32 for p in old.parameters()):
            old = old.float()
        merged[folder.name] = {k: v.clone() for k, v in
                               old.merge_and_unload().state_dict().items()}
        return real(model, is_lora, folder, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_checkpoint", spy)
    return merged


def _equal_per_tensor(a: dict, b: dict):
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not differ, differ


def _base(tmp_path, tiny_lm, manifest=None):
    folder = tmp_path / "base"
    shutil.copytree(tiny_lm[0], folder)
    if manifest:
        (folder / "reference_manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("bf16", [False, True])
def test_reloaded_adapter_merges_bit_for_bit_to_the_old_merged_weights(
        tmp_path, tiny_lm, data_dir, monkeypatch, bf16):
    """Every tensor of the merged model equals, bit for bit, what the old checkpoint wrote
    (peft's merge of the training model), at an intermediate and at the final epoch, after
    select_epoch, and through the full-precision cell; under a bf16 base too (the CUDA path:
    the base as training loaded it, upcast, then merged)."""
    from relapse.quantize.runtime import load_quantized_model
    from relapse.quantize.stage import quantize_model
    from relapse.unlearn.checkpoints import select_epoch

    base = _base(tmp_path, tiny_lm, {"which": "target", "kind": "pretrained",
                                     "config": {"kind": "pretrained"}} if bf16 else None)
    if bf16:
        monkeypatch.setattr("relapse.models.pretrained.training_dtype",
                            lambda ref_cfg, device: "bfloat16")
    old = _old_merges(monkeypatch)
    run = tmp_path / "run"
    unlearn("ga_gdr", HP, 0, base, data_dir, CFG, run, save_epochs=[1, 2])
    assert set(old) == {"epoch1", "epoch2"}
    assert not torch.equal(old["epoch1"]["model.layers.0.mlp.up_proj.weight"],
                           old["epoch2"]["model.layers.0.mlp.up_proj.weight"])
    for epoch in ("epoch1", "epoch2"):
        assert not (run / epoch / "model.safetensors").exists()
        _equal_per_tensor(load_model(run / epoch).state_dict(), old[epoch])
    pointer = json.loads((run / "epoch2" / LORA_BASE).read_text())
    assert pointer["dtype"] == ("bfloat16" if bf16 else "float32")
    select_epoch(run, 1, tmp_path / "unlearned")
    _equal_per_tensor(load_model(tmp_path / "unlearned").state_dict(), old["epoch1"])
    quantize_model(tmp_path / "unlearned", tmp_path / "cell", "none", 16, {})
    assert not (tmp_path / "cell" / "model.safetensors").exists()
    _equal_per_tensor(load_quantized_model(tmp_path / "cell").state_dict(), old["epoch1"])
    # a bf16 evaluation casts the merged fp32 weights, as loading the old fp32 folder did
    half = load_model(run / "epoch2", dtype="bfloat16").state_dict()
    _equal_per_tensor(half, {k: v.bfloat16() for k, v in old["epoch2"].items()})


def test_quantizing_an_adapter_checkpoint_equals_quantizing_the_old_merged_folder(
        tmp_path, tiny_lm, data_dir, monkeypatch):
    from relapse.models.io import save_model
    from relapse.quantize.stage import quantize_model

    old = _old_merges(monkeypatch)
    run = tmp_path / "run"
    unlearn("ga_gdr", {**HP, "epochs": 1}, 0, tiny_lm[0], data_dir, CFG, run)
    merged = load_model(tiny_lm[0])
    merged.load_state_dict(old["epoch1"])
    save_model(merged, tmp_path / "old", tiny_lm[0])
    for source in ("old", "new"):
        folder = tmp_path / "old" if source == "old" else run / "epoch1"
        quantize_model(folder, tmp_path / f"q-{source}", "rtn", 4, {"group_size": 16})
    # a quantized cell is stored as codes: compare the weights load_model decodes
    _equal_per_tensor(load_model(tmp_path / "q-old").state_dict(),
                      load_model(tmp_path / "q-new").state_dict())


def test_a_changed_base_invalidates_the_checkpoint(tmp_path, tiny_lm, data_dir):
    base = _base(tmp_path, tiny_lm)
    run = tmp_path / "run"
    unlearn("ga", {**HP, "epochs": 1}, 0, base, data_dir, CFG, run)
    ckpt = run / "epoch1"
    load_model(ckpt)
    (base / "config.json").touch()               # a new mtime, the same content: still valid
    load_model(ckpt)
    weights = load_file(str(base / "model.safetensors"))
    name = "model.layers.1.self_attn.o_proj.weight"
    weights[name] = weights[name].clone()
    weights[name][0, 0] += 1.0                    # one weight: same size, same header
    from safetensors.torch import save_file

    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(StaleAdapterError) as err:
        load_model(ckpt)
    assert str(ckpt) in str(err.value) and str(base) in str(err.value)
    shutil.rmtree(base)
    with pytest.raises(StaleAdapterError, match="does not exist"):
        load_model(ckpt)


def test_the_checkpoint_is_adapter_sized(tmp_path, tiny_lm, data_dir):
    """Its only weights are the adapter's: r·(in + out) fp32 numbers per adapted Linear (every
    decoder Linear, all-linear), plus safetensors' header; the rest is small JSON."""
    from relapse.models.modules import decoder_linear_names

    run = tmp_path / "run"
    unlearn("ga", {**HP, "epochs": 1}, 0, tiny_lm[0], data_dir, CFG, run)
    ckpt = run / "epoch1"
    model = tiny_lm[1]
    r = CFG["lora"]["r"]
    lora_numbers = sum(r * (m.in_features + m.out_features) for m in
                       (model.get_submodule(n) for n in decoder_linear_names(model)))
    weights = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*.safetensors"))
    assert weights == ["adapter/adapter_model.safetensors"]
    adapter_bytes = (ckpt / weights[0]).stat().st_size
    assert 4 * lora_numbers <= adapter_bytes <= 4 * lora_numbers + 16_384
    rest = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()
               and p.name not in TOKENIZER_FILES and p.suffix != ".safetensors")
    assert rest < 16_384, rest
    base_bytes = (tiny_lm[0] / "model.safetensors").stat().st_size
    assert adapter_bytes + rest < base_bytes / 4


def test_old_format_lora_folders_still_load(tmp_path, tiny_lm):
    """A LoRA checkpoint written before adapters (merged weights beside adapter/, no pointer)
    loads its merged weights as before."""
    from peft import LoraConfig, get_peft_model

    from relapse.models.io import save_model

    folder, model, _ = tiny_lm
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    old = tmp_path / "old"
    peft_model.save_pretrained(str(old / "adapter"))
    merged = peft_model.merge_and_unload()
    save_model(merged, old, folder)
    _equal_per_tensor(load_model(old).state_dict(), merged.state_dict())


def test_merge_refuses_adapters_it_would_merge_wrongly(tmp_path):
    from relapse.models.adapter import lora_deltas

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        lora_deltas(adapter)
