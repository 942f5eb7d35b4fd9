"""Integer round-to-nearest quantization in torch: the scheme of the seed paper's theory.

Per output row, weights are cut into groups of `group_size` consecutive input columns (-1: the
whole row, i.e. per channel). Asymmetric: lo = min(w_min, 0), hi = max(w_max, 0),
scale = (hi − lo)/(2^b − 1), zero = clamp(round(−lo/scale), 0, 2^b − 1),
code = clamp(round(w/scale) + zero, 0, 2^b − 1). Symmetric: scale = max|w|/(2^(b−1) − 1),
code = clamp(round(w/scale), −2^(b−1), 2^(b−1) − 1). Dequantized w' = (code − zero)·scale.

The asymmetric range always holds 0, as in GPTQ's and llama.cpp's integer formats with a zero
point: 0 is then exactly representable (code = zero), and the zero point is a valid unsigned
code. With the range [w_min, w_max] alone, a group of all-positive weights got a negative zero
point, which no packed int format can store, and 0 fell off the grid.
"""

from __future__ import annotations

import torch

from relapse.quantize.groups import grouped

_EPS = 1e-8


def rtn_codes(weight: torch.Tensor, bits: int, group_size: int = -1, symmetric: bool = False):
    """Integer codes, scales and zero points, grouped as [rows, groups, group_size]."""
    w = grouped(weight.float(), group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (w.abs().amax(-1, keepdim=True) / qmax).clamp(min=_EPS)
        zero = torch.zeros_like(scale)
        codes = torch.clamp(torch.round(w / scale), -qmax - 1, qmax)
    else:
        levels = 2 ** bits - 1
        lo = w.amin(-1, keepdim=True).clamp(max=0)
        hi = w.amax(-1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / levels).clamp(min=_EPS)
        zero = torch.clamp(torch.round(-lo / scale), 0, levels)
        codes = torch.clamp(torch.round(w / scale) + zero, 0, levels)
    return codes, scale, zero


def rtn_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   shape: torch.Size) -> torch.Tensor:
    return ((codes - zero) * scale).reshape(shape)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int = -1,
                 symmetric: bool = False) -> torch.Tensor:
    """Quantize then dequantize: the weight the quantized model computes with."""
    codes, scale, zero = rtn_codes(weight, bits, group_size, symmetric)
    return rtn_dequantize(codes, scale, zero, weight.shape).to(weight.dtype)


def quantize_linear_layers(model, names: list[str], bits: int, group_size: int,
                           symmetric: bool) -> int:
    """RTN every named Linear weight of `model` in place; returns the number of weights."""
    count = 0
    with torch.no_grad():
        for name in names:
            weight = model.get_submodule(name).weight
            weight.copy_(rtn_quantize(weight, bits, group_size, symmetric))
            count += weight.numel()
    return count
