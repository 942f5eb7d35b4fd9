"""The dtype a pretrained reference is unlearned in: bf16 base weights on CUDA with fp32
trainables, fp32 on the CPU, `reference.dtype` overriding; recorded in the unlearn manifest."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import relapse.unlearn.trainer as trainer

CFG = {"batch_size": 4, "grad_clip": 1.0, "loss_variant": "paper",
       "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear"}}


def _reference(tmp_path, tiny_lm, kind="pretrained", ref_cfg=None):
    """The tiny model as a fetched reference folder (its manifest as fetch_reference writes)."""
    folder, _, _ = tiny_lm
    out = tmp_path / f"ref-{kind}"
    shutil.copytree(folder, out)
    (out / "reference_manifest.json").write_text(json.dumps(
        {"which": "target", "kind": kind, "config": {"kind": kind, **(ref_cfg or {})}}))
    return out


def test_base_dtype_follows_device_and_reference_dtype(tmp_path, tiny_lm):
    pretrained = _reference(tmp_path, tiny_lm)
    assert trainer.base_dtype(pretrained, "cuda") == "bfloat16"
    assert trainer.base_dtype(pretrained, "cpu") == "float32"
    forced = _reference(tmp_path / "f", tiny_lm, ref_cfg={"dtype": "float32"})
    assert trainer.base_dtype(forced, "cuda") == "float32"
    # a model trained here (kind train) or a folder without a manifest: fp32 everywhere
    assert trainer.base_dtype(_reference(tmp_path, tiny_lm, kind="train"), "cuda") == "float32"
    assert trainer.base_dtype(tiny_lm[0], "cuda") == "float32"


@pytest.mark.parametrize("params", ["lora", "full"])
def test_bf16_base_trains_fp32_trainables_and_saves_the_update_in_fp32(
        tmp_path, tiny_lm, data_dir, monkeypatch, params):
    """The CUDA path run on the CPU: the device check says bf16 (as on CUDA), the base loads in
    bf16, every trainable is fp32, and the checkpoint holds base + update in fp32."""
    ref = _reference(tmp_path, tiny_lm)
    monkeypatch.setattr("relapse.models.pretrained.training_dtype",
                        lambda ref_cfg, device: "bfloat16")
    seen = {}
    from relapse.models.modules import make_trainable as real_make_trainable


    def spy(model, *args, **kwargs):
        seen["base"] = {p.dtype for p in model.parameters()}
        model = real_make_trainable(model, *args, **kwargs)
        seen["trainable"] = {p.dtype for p in model.parameters() if p.requires_grad}
        seen["frozen"] = {p.dtype for p in model.parameters() if not p.requires_grad}
        return model

    monkeypatch.setattr("relapse.models.modules.make_trainable", spy)
    out = tmp_path / "run"
    trainer.unlearn("ga", {"lr": 1e-3, "epochs": 1, "params": params}, 0, ref, data_dir, CFG,
                    out)
    assert seen["base"] == {torch.bfloat16}
    assert seen["trainable"] == {torch.float32} and torch.bfloat16 in seen["frozen"]
    manifest = json.loads((out / "epoch1" / "unlearn_manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16" and manifest["trainable_dtype"] == "float32"
    if params == "lora":       # merged on load, over the base loaded in bf16 as in training
        from relapse.models.io import load_model

        saved = load_model(out / "epoch1").state_dict()
    else:
        saved = load_file(str(out / "epoch1" / "model.safetensors"))
    base = load_file(str(ref / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert {t.dtype for t in saved.values()} == {torch.float32}
    delta = saved[name] - base[name].bfloat16().float()
    # the update survives the save: it is not rounded away onto bf16's grid
    assert delta.abs().max() > 0
    assert not torch.equal(saved[name], saved[name].bfloat16().float())


def test_cpu_default_unlearns_in_fp32(tmp_path, tiny_lm, data_dir):
    ref = _reference(tmp_path, tiny_lm)
    out = tmp_path / "run"
    trainer.unlearn("ga", {"lr": 1e-3, "epochs": 1, "params": "full"}, 0, ref, data_dir, CFG,
                    out)
    manifest = json.loads((out / "epoch1" / "unlearn_manifest.json").read_text())
    assert manifest["dtype"] == "float32" and manifest["trainable_dtype"] == "float32"
