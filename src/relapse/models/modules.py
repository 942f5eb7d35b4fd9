"""Which modules of a causal LM are which: its decoder blocks, the Linear layers inside them, the
module a parameter belongs to; and which weights a training run may change (a peft LoRA adapter,
or the decoder Linear weights). Used by unlearning, reference fine-tuning, quantization and the
attacks alike."""

from __future__ import annotations

import re

DECODER_LINEAR_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def decoder_linear_names(model) -> list[str]:
    """Names of the Linear modules inside the decoder blocks (no embeddings, no lm_head)."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}"
            and name.rsplit(".", 1)[-1] in DECODER_LINEAR_SUFFIXES]


def make_trainable(model, params: str, lora_cfg: dict):
    """Return the model to train: a peft model (params=lora) or `model` with only its decoder
    Linear weights trainable (params=full). Trainable tensors are fp32 either way."""
    import torch

    if params == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_cfg.get("r", 8), lora_alpha=lora_cfg.get("alpha", 16),
                            lora_dropout=lora_cfg.get("dropout", 0.0),
                            target_modules=lora_cfg.get("targets", "all-linear"),
                            task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    elif params == "full":
        for p in model.parameters():
            p.requires_grad_(False)
        for name in decoder_linear_names(model):
            model.get_submodule(name).weight.requires_grad_(True)
    else:
        raise ValueError(f"params: {params!r} is not lora or full")
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            # A bf16 master copy silently drops updates smaller than its 8-bit mantissa.
            p.data = p.data.float()
    return model


def decoder_layers(model):
    """The decoder block list of a (possibly peft-wrapped) causal LM."""
    for name, module in model.named_modules():
        if name.endswith("layers") and hasattr(module, "__len__") and len(module) > 0:
            return module
    raise ValueError("no decoder layers found in the model")


# `layers.{i}.` as a whole name component: `layers.1.` is layer 1, never 10-19, and never a
# `*_layers.1.` module of another name.
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The decoder layer of a parameter or module name (`model.layers.12.mlp…` → 12), or None."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def module_of(param_name: str) -> str:
    """The Linear module a trainable parameter belongs to (its LoRA A/B, or its weight)."""
    for marker in (".lora_A.", ".lora_B."):
        if marker in param_name:
            return param_name.split(marker)[0]
    return param_name.rsplit(".", 1)[0]
