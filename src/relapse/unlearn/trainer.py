"""The unlearning loop: one method × hp × seed on one benchmark's target model.

A run trains once to the largest requested epoch and saves a checkpoint at every requested
epoch (`run/epoch{E}/`), so an `epochs` grid axis costs one job. Each checkpoint is a plain model
folder (LoRA runs also keep their adapter in `adapter/`).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from relapse.models.modules import decoder_layers, module_of

_LAYER = re.compile(r"layers\.(\d+)\.")


@dataclass
class StepContext:
    """What an objective may use: the trained model and the frozen reference."""
    model: Any
    loss_variant: str
    reference: Any = None          # a frozen copy (params=full), or None
    is_lora: bool = False
    autocast: Any = contextlib.nullcontext
    seed: int = 0
    cache: dict = field(default_factory=dict)   # what an objective's setup computed at θ₀
    _steer: Any = field(default=None, repr=False)

    def _run(self, model, batch):
        with self.autocast():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def _reference_model(self):
        if self.is_lora:
            return self.model, _adapter_disabled(self.model)
        if self.reference is None:
            raise RuntimeError("this objective needs the reference model, but none was kept")
        return self.reference, contextlib.nullcontext()

    def forward(self, batch):
        return self._run(self.model, batch)

    def ref_logits(self, batch):
        import torch

        model, adapter_off = self._reference_model()
        with torch.no_grad(), adapter_off:
            return self._run(model, batch).logits.float()

    def hidden(self, batch, layer: int, reference: bool = False):
        """Output of decoder layer `layer` (0-based), captured with a forward hook."""
        model, adapter_off = self._reference_model() if reference else (self.model, contextlib.nullcontext())
        module = decoder_layers(model)[layer]
        captured = {}

        def hook(_module, _inputs, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output

        handle = module.register_forward_hook(hook)
        try:
            with adapter_off:
                self._run(model, batch)
        finally:
            handle.remove()
        return captured["h"]

    def steering_vector(self, dim: int):
        """RMU's fixed direction: uniform [0, 1) entries, normalised, drawn from the run's seed."""
        import torch

        if self._steer is None or self._steer.numel() != dim:
            u = torch.rand(dim, generator=torch.Generator().manual_seed(self.seed))
            self._steer = u / u.norm()
        return self._steer


@contextlib.contextmanager
def _adapter_disabled(model):
    """peft's `disable_adapter`, keeping every requires_grad flag: on exit peft marks all adapter
    weights trainable again, which would undo an RMU or SURE restriction."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with model.disable_adapter():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _ref_seq_logprobs(model, batches, autocast=contextlib.nullcontext) -> "torch.Tensor":
    """log π_ref(y|x) per forget sequence, under the same autocast as the policy's forward, so
    that the NPO log-ratio is exactly 0 at θ₀ (in bf16 autocast the two would otherwise differ)."""
    import torch

    from relapse.unlearn.losses import sequence_logprob

    out = []
    with torch.no_grad():
        for batch in batches:
            with autocast():
                logits = model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
            out.append(sequence_logprob(logits, batch["labels"]))
    return torch.cat(out)


def restrict_to_layers(model, layers: list[int], modules: tuple[str, ...] | None = None) -> list[str]:
    """Freeze every trainable parameter outside decoder layers `layers` (and, given `modules`,
    outside the Linear modules of those names, e.g. `down_proj`); return the modules kept."""
    kept = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        match = _LAYER.search(name)
        module = module_of(name)
        if match and int(match.group(1)) in layers and (
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


def _shares(batches, reduction: str) -> list[float]:
    """Each micro-batch's share of the units (tokens or sequences) its loss is a mean over."""
    from relapse.unlearn.losses import reduction_count

    counts = [reduction_count(b, reduction) for b in batches]
    total = sum(counts)
    return [c / total if total else 1.0 / len(counts) for c in counts]


def accumulate_step(method, ctx, hp, forget_parts, retain_parts=None, guard=None,
                    step: int = 0) -> dict[str, float]:
    """Backpropagate one optimizer step's loss over its micro-batches; return its terms.

    Every term is a mean over its own units (`Objective.reduction`), so a micro-batch's term is
    weighted by its share of those units in the whole batch (forget and retain each by their
    own): the accumulated gradient is then the full batch's, however it is split. Weighting by
    sequence count would be exact only for per-sequence losses."""
    alpha = float(hp.get("alpha", 1.0))
    forget_w = _shares(forget_parts, method.forget.reduction_for(ctx.loss_variant))
    if method.regularizer is not None:
        retain_w = _shares(retain_parts, method.regularizer.reduction_for(ctx.loss_variant))
    totals: dict[str, float] = {}
    for i, forget in enumerate(forget_parts):
        terms = {"forget": method.forget.fn(ctx, forget, hp)}
        weighted = forget_w[i] * terms["forget"]
        if method.regularizer is not None:
            terms["regularizer"] = method.regularizer.fn(ctx, retain_parts[i], hp)
            weighted = weighted + alpha * retain_w[i] * terms["regularizer"]
        if guard is not None:
            loss = terms["forget"] + alpha * terms.get("regularizer", 0.0)
            guard.check(step, {**terms, "loss": loss})
        weighted.backward()
        totals["forget"] = totals.get("forget", 0.0) + forget_w[i] * float(terms["forget"].detach())
        if "regularizer" in terms:
            totals["regularizer"] = (totals.get("regularizer", 0.0)
                                     + retain_w[i] * float(terms["regularizer"].detach()))
    totals["loss"] = totals["forget"] + alpha * totals.get("regularizer", 0.0)
    return totals


def base_dtype(target_dir: str | Path, device: str) -> str:
    """The dtype the target's weights are loaded in for unlearning. A pretrained reference
    (`reference.kind: pretrained`, its manifest written by fetch_reference) trains in
    `training_dtype`: bf16 on CUDA, fp32 on the CPU, unless `reference.dtype` sets one; the
    trainable tensors are fp32 whatever the base (make_trainable). Other references: fp32."""
    from relapse.models.io import read_manifest
    from relapse.models.pretrained import training_dtype

    manifest = read_manifest(target_dir, "reference_manifest.json")
    if manifest.get("kind") != "pretrained":
        return "float32"
    return training_dtype(manifest.get("config") or {}, device)


def _checkpoint(model, is_lora: bool, folder: Path, target_dir, final: bool) -> None:
    """Save a plain model folder; LoRA runs keep the adapter and write merged weights beside it,
    so no later job pays peft's import (7 s a process, DESIGN §10b) just to merge. A bf16 base
    is upcast first: the merged (or saved) weights are bf16 base + fp32 update in fp32, so no
    update is rounded to bf16's spacing on the way out."""
    import copy

    import torch

    from relapse.models.io import save_model

    upcast = any(p.dtype != torch.float32 for p in model.parameters())
    if is_lora:
        model.save_pretrained(str(folder / "adapter"), safe_serialization=True)
    if is_lora or upcast:
        # Merging or upcasting in place would change training; a copy keeps intermediate
        # checkpoints exact.
        model = model if final else copy.deepcopy(model)
    if upcast:
        model = model.float()
    if is_lora:
        model = model.merge_and_unload()
    save_model(model, folder, target_dir)


def unlearn(method_name: str, hp: dict[str, Any], seed: int, target_dir: str | Path,
            data_dir: str | Path, unlearning_cfg: dict, out_dir: str | Path,
            save_epochs: list[int] | None = None, device: str = "cpu", threads: int = 1) -> None:
    import copy
    import math

    import torch

    from relapse.io import atomic_dir, write_json, write_parquet
    from relapse.models.batching import encode
    from relapse.models.guard import LossGuard
    from relapse.models.io import load_model
    from relapse.models.modules import make_trainable
    from relapse.models.tokenizer import load_tokenizer
    from relapse.progress import progress
    from relapse.provenance import provenance
    from relapse.schedule import lr_schedule
    from relapse.seeding import seed_everything
    from relapse.unlearn.registry import get_method

    method = get_method(method_name)
    hp = {**method.defaults(), **hp}
    epochs = int(hp["epochs"])
    save_epochs = sorted(set(save_epochs or [epochs]))
    if save_epochs[-1] != epochs or save_epochs[0] < 1:
        raise ValueError(f"save_epochs {save_epochs} must lie in 1..epochs ({epochs}) and end at it")
    seed_everything(seed, threads)
    loss_variant = unlearning_cfg.get("loss_variant", "paper")
    tokenizer = load_tokenizer(target_dir)
    dtype = base_dtype(target_dir, device)
    model = load_model(target_dir, device=device, dtype=dtype)
    # bf16 matmuls on CUDA; on the CPU only under a bf16 base (fp32 trainables meet bf16 inputs)
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) \
        if device == "cuda" or dtype == "bfloat16" else contextlib.nullcontext

    from relapse.io import read_parquet, require_rows

    forget_file, retain_file = Path(data_dir) / "forget.parquet", Path(data_dir) / "retain.parquet"
    forget_texts = list(require_rows(read_parquet(forget_file), forget_file, "forget split").text)
    retain_texts = list(read_parquet(retain_file).text)
    if method.regularizer is not None:
        require_rows(retain_texts, retain_file, f"retain split ({method_name} regularizes on it)")
    batch_size = int(unlearning_cfg.get("batch_size", 8))
    micro = int(unlearning_cfg.get("micro_batch_size") or batch_size)
    if batch_size % micro:
        raise ValueError(f"unlearning.batch_size {batch_size} is not a multiple of "
                         f"micro_batch_size {micro}")

    def tensors(texts):
        return {k: v.to(device) for k, v in encode(tokenizer, texts, eos=True).items()}

    is_lora = hp["params"] == "lora"
    needs_ref_model = method.needs_reference or loss_variant == "muse"
    reference = None
    if not is_lora and needs_ref_model:
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)

    ref_seq_logp = None
    if method.forget.needs_ref_seq_logp:
        chunks = [tensors(forget_texts[i:i + micro]) for i in range(0, len(forget_texts), micro)]
        ref_seq_logp = _ref_seq_logprobs(model, chunks, autocast)

    def forget_batch(indices):
        batch = tensors([forget_texts[i] for i in indices])
        if ref_seq_logp is not None:
            batch["ref_seq_logp"] = ref_seq_logp[indices]
        return batch

    n_layers = len(decoder_layers(model))
    model = make_trainable(model, hp["params"], unlearning_cfg.get("lora", {}))
    ctx = StepContext(model, loss_variant, reference, is_lora=is_lora, autocast=autocast, seed=seed)
    extra: dict[str, Any] = {}
    if method.trainable_layers is not None:
        modules = method.trainable_modules(hp) if method.trainable_modules else None
        extra["trainable_modules"] = restrict_to_layers(
            model, method.trainable_layers(hp, n_layers), modules)
    if method.forget.setup is not None or method.saliency:
        # both at θ₀, over the whole forget set
        everything = list(range(len(forget_texts)))
        batches = [forget_batch(everything[i:i + micro]) for i in range(0, len(everything), micro)]
        if method.forget.setup is not None:
            extra[method.forget.name] = method.forget.setup(ctx, batches, hp)
        if method.saliency:
            extra["sure"] = saliency_mask(model, method, ctx, batches, hp)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    dtypes = {"dtype": dtype, "trainable_dtype": ", ".join(sorted(
        {str(p.dtype).removeprefix("torch.") for p in trainable}))}
    opt = torch.optim.AdamW(trainable, lr=float(hp["lr"]), weight_decay=0.0)
    steps_per_epoch = math.ceil(len(forget_texts) / batch_size)
    scheduler = lr_schedule(opt, unlearning_cfg.get("schedule", "constant"),
                            epochs * steps_per_epoch, warmup=unlearning_cfg.get("warmup", 0.0))
    generator = torch.Generator().manual_seed(seed)
    guard = LossGuard()
    grad_clip = float(unlearning_cfg.get("grad_clip", 1.0))
    log, step, start = [], 0, time.time()
    meta = provenance({"method": method_name, "hp": hp, "seed": seed, "unlearning": unlearning_cfg})
    with atomic_dir(out_dir) as run_dir:
        for epoch in progress(range(1, epochs + 1), desc=f"unlearn {method_name}", unit="epoch"):
            order = torch.randperm(len(forget_texts), generator=generator).tolist()
            for b in range(steps_per_epoch):
                idx = order[b * batch_size:(b + 1) * batch_size]
                opt.zero_grad(set_to_none=True)
                # Gradient accumulation: the effective batch is `batch_size` whatever fits in memory.
                forget_parts = [forget_batch(idx[m:m + micro]) for m in range(0, len(idx), micro)]
                retain_parts = None
                if method.regularizer is not None:
                    # drawn for the whole batch, so that the split into micro-batches changes nothing
                    ridx = torch.randint(len(retain_texts), (len(idx),), generator=generator).tolist()
                    retain_parts = [tensors([retain_texts[i] for i in ridx[m:m + micro]])
                                    for m in range(0, len(idx), micro)]
                totals = accumulate_step(method, ctx, hp, forget_parts, retain_parts, guard, step)
                tokens = sum(int(part["attention_mask"].sum())
                             for part in forget_parts + (retain_parts or []))
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
                opt.step()
                scheduler.step()
                step += 1
                log.append({"step": step, "epoch": epoch, **totals,
                            "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                            "seconds": time.time() - start, "tokens": tokens})
            if epoch in save_epochs:
                folder = run_dir / f"epoch{epoch}"
                folder.mkdir()
                model.eval()
                _checkpoint(model, is_lora, folder, target_dir, final=epoch == epochs)
                model.train()
                write_json(folder / "unlearn_manifest.json", {
                    "method": method_name, "hp": {**hp, "epochs": epoch}, "params": hp["params"],
                    "seed": seed, "loss_variant": loss_variant, "steps": step, **dtypes,
                    "seconds": time.time() - start, **extra, **meta})
        write_parquet(run_dir / "train_log.parquet", pd.DataFrame(log), meta)


def select_epoch(run_dir: str | Path, epoch: int, out_dir: str | Path) -> None:
    """Expose one checkpoint of a run as an `unlearned/` model folder: hard links (no copy of
    the weights), the run's training log up to that epoch included."""
    import os
    import shutil

    from relapse.io import atomic_dir, read_parquet_metadata, write_parquet

    source = Path(run_dir) / f"epoch{epoch}"
    if not source.is_dir():
        raise FileNotFoundError(f"{run_dir} has no checkpoint for epoch {epoch}")
    with atomic_dir(out_dir) as tmp:
        for path in source.rglob("*"):
            target = tmp / path.relative_to(source)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        log_path = Path(run_dir) / "train_log.parquet"
        log = pd.read_parquet(log_path)
        write_parquet(tmp / "train_log.parquet", log[log.epoch <= epoch],
                      read_parquet_metadata(log_path))
