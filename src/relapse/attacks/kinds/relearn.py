"""Relearning: fine-tune the attacked cell for k steps on some data, for each k in a list.

One training run per data source serves every k: a checkpoint is written at each k (k = 0 is the
cell itself, exactly). Data: `forget` (a seeded subset of `relearn_forget`: the forget samples of
the people whose facts are not held out, relapse.data.relearn_split, trained on exactly as
unlearning trains on them, MUSE's packed windows included), and as controls `retain`
and `holdout` (`relearn_holdout`: documents of people no model was trained on, in the form of the
forget documents: unrelated). Every variant's rows carry `recovery` from the data manifest:
`held-out` when KnowMem split forget_heldout holds facts the attacker never saw, else `in-sample`.
QA texts (TOFU's, in the bench's prompt template) train on their answers and EOS only.

Parameters: `params: full` trains the decoder Linear weights, `lora` an adapter. From a
quantized cell (any scheme but `none`) the attacker always trains a LoRA adapter over the frozen
quantized weights (QLoRA): the checkpoint is the cell's folder as is (hard links) plus the
full-precision `adapter/`, with `lora_merge: adapter` in its quant manifest, so the evaluation
runs the quantized base and the adapter on top, at the cell's precision.

The step is the unlearning step (relapse.unlearn.step.accumulate_step: gradient accumulation
with exact per-token weighting), driven by an NLL-descent objective, and the optimizer loop is
the one every training run uses (relapse.models.training); the run here differs only in
counting steps instead of epochs and checkpointing at each k.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from relapse.attacks.registry import AttackJob, columns, register_attack, write_variant_manifest
from relapse.data.relearn_split import DEFAULT_HELDOUT

RELEARN_DEFAULTS = {"steps": [10], "data": ["forget", "holdout"], "lr": 1.0e-3, "batch_size": 4,
                    "micro_batch_size": None, "params": "full", "samples": 16, "seed": 0,
                    "grad_clip": 1.0,
                    "heldout": DEFAULT_HELDOUT}    # read by the data stage, which makes the split
DATA = {"forget": "relearn_forget", "retain": "retain", "holdout": "relearn_holdout"}


def variant_id(data: str, steps: int) -> str:
    return f"{data}-k{steps}"


def relearn_variants(settings: dict) -> dict[str, dict[str, Any]]:
    cfg = {**RELEARN_DEFAULTS, **settings}
    return {variant_id(d, k): columns("relearn", attack_data=d, attack_steps=int(k))
            for d in cfg["data"] for k in sorted(set(cfg["steps"]))}


def _nll(ctx, batch, hp):
    from relapse.models.losses import token_nll

    return token_nll(ctx.forward(batch).logits, batch["labels"])


def relearn_method():
    """The relearning objective as an unlearning Method: NLL descent, per-token mean."""
    from relapse.unlearn.registry import Method, Objective

    return Method("relearn", Objective("relearn_nll", _nll, reduction="token"))


def attack_sample(data_dir: Path, data: str, samples: int, seed: int):
    """`samples` rows of a data source's split, a seeded subset (all of them when fewer)."""
    import numpy as np

    from relapse.data.prepare import load_split

    if data not in DATA:
        raise ValueError(f"relearn data {data!r} is not one of {', '.join(DATA)}")
    frame = load_split(data_dir, DATA[data])
    order = np.random.default_rng(seed).permutation(len(frame))
    return frame.iloc[order[:samples]].reset_index(drop=True)


def attack_texts(data_dir: Path, data: str, samples: int, seed: int) -> list[str]:
    """The texts of `attack_sample`."""
    return list(attack_sample(data_dir, data, samples, seed).text)


def recovery(data_dir: Path) -> str:
    """`held-out` or `in-sample`: what the data stage's relearning split did (its manifest)."""
    import json

    path = Path(data_dir) / "manifest.json"
    record = json.loads(path.read_text()).get("relearn") if path.exists() else None
    if record is None:
        raise FileNotFoundError(f"{path}: no relearning split recorded; run the data stage")
    return record["recovery"]


def _link_tree(source: Path, target: Path, skip: tuple[str, ...]) -> None:
    """Hard-link the cell's files (no copy of the weights); never link a file we rewrite."""
    from relapse.io import link_or_copy

    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name in skip or path.is_dir():
            continue
        link_or_copy(path, target / path.name)


def _checkpoint(model, lora: bool, source: Path, folder: Path) -> None:
    from relapse.io import write_json
    from relapse.models.io import copy_tokenizer, read_manifest, save_model

    manifest = read_manifest(source, "quant_manifest.json")
    if lora:
        _link_tree(source, folder, skip=("quant_manifest.json", "attack_manifest.json"))
        model.save_pretrained(str(folder / "adapter"), safe_serialization=True)
        manifest = {**manifest, "lora_merge": "adapter"}
    else:
        folder.mkdir(parents=True)
        save_model(model, folder)
        copy_tokenizer(source, folder)
    write_json(folder / "quant_manifest.json", manifest)


def _is_quantized(source: Path) -> bool:
    from relapse.models.io import read_manifest

    return read_manifest(source, "quant_manifest.json").get("scheme", "none") != "none"


@register_attack("relearn", relearn_variants)
def relearn(job: AttackJob) -> None:
    """Fine-tune for k steps on forget / retain / holdout data (QLoRA on a quantized cell)."""
    import pandas as pd
    import torch

    from relapse.io import write_parquet
    from relapse.models.batching import batch_training_rows, training_rows
    from relapse.models.tokenizer import load_tokenizer
    from relapse.attacks.cells import load_cell
    from relapse.seeding import seed_everything
    from relapse.models.modules import make_trainable
    from relapse.models.training import TrainingLoop
    from relapse.unlearn.step import StepContext, accumulate_step

    cfg = {**RELEARN_DEFAULTS, **job.settings}
    source = Path(job.source_dir)
    params = "lora" if _is_quantized(source) else cfg["params"]
    steps = sorted(set(int(k) for k in cfg["steps"]))
    batch_size = int(cfg["batch_size"])
    micro = int(cfg["micro_batch_size"] or batch_size)
    tokenizer = load_tokenizer(source)
    method = relearn_method()
    log = []
    held = recovery(Path(job.data_dir))
    for data in cfg["data"]:
        seed_everything(int(cfg["seed"]) + job.seed, job.threads)
        # Token ids as unlearning trains on them: MUSE's packed windows verbatim,
        # texts + EOS, QA texts on their answers only.
        rows = training_rows(tokenizer, attack_sample(Path(job.data_dir), data,
                                                      int(cfg["samples"]), int(cfg["seed"])))
        # Plain Linear modules holding exactly the quantized values, frozen under a LoRA below.
        model = load_cell(source, device=job.device, adapter=False)
        model = make_trainable(model, params, job.lora)
        ctx = StepContext(model, "paper", is_lora=params == "lora", seed=job.seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=float(cfg["lr"]), weight_decay=0.0)
        generator = torch.Generator().manual_seed(int(cfg["seed"]) + job.seed)
        # No scheduler (constant lr). The non-finite guard is on, as in every training run: a
        # diverging relearning run fails instead of writing NaN checkpoints that would be scored
        # as a model that forgot everything.
        loop = TrainingLoop(model, trainable, opt, grad_clip=float(cfg["grad_clip"]))
        start = loop.start

        def save(step):
            folder = Path(job.out_dir) / variant_id(data, step)
            model.eval()
            _checkpoint(model, params == "lora", source, folder)
            model.train()
            write_variant_manifest(folder, columns("relearn", attack_data=data, attack_steps=step,
                                                   recovery=held),
                                   source, params=params, lr=float(cfg["lr"]),
                                   batch_size=batch_size, samples=len(rows),
                                   seconds=time.time() - start)

        def batches():
            order: list[int] = []
            for _ in range(steps[-1]):
                # Epochs over the subset, reshuffled each time: every text is seen equally often.
                while len(order) < batch_size:
                    order += torch.randperm(len(rows), generator=generator).tolist()
                idx, order = order[:batch_size], order[batch_size:]
                yield [{k: v.to(job.device) for k, v in batch_training_rows(
                            [rows[i] for i in idx[m:m + micro]], tokenizer.pad_token_id).items()}
                       for m in range(0, len(idx), micro)]

        def step(parts, loop):
            return accumulate_step(method, ctx, {}, parts, guard=loop.guard, step=loop.step)

        def after_step(parts, totals, grad_norm, data=data, save=save):
            log.append({"attack_data": data, "step": loop.step, "loss": totals["loss"],
                        "grad_norm": float(grad_norm), "seconds": time.time() - start})
            if loop.step in steps:
                save(loop.step)

        if steps[0] == 0:
            save(0)
        loop.run(batches(), step, after_step)
    write_parquet(Path(job.out_dir) / "relearn_log.parquet", pd.DataFrame(log),
                  {"settings": cfg, "params": params})
