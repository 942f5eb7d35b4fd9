"""The grid each quantized weight sits on, as the quantize stage records it
(quant_steps.safetensors) and the survival diagnostics read it back.

Uniform schemes (rtn, LLM.int8, gptq, awq, gguf): the levels of a weight are its group's step
times integers. Stored as `step/{module}` [out, groups] plus `group_index/{module}` [in] (the
group of each input column), which covers per-channel, per-group and GPTQ's act-order layouts.

Codebook schemes (bnb fp4 / nf4): the levels are a fixed table on [-1, 1] times the block's
absmax, and their spacing is not uniform (nf4's gaps run from 0.08 to 0.30 of the absmax, fp4's
from 0.005 to 0.33). Stored as `absmax/{module}` (same layout) plus one `codebook` (the
library's own table). A weight's code is then its level in the codebook, and its step the
local spacing of the codebook around that level, not a mean over the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

STEPS_FILE = "quant_steps.safetensors"


@dataclass
class Grid:
    """One module's grid, per weight [out, in]: `scale` is the step (uniform) or the block
    absmax (codebook); `levels` the codebook's distinct values, ascending, or None."""
    scale: Any
    levels: Any = None

    @property
    def is_codebook(self) -> bool:
        return self.levels is not None

    def level_index(self, q):
        """The codebook level of every quantized weight q (on this grid): the nearest level of
        q / absmax. fp4's two zero codes (+0, −0) are one level: they dequantize alike."""
        import torch

        x = torch.where(self.scale > 0, q.float() / self.scale.clamp(min=1e-30),
                        torch.zeros_like(self.scale))
        mids = (self.levels[1:] + self.levels[:-1]) / 2
        return torch.bucketize(x, mids)

    def local_step(self, q):
        """Per weight: the distance between levels around the level of q. Uniform: the step.
        Codebook: the width of q's bin, (next level − previous level)/2, which is the spacing
        on a uniform grid; at either end of the table, the one gap there. Times the absmax."""
        if not self.is_codebook:
            return self.scale
        import torch

        gaps = self.levels[1:] - self.levels[:-1]
        width = torch.cat([gaps[:1], (gaps[1:] + gaps[:-1]) / 2, gaps[-1:]])
        return width[self.level_index(q)] * self.scale


def distinct_levels(codebook):
    """The codebook's distinct values, ascending (fp4's table holds 0 twice, as +0 and −0)."""
    import torch

    return torch.unique(codebook.float())


def save_grids(steps: dict, codebook, path: str | Path) -> None:
    """steps: module -> (step or absmax [out, groups], group_index [in]); codebook: the table
    of a codebook scheme (then the first member is the block absmax), None for a uniform one."""
    from safetensors.torch import save_file

    key = "step" if codebook is None else "absmax"
    tensors = {}
    for module, (scale, group_index) in steps.items():
        tensors[f"{key}/{module}"] = scale
        tensors[f"group_index/{module}"] = group_index
    if codebook is not None:
        tensors["codebook"] = codebook.detach().float().cpu().contiguous()
    save_file(tensors, str(path))


def read_grids(model_dir: str | Path) -> dict[str, Grid]:
    """module -> Grid (per weight), from a quantize-stage folder; {} when it has none."""
    import json

    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    file = model_dir / STEPS_FILE
    if not file.exists():
        return {}
    raw = load_file(str(file))
    levels = distinct_levels(raw["codebook"]) if "codebook" in raw else None
    if levels is None:
        manifest_file = model_dir / "quant_manifest.json"
        manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
        if manifest.get("settings", {}).get("format") in ("fp4", "nf4"):
            # An fp4/nf4 folder from before codebooks were recorded: its `step` is the mean
            # spacing, which the diagnostics no longer use.
            raise ValueError(f"{model_dir}: quantized to {manifest['settings']['format']} "
                             f"without its codebook in {STEPS_FILE}; quantize it again")
    key = "step/" if levels is None else "absmax/"
    grids = {}
    for name, scale in raw.items():
        if name.startswith(key):
            module = name[len(key):]
            grids[module] = Grid(scale[:, raw[f"group_index/{module}"].long()], levels)
    return grids
