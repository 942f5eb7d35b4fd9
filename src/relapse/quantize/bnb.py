"""bitsandbytes quantization of one weight matrix, on CPU or CUDA, returning the dequantized
weight and its grid in the registry's ([out, groups], group_index[in]) form.

LLM.int8 is a uniform grid: its step. The 4-bit codebooks (fp4, nf4: 16 values on [-1, 1] times
the block's absmax) are not uniform: their grid is the block absmax and the codebook
(`codebook_4bit`), from which the diagnostics take each weight's code and local spacing
(relapse.quantize.grid)."""

from __future__ import annotations

import torch

from relapse.models.codes import Codes
from relapse.quantize.groups import uniform_group_index


def _require_bnb():
    try:
        import bitsandbytes  # noqa: F401
        import bitsandbytes.functional as F
    except ImportError as err:  # pragma: no cover - installed with the project
        raise RuntimeError("scheme bnb needs the bitsandbytes package "
                           "(pip install -c constraints.txt bitsandbytes)") from err
    return F


def codebook_4bit(quant_type: str) -> torch.Tensor:
    """bitsandbytes' own table of the 16 values a 4-bit code dequantizes to (times absmax)."""
    return _require_bnb().get_4bit_type(quant_type, device="cpu").float()


def bnb_4bit(weight: torch.Tensor, quant_type: str = "fp4", blocksize: int = 64,
             double_quant: bool = False):
    """(dequantized weight, block absmax [out, groups], group_index [in], codes): the codes are
    bitsandbytes' own packed bytes with the block absmax and the codebook."""
    F = _require_bnb()
    w = weight.detach().float().contiguous()
    rows, cols = w.shape
    # bitsandbytes blocks the row-major flattened weight. Its CPU dequantize kernel (0.50.2)
    # gets blocks that straddle rows wrong (in_features % blocksize != 0: errors up to the
    # absmax), so hand it the same blocks as rows of a [blocks, blocksize] matrix; zero padding
    # of the last block changes no absmax.
    flat = w.reshape(-1)
    pad = (-flat.numel()) % blocksize
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, blocksize)
    packed, state = F.quantize_4bit(blocks, blocksize=blocksize, quant_type=quant_type,
                                    compress_statistics=double_quant)
    deq_blocks = F.dequantize_4bit(packed, state).reshape(blocks.shape).float()
    dequantized = deq_blocks.reshape(-1)[: flat.numel()].reshape(w.shape)
    # The element of largest magnitude in a block maps to the codebook's ±1, so the block's
    # (double-quant-dequantized) absmax is exactly the largest dequantized magnitude.
    absmax_per_block = deq_blocks.abs().amax(-1)
    if cols % blocksize == 0:
        absmax = absmax_per_block.reshape(rows, cols // blocksize)
        group_index = uniform_group_index(cols, blocksize)
    else:
        # Blocks straddle rows: store one absmax per weight.
        absmax = absmax_per_block.repeat_interleave(blocksize)[: rows * cols].reshape(rows, cols)
        group_index = torch.arange(cols)
    codes = Codes("codebook4", {"shape": [rows, cols], "blocksize": blocksize,
                                "quant_type": quant_type},
                  {"codes": packed.detach().cpu().view(torch.uint8).reshape(-1).contiguous(),
                   "absmax": absmax_per_block.detach().float().cpu().contiguous(),
                   "codebook": codebook_4bit(quant_type).contiguous()})
    return dequantized.to(weight.dtype), absmax, group_index, codes


def bnb_int8(weight: torch.Tensor):
    """LLM.int8's weight quantization: per output row, codes = round(127 · w / absmax)."""
    F = _require_bnb()
    w = weight.detach().float().contiguous()
    codes, row_absmax, _ = F.int8_vectorwise_quant(w)
    dequantized = codes.float() * (row_absmax.float()[:, None] / 127.0)
    step = (row_absmax.float() / 127.0)[:, None]
    stored = Codes("int8_rowwise", {"shape": list(w.shape)},
                   {"codes": codes.detach().cpu().to(torch.int8).contiguous(),
                    "absmax": row_absmax.detach().float().cpu().contiguous()})
    return (dequantized.to(weight.dtype), step, torch.zeros(w.shape[1], dtype=torch.long),
            stored)


def swap_in_int8_linear(model, names: list[str], threshold: float) -> None:
    """Replace the named Linear modules by bitsandbytes' Linear8bitLt (LLM.int8 matmul with
    outlier decomposition), built from weights already on the int8 grid (re-quantizing them
    gives back the same codes)."""
    import bitsandbytes as bnb

    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        new = bnb.nn.Linear8bitLt(old.in_features, old.out_features, bias=old.bias is not None,
                                  has_fp16_weights=False, threshold=threshold)
        new.weight = bnb.nn.Int8Params(old.weight.data.clone(), requires_grad=False,
                                       has_fp16_weights=False)
        if old.bias is not None:
            new.bias = torch.nn.Parameter(old.bias.data.clone(), requires_grad=False)
        setattr(parent, child, new.to(old.weight.device))
