"""An unlearning run's checkpoints: one per requested epoch (`run/epoch{E}/`): a plain model
folder for params=full, the LoRA adapter and a pointer to its base for params=lora
(relapse.models.adapter; load_model merges it in memory); and `select_epoch`, which exposes one
of them as an `unlearned/` folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def save_checkpoint(model, is_lora: bool, folder: Path, target_dir, final: bool,
                    base: dict | None = None) -> None:
    """params=lora: the adapter and `base` (relapse.models.adapter.base_record, taken when the
    base was loaded), ~80 MB for a 7B model instead of 27 GB of merged fp32 weights.
    params=full: a plain model folder. A bf16 base is upcast first: the saved weights are bf16
    base + fp32 update in fp32, so no update is rounded to bf16's spacing on the way out."""
    import copy

    import torch

    from relapse.models.io import save_model

    if is_lora:
        from relapse.models.adapter import save_adapter_checkpoint

        if base is None:
            raise ValueError("a LoRA checkpoint needs the record of its base (base_record)")
        save_adapter_checkpoint(model, folder, base, target_dir)
        return
    if any(p.dtype != torch.float32 for p in model.parameters()):
        # Upcasting in place would change training; a copy keeps intermediate checkpoints exact.
        model = (model if final else copy.deepcopy(model)).float()
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
