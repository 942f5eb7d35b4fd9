"""The LoRA setting's reference models: a base (the retrain model, which never saw the forget
people) plus a LoRA adapter fine-tuned on a set of QA instances (relapse.data.edits): the
*target* on what was trained, the *gold* on what should have been.

The objective is L(θ) = (1/n) Σ_i ℓ_i(θ) + (λ/2)‖θ‖² over the adapter's parameters θ, ℓ_i
each instance's mean token NLL (the same ℓ_i that the influence update,
relapse.unlearn.oneshot.llmeraser, differentiates) and n the fit's own instance count. The L2
term is the one the update's damping stands for: the update is one Newton step on the gold's
L(θ), whose Hessian is H/n + λI, so target, gold and update share one λ (`lora_setting.l2`,
recorded in each reference's manifest). It is minimised full-batch to a small gradient, since
an influence function assumes ∇L(θ*) ≈ 0. Both use the same seed, hence the same adapter
initialisation, so target and gold differ only by the data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

ROLES = {"target": "target_text", "retrain": "gold_text"}

# λ of the fit's (λ/2)‖θ‖² and of the influence update's damping (schema default of
# benchmarks.NAME.lora_setting.l2). Chosen for the solve's conditioning alone, never by agreement
# with the gold: the Gauss-Newton curvature G/n of config/llmeraser.yaml's targets has its top
# eigenvalue at ~23 (removal) to >60 (query), so λ = 0.01 caps the condition number of G/n + λI
# near 6e3, where CG reached tol 1e-4 in 44-189 iterations on every task (measured at damping
# 0.01 before the fit had this term). A larger λ conditions better but pulls both adapters
# toward zero: it changes what target and gold learn, not only the solve.
L2 = 0.01


def l2_weight(cfg: dict) -> float:
    """`cfg`'s λ (lora_setting.l2), checked: a positive finite number."""
    import math

    value = cfg.get("l2", L2)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not value > 0:
        raise ValueError(f"lora_setting.l2: {value!r} must be a positive number (λ of the fit's "
                         "(λ/2)‖θ‖², which the influence update's damping assumes)")
    return float(value)


def eager_attention(model):
    """Double backprop (Hessian-vector products) needs attention written in differentiable
    torch ops; the fused SDPA kernels have no second derivative on every backend."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"
    return model


def item_nll_sums(model, tokenizer, texts: Sequence[str], batch: int,
                  device: str = "cpu") -> Iterator:
    """Σ_i ℓ_i per micro-batch of `batch` texts, ℓ_i = mean NLL of text i's tokens after BOS."""
    import torch
    import torch.nn.functional as F

    from relapse.models.batching import encode

    for start in range(0, len(texts), batch):
        enc = {k: v.to(device) for k, v in encode(tokenizer, list(texts[start:start + batch])).items()}
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        labels = enc["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100,
                              reduction="none")
        mask = (labels != -100).to(nll.dtype)
        yield ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).sum()


def gauss_newton_product(model, tokenizer, texts: Sequence[str], batch: int, params: Sequence,
                         vector, device: str = "cpu"):
    """G·v for Σ_i ℓ_i (ℓ_i as in `item_nll_sums`), G = Σ Jᵀ H_z J the generalised Gauss-Newton
    matrix: J the Jacobian of the logits in `params`, H_z = w (diag p − p pᵀ) the softmax
    cross-entropy's Hessian in the logits, w = 1/T_i on each of text i's T_i scored tokens. It is
    positive semi-definite, unlike ∇²Σℓ away from a minimum. J·v comes from the double-vjp trick
    (the vjp u ↦ Jᵀu is linear in u, so its gradient in u against v is J v)."""
    import torch

    from relapse.models.batching import encode

    v = []
    at = 0
    for p in params:
        v.append(vector[at:at + p.numel()].view_as(p))
        at += p.numel()
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(texts), batch):
        enc = {k: t.to(device) for k, t in encode(tokenizer, list(texts[start:start + batch])).items()}
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1]
        mask = (enc["labels"][:, 1:] != -100).to(logits.dtype)
        weight = (mask / mask.sum(1, keepdim=True).clamp(min=1)).unsqueeze(-1)
        u = torch.zeros_like(logits, requires_grad=True)
        jt_u = torch.autograd.grad(logits, params, grad_outputs=u, create_graph=True)
        jv = torch.autograd.grad(sum((g * vi).sum() for g, vi in zip(jt_u, v)), u)[0]
        # At least fp32 for the probabilities (bf16 logits); float64 stays float64.
        p = torch.softmax(logits.detach().to(torch.promote_types(logits.dtype, torch.float32)),
                          dim=-1).to(logits.dtype)
        hz = weight * (p * jv - p * (p * jv).sum(-1, keepdim=True))
        gv = torch.autograd.grad(logits, params, grad_outputs=hz)
        total = [t + g for t, g in zip(total, gv)]
    return torch.cat([t.reshape(-1) for t in total]).detach()


def adapter_params(model) -> list:
    """The LoRA parameters of a peft model, in a fixed order (named_parameters')."""
    return [p for name, p in model.named_parameters() if "lora_" in name and p.requires_grad]


def with_lora(model, lora_cfg: dict):
    """`model` wrapped in a fresh peft LoRA adapter (fp32): relapse.models.modules'
    make_trainable with params=lora."""
    from relapse.models.modules import make_trainable

    return make_trainable(model, "lora", lora_cfg)


def fit_lora(model, tokenizer, texts: Sequence[str], cfg: dict, device: str = "cpu"):
    """Full-batch AdamW on (1/n)Σℓ_i + (λ/2)‖θ‖² over `texts` (module docstring; λ = cfg's l2)
    for `steps` steps (cosine to 0). Returns (log rows, final gradient norm)."""
    batch = int(cfg.get("batch", 64))
    return fit_regularised(model, adapter_params(model),
                           lambda: item_nll_sums(model, tokenizer, texts, batch, device),
                           len(texts), cfg)


def fit_regularised(model, params: Sequence, losses, n: int, cfg: dict):
    """Minimise (1/n)Σℓ + (λ/2)‖θ‖² over `params` by full-batch AdamW (`steps`, `lr`,
    `schedule`; λ = cfg's l2). `losses()` yields Σℓ per micro-batch. The L2 term is in the loss,
    not AdamW's decoupled weight decay (which is no term of any objective), so the optimum is
    where the influence update assumes ∇L = 0. Returns (log rows: step, loss = the data term,
    l2_term, seconds; ‖∇L(θ)‖ at the end, L2 term included)."""
    import torch

    from relapse.models.training import TrainingLoop
    from relapse.schedule import lr_schedule

    l2 = l2_weight(cfg)
    steps = int(cfg.get("steps", 300))
    opt = torch.optim.AdamW(params, lr=float(cfg.get("lr", 3e-3)), weight_decay=0.0)
    scheduler = lr_schedule(opt, cfg.get("schedule", "cosine"), steps, warmup=0.0)
    # No clipping and no guard: the fit has always run without them.
    loop = TrainingLoop(model, params, opt, scheduler, grad_clip=None, guard=False)
    log = []

    def backward() -> tuple[float, float]:
        total = 0.0
        for loss in losses():
            (loss / n).backward()
            total += float(loss.detach())
        penalty = l2 / 2 * sum(p.pow(2).sum() for p in params)
        penalty.backward()
        return total / n, float(penalty.detach())

    def after_step(_, terms, grad_norm):
        if loop.step % 10 == 0 or loop.step == steps:
            log.append({"step": loop.step, "loss": terms[0], "l2_term": terms[1],
                        "seconds": loop.seconds()})

    loop.run(range(steps), lambda _, loop: backward(), after_step)
    model.eval()
    for p in params:
        p.grad = None
    backward()
    grad_norm = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in params)))
    for p in params:
        p.grad = None
    return log, grad_norm


def train_lora_reference(which: str, base_dir: str | Path, items_dir: str | Path, cfg: dict,
                         out_dir: str | Path, device: str = "cpu", threads: int = 1) -> None:
    """`which` = target (the instances the adapter was trained on) or retrain (the gold: the
    edited instances removed or corrected). Writes a merged model folder, the adapter in
    `adapter/`, train_log.parquet and reference_manifest.json (with the wall time, which the
    influence update is compared against, and `l2`, the λ its update must damp with)."""
    import copy

    from relapse.io import atomic_dir, write_json, write_parquet
    from relapse.models.io import load_model, save_model
    from relapse.models.tokenizer import load_tokenizer
    from relapse.provenance import provenance
    from relapse.seeding import seed_everything

    if which not in ROLES:
        raise ValueError(f"LoRA-setting reference {which!r}: expected one of {', '.join(ROLES)}")
    items = pd.read_parquet(Path(items_dir) / "items.parquet")
    texts = list(items[ROLES[which]].dropna())
    l2_weight(cfg)      # a bad λ fails before the fit
    seed_everything(int(cfg.get("seed", 0)), threads)
    tokenizer = load_tokenizer(base_dir)
    start = time.time()
    model = with_lora(load_model(base_dir, device=device), cfg.get("lora", {}))
    log, grad_norm = fit_lora(model, tokenizer, texts, cfg, device)
    seconds = time.time() - start
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
        save_model(copy.deepcopy(model).merge_and_unload(), tmp, base_dir)
        write_parquet(tmp / "train_log.parquet", pd.DataFrame(log), provenance(cfg))
        write_json(tmp / "reference_manifest.json", {
            "which": which, "lora_setting": True, "items": len(texts), "seconds": seconds,
            "final_loss": log[-1]["loss"], "final_grad_norm": grad_norm, "l2": l2_weight(cfg),
            **provenance(cfg)})
