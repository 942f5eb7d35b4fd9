"""Magnitude pruning of the decoder Linear weights at sparsity s, for each s in a list.

`scope: row` (default) zeroes the ⌊s·in_features⌋ smallest-|w| weights of every output row
(per-row unstructured, Wanda's comparison group); `scope: matrix` the ⌊s·numel⌋ smallest of each
weight matrix. Ties are broken by a stable sort, so the result is deterministic. The attacked
cell's own weights are pruned (a quantized cell's grid values; zero lies on RTN's grid), and
its quant manifest is kept, so the evaluation runs it as it runs the cell."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from relapse.attacks.registry import AttackJob, columns, register_attack, write_variant_manifest

PRUNE_DEFAULTS = {"sparsity": [0.5], "scope": "row"}
SCOPES = ("row", "matrix")


def variant_id(sparsity: float) -> str:
    return f"s{sparsity:g}"


def prune_weight(weight, sparsity: float, scope: str = "row"):
    """`weight` with its smallest-magnitude entries zeroed (a new tensor)."""
    import torch

    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity {sparsity} is not in [0, 1]")
    if scope not in SCOPES:
        raise ValueError(f"prune scope {scope!r} is not one of {', '.join(SCOPES)}")
    flat = weight if scope == "row" else weight.reshape(1, -1)
    k = math.floor(sparsity * flat.shape[1])
    out = flat.clone()
    if k:
        order = torch.sort(flat.abs(), dim=1, stable=True).indices[:, :k]
        out.scatter_(1, order, 0.0)
    return out.reshape(weight.shape)


def prune_model(model, sparsity: float, scope: str = "row") -> dict[str, float]:
    """Prune every decoder Linear weight in place; return each module's achieved sparsity."""
    import torch

    from relapse.models.modules import decoder_linear_names

    achieved = {}
    with torch.no_grad():
        for name in decoder_linear_names(model):
            weight = model.get_submodule(name).weight
            weight.copy_(prune_weight(weight, sparsity, scope))
            achieved[name] = float((weight == 0).double().mean())
    return achieved


def prune_variants(settings: dict) -> dict[str, dict[str, Any]]:
    cfg = {**PRUNE_DEFAULTS, **settings}
    return {variant_id(s): columns("prune", sparsity=float(s), attack_data="none")
            for s in cfg["sparsity"]}


@register_attack("prune", prune_variants)
def prune(job: AttackJob) -> None:
    """Magnitude pruning of decoder Linear weights at each sparsity (per row by default)."""
    import shutil

    from relapse.attacks.cells import load_cell
    from relapse.models.io import TOKENIZER_FILES, save_model

    cfg = {**PRUNE_DEFAULTS, **job.settings}
    for vid, cols in prune_variants(cfg).items():
        model = load_cell(job.source_dir, device=job.device, adapter=False)
        achieved = prune_model(model, cols["sparsity"], cfg["scope"])
        folder = Path(job.out_dir) / vid
        folder.mkdir(parents=True)
        save_model(model, folder)
        for name in TOKENIZER_FILES + ("quant_manifest.json",):
            if (Path(job.source_dir) / name).exists():
                shutil.copy2(Path(job.source_dir) / name, folder / name)
        mean = sum(achieved.values()) / max(len(achieved), 1)
        write_variant_manifest(folder, cols, job.source_dir, scope=cfg["scope"],
                               achieved_sparsity=mean)
