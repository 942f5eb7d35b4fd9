"""Which parameters an unlearning run trains beyond `params`: a restriction to some decoder
layers (and Linear modules in them), as RMU trains, and SURE's saliency mask."""

from __future__ import annotations

from typing import Any

from relapse.models.modules import layer_index, module_of


def restrict_to_layers(model, layers: list[int], modules: tuple[str, ...] | None = None) -> list[str]:
    """Freeze every trainable parameter outside decoder layers `layers` (and, given `modules`,
    outside the Linear modules of those names, e.g. `down_proj`); return the modules kept."""
    kept = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_index(name)
        module = module_of(name)
        if layer is not None and layer in layers and (
                modules is None or module.rsplit(".", 1)[-1] in modules):
            kept.add(module)
        else:
            p.requires_grad_(False)
    if not kept:
        raise ValueError(f"no trainable module left in layers {layers}"
                         + (f" named {', '.join(modules)}" if modules else ""))
    return sorted(kept)


def _base_weight(model, module_name: str):
    """The weight W of a Linear module, under its LoRA wrapper if it has one."""
    module = model.get_submodule(module_name)
    if hasattr(module, "get_base_layer"):
        module = module.get_base_layer()
    return module.weight


def _plain_name(module_name: str) -> str:
    """A module's name in the unwrapped model (peft prefixes `base_model.model.`)."""
    prefix = "base_model.model."
    return module_name[len(prefix):] if module_name.startswith(prefix) else module_name


def saliency_mask(model, method, ctx, forget_batches, hp) -> dict[str, Any]:
    """SURE (arXiv 2410.16454): the saliency of a module is ‖∇_W L_forget‖ at θ₀ over the whole
    forget set, W the module's weight. γ is a percentile of these module saliencies: only the
    modules at or above it stay trainable (the released code computed the mask but never applied
    it; here the other modules' parameters stop requiring gradients).

    With LoRA the gradient is still taken on each target module's base weight W, not on its
    adapter factors: B starts at 0, so the gradient of A is 0 and that of B is s·∇_W L·Aᵀ (s the
    LoRA scaling), another quantity. As B = 0 the adapter adds nothing to the output, so the forward is θ₀'s. Only the
    selected modules' adapters then train."""
    import numpy as np
    import torch

    from relapse.unlearn.step import _shares

    candidates = sorted({module_of(n) for n, p in model.named_parameters() if p.requires_grad})
    if not candidates:
        raise RuntimeError("SURE: the model has no trainable module")
    weights = [_base_weight(model, n) for n in candidates]
    flags = [w.requires_grad for w in weights]
    sums = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    shares = _shares(forget_batches, method.forget.reduction_for(ctx.loss_variant))
    try:
        for w in weights:
            w.requires_grad_(True)
        for share, batch in zip(shares, forget_batches):
            # autograd.grad leaves every .grad untouched: nothing leaks into the first step.
            grads = torch.autograd.grad(method.forget.fn(ctx, batch, hp) * share, weights,
                                        allow_unused=True)
            for total, g in zip(sums, grads):
                if g is not None:
                    total += g.float()
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    values = np.array([float(g.double().norm()) for g in sums])
    if not values.any():
        raise RuntimeError("SURE: no trainable module received a forget gradient")
    threshold = float(np.percentile(values, float(hp["gamma"])))
    selected = {n for n, v in zip(candidates, values) if v >= threshold}
    for name, p in model.named_parameters():
        if p.requires_grad and module_of(name) not in selected:
            p.requires_grad_(False)
    return {"threshold": threshold, "selected": sorted(_plain_name(n) for n in selected),
            "saliency": {_plain_name(n): float(v) for n, v in zip(candidates, values)}}
