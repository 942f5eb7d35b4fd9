"""An unlearning run's checkpoints: one plain model folder per requested epoch
(`run/epoch{E}/`; LoRA runs also keep their adapter), and `select_epoch`, which exposes one of
them as an `unlearned/` model folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def save_checkpoint(model, is_lora: bool, folder: Path, target_dir, final: bool) -> None:
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


def select_epoch(run_dir: str | Path, epoch: int, out_dir: str | Path) -> None:
    """Expose one checkpoint of a run as an `unlearned/` model folder: hard links (no copy of
    the weights), the run's training log up to that epoch included."""
    from relapse.io import atomic_dir, link_or_copy, read_parquet_metadata, write_parquet

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
            link_or_copy(path, target)
        log_path = Path(run_dir) / "train_log.parquet"
        log = pd.read_parquet(log_path)
        write_parquet(tmp / "train_log.parquet", log[log.epoch <= epoch],
                      read_parquet_metadata(log_path))
