"""The grid each quantized weight sits on, as the survival diagnostics read it from a
quantize-stage folder's codes (relapse.models.codes; the quantizer records the same values as
`QuantJob.steps`).

Uniform schemes (rtn, LLM.int8, gptq, awq, gguf): the levels of a weight are its group's step
times integers: a step [out, groups] plus group_index [in] (the group of each input column),
which covers per-channel, per-group and GPTQ's act-order layouts. rtn's step is its scale,
LLM.int8's the row absmax / 127, gguf's the |d| of each block, gptq's and awq's the scales of
GPTQModel's checkpoint (gptq's group_index its g_idx, which act-order permutes).

Codebook schemes (bnb fp4 / nf4): the levels are a fixed table on [-1, 1] times the block's
absmax, and their spacing is not uniform (nf4's gaps run from 0.08 to 0.30 of the absmax, fp4's
from 0.005 to 0.33): the block absmax (same layout) and the library's own codebook. A weight's
code is then its level in the codebook, and its step the local spacing of the codebook around
that level, not a mean over the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any



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


def _per_weight(scale, group_index, levels=None) -> Grid:
    return Grid(scale[:, group_index.long()], levels)


def grid_of_codes(entry: dict, tensors: dict) -> tuple[Any, Any, Any]:
    """(step or block absmax [out, groups], group_index [in], codebook or None) of one weight
    stored as codes (relapse.models.codes): the values the quantizer recorded as its grid."""
    import torch

    from relapse.quantize.groups import uniform_group_index

    rows, cols = entry["shape"]
    kind = entry["kind"]
    if kind == "rtn":
        return tensors["scale"], uniform_group_index(cols, entry["group"]), None
    if kind == "int8_rowwise":
        return ((tensors["absmax"].float() / 127.0)[:, None], torch.zeros(cols, dtype=torch.long),
                None)
    if kind == "gguf":
        from relapse.quantize.gguf import BLOCK, block_steps

        steps = block_steps(tensors["codes"].numpy().reshape(rows, -1), entry["type"])
        return torch.from_numpy(steps), uniform_group_index(cols, BLOCK), None
    if kind == "codebook4":
        # as relapse.quantize.bnb.bnb_4bit lays out the block absmax
        block, absmax = entry["blocksize"], tensors["absmax"]
        if cols % block == 0:
            return (absmax.reshape(rows, cols // block), uniform_group_index(cols, block),
                    tensors["codebook"])
        per_weight = absmax.repeat_interleave(block)[: rows * cols].reshape(rows, cols)
        return per_weight, torch.arange(cols), tensors["codebook"]
    if kind == "gptq":
        return tensors["scales"].float().T, tensors["g_idx"].long(), None
    if kind == "awq":
        groups = tensors["scales"].shape[0]
        return tensors["scales"].float().T, uniform_group_index(cols, cols // groups), None
    raise ValueError(f"no grid for code kind {kind!r}")


def read_grids(model_dir: str | Path) -> dict[str, Grid]:
    """module -> Grid (per weight), from a quantize-stage folder's codes; {} when it has none
    (a full-precision cell). A folder from before codes is refused ("re-quantize")."""
    from relapse.models.codes import CodeFiles, check_not_legacy, is_codes_folder, read_layout

    model_dir = Path(model_dir)
    check_not_legacy(model_dir)
    if not is_codes_folder(model_dir):
        return {}
    layout = read_layout(model_dir)
    grids = {}
    with CodeFiles(model_dir, layout) as files:
        handle = files.handle()
        for name, entry in layout["tensors"].items():
            scale, group_index, codebook = grid_of_codes(entry, files.entry_tensors(name, entry))
            levels = None if codebook is None else distinct_levels(codebook)
            grids[name.removesuffix(".weight")] = _per_weight(scale, group_index, levels)
        if layout["grids"]:
            codebook = handle.get_tensor("grid_codebook") \
                if "grid_codebook" in handle.keys() else None
            levels = None if codebook is None else distinct_levels(codebook)
            for name, (step_key, index_key) in layout["grids"].items():
                grids[name.removesuffix(".weight")] = _per_weight(
                    handle.get_tensor(step_key), handle.get_tensor(index_key), levels)
    return grids
