"""The unlearning run: one method × hp × seed on one benchmark's target model.

A run trains once to the largest requested epoch and saves a checkpoint at every requested
epoch (`run/epoch{E}/`), so an `epochs` grid axis costs one job. Each checkpoint is a plain model
folder, or for LoRA runs the adapter and a pointer to its base (checkpoints.py). The step is step.py's,
the optimizer loop relapse.models.training's, the layer restriction and SURE mask restrict.py's.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pandas as pd

from relapse.models.modules import decoder_layers


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


def unlearn(method_name: str, hp: dict[str, Any], seed: int, target_dir: str | Path,
            data_dir: str | Path, unlearning_cfg: dict, out_dir: str | Path,
            save_epochs: list[int] | None = None, device: str = "cpu", threads: int = 1) -> None:
    import copy
    import math

    import torch

    from relapse.io import atomic_dir, write_json, write_parquet
    from relapse.models.batching import batch_training_rows, training_rows
    from relapse.models.adapter import base_record
    from relapse.models.io import load_model
    from relapse.models.modules import make_trainable
    from relapse.models.tokenizer import load_tokenizer
    from relapse.models.training import TrainingLoop
    from relapse.progress import progress
    from relapse.provenance import provenance
    from relapse.schedule import lr_schedule
    from relapse.seeding import seed_everything
    from relapse.unlearn.checkpoints import save_checkpoint
    from relapse.unlearn.registry import get_method
    from relapse.unlearn.restrict import restrict_to_layers, saliency_mask
    from relapse.unlearn.smoothing import WeightAverage
    from relapse.unlearn.step import StepContext, _ref_seq_logprobs, accumulate_step

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
    is_lora = hp["params"] == "lora"
    # a LoRA checkpoint points at this base: its content as loaded now, fingerprinted
    base = base_record(target_dir, dtype) if is_lora else None
    model = load_model(target_dir, device=device, dtype=dtype)
    # bf16 matmuls on CUDA; on the CPU only under a bf16 base (fp32 trainables meet bf16 inputs)
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) \
        if device == "cuda" or dtype == "bfloat16" else contextlib.nullcontext

    from relapse.io import read_parquet, require_rows

    forget_file, retain_file = Path(data_dir) / "forget.parquet", Path(data_dir) / "retain.parquet"
    # Token ids per sample: MUSE's packed windows as stored, texts tokenized (+ EOS) otherwise;
    # QA texts (a `prompt` column) train on their answer tokens only, as TOFU does.
    forget_frame = require_rows(read_parquet(forget_file), forget_file, "forget split")
    forget_rows = training_rows(tokenizer, forget_frame)
    preferred_rows, preference = None, None
    if method.forget.needs_preferred:
        # (rejected, preferred) per row; a raw text's rejected part is its continuation
        from relapse.unlearn.preference import preference_rows

        forget_rows, preferred_rows, preference = preference_rows(
            tokenizer, forget_frame, forget_rows, hp, seed, method_name)
    retain_rows = training_rows(tokenizer, read_parquet(retain_file))
    if method.regularizer is not None:
        require_rows(retain_rows, retain_file, f"retain split ({method_name} regularizes on it)")
    batch_size = int(unlearning_cfg.get("batch_size", 8))
    micro = int(unlearning_cfg.get("micro_batch_size") or batch_size)
    if batch_size % micro:
        raise ValueError(f"unlearning.batch_size {batch_size} is not a multiple of "
                         f"micro_batch_size {micro}")

    def tensors(rows):
        return {k: v.to(device)
                for k, v in batch_training_rows(rows, tokenizer.pad_token_id).items()}

    needs_ref_model = method.needs_reference or loss_variant == "muse"
    reference = None
    if not is_lora and needs_ref_model:
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)

    def ref_logprobs(rows):
        chunks = [tensors(rows[i:i + micro]) for i in range(0, len(rows), micro)]
        return _ref_seq_logprobs(model, chunks, autocast)

    ref_seq_logp = ref_logprobs(forget_rows) if method.forget.needs_ref_seq_logp else None
    ref_preferred = ref_logprobs(preferred_rows) if preferred_rows is not None else None

    def forget_batch(indices):
        batch = tensors([forget_rows[i] for i in indices])
        if ref_seq_logp is not None:
            batch["ref_seq_logp"] = ref_seq_logp[indices]
        if preferred_rows is not None:
            batch.update({f"preferred_{k}": v for k, v in
                          tensors([preferred_rows[i] for i in indices]).items()})
            batch["preferred_ref_seq_logp"] = ref_preferred[indices]
        return batch

    n_layers = len(decoder_layers(model))
    model = make_trainable(model, hp["params"], unlearning_cfg.get("lora", {}))
    ctx = StepContext(model, loss_variant, reference, is_lora=is_lora, autocast=autocast, seed=seed)
    extra: dict[str, Any] = {"preference": preference} if preference else {}
    if method.trainable_layers is not None:
        modules = method.trainable_modules(hp) if method.trainable_modules else None
        extra["trainable_modules"] = restrict_to_layers(
            model, method.trainable_layers(hp, n_layers), modules)
    if method.forget.setup is not None or method.saliency:
        # both at θ₀, over the whole forget set
        everything = list(range(len(forget_rows)))
        batches = [forget_batch(everything[i:i + micro]) for i in range(0, len(everything), micro)]
        if method.forget.setup is not None:
            extra[method.forget.name] = method.forget.setup(ctx, batches, hp)
        if method.saliency:
            extra["sure"] = saliency_mask(model, method, ctx, batches, hp)
    if method.regularizer is not None and method.regularizer.setup is not None:
        # at θ₀, over the whole retain set (PDU's constraint level)
        batches = [tensors(retain_rows[i:i + micro]) for i in range(0, len(retain_rows), micro)]
        extra[method.regularizer.name] = method.regularizer.setup(ctx, batches, hp)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    dtypes = {"dtype": dtype, "trainable_dtype": ", ".join(sorted(
        {str(p.dtype).removeprefix("torch.") for p in trainable}))}
    opt = torch.optim.AdamW(trainable, lr=float(hp["lr"]), weight_decay=0.0)
    steps_per_epoch = math.ceil(len(forget_rows) / batch_size)
    scheduler = lr_schedule(opt, unlearning_cfg.get("schedule", "constant"),
                            epochs * steps_per_epoch, warmup=unlearning_cfg.get("warmup", 0.0))
    generator = torch.Generator().manual_seed(seed)
    loop = TrainingLoop(model, trainable, opt, scheduler,
                        grad_clip=float(unlearning_cfg.get("grad_clip", 1.0)))
    # `_wa` methods save the running mean of the weights (smoothing.py); the others the weights
    averaged = WeightAverage(trainable, hp) if method.smoothing == "wa" else None
    log: list[dict] = []
    meta = provenance({"method": method_name, "hp": hp, "seed": seed, "unlearning": unlearning_cfg})

    def epoch_batches(epoch):
        order = torch.randperm(len(forget_rows), generator=generator).tolist()
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            # Gradient accumulation: the effective batch is `batch_size` whatever fits in memory.
            forget_parts = [forget_batch(idx[m:m + micro]) for m in range(0, len(idx), micro)]
            retain_parts = None
            if method.regularizer is not None:
                # drawn for the whole batch, so that the split into micro-batches changes nothing
                ridx = torch.randint(len(retain_rows), (len(idx),), generator=generator).tolist()
                retain_parts = [tensors([retain_rows[i] for i in ridx[m:m + micro]])
                                for m in range(0, len(idx), micro)]
            yield forget_parts, retain_parts

    def step(parts, loop):
        forget_parts, retain_parts = parts
        return accumulate_step(method, ctx, hp, forget_parts, retain_parts, guard=loop.guard,
                               step=loop.step)

    def after_step(epoch, parts, totals, grad_norm):
        forget_parts, retain_parts = parts
        tokens = sum(int(part["attention_mask"].sum())
                     for part in forget_parts + (retain_parts or []))
        if averaged is not None:
            averaged.after_step(loop.step)
        row = {"step": loop.step, "epoch": epoch, **totals, "lr": scheduler.get_last_lr()[0],
               "grad_norm": float(grad_norm), "seconds": loop.seconds(), "tokens": tokens}
        for objective in (method.forget, method.regularizer):
            if objective is not None and objective.after_step is not None:
                row.update(objective.after_step(ctx, totals, hp, epoch))
        log.append(row)

    with atomic_dir(out_dir) as run_dir:
        def end_epoch(epoch):
            if epoch not in save_epochs:
                return
            folder = run_dir / f"epoch{epoch}"
            folder.mkdir()
            model.eval()
            with averaged.swapped_in() if averaged is not None else contextlib.nullcontext():
                save_checkpoint(model, is_lora, folder, target_dir, final=epoch == epochs,
                                base=base)
            model.train()
            write_json(folder / "unlearn_manifest.json", {
                "method": method_name, "hp": {**hp, "epochs": epoch}, "params": hp["params"],
                "seed": seed, "loss_variant": loss_variant, "steps": loop.step, **dtypes,
                "loss_tokens": "answer" if any(r.masked for r in forget_rows) else "text",
                "seconds": loop.seconds(), **extra, **meta})

        loop.epochs(progress(range(1, epochs + 1), desc=f"unlearn {method_name}", unit="epoch"),
                    epoch_batches, step, after_step, end_epoch)
        write_parquet(run_dir / "train_log.parquet", pd.DataFrame(log), meta)
