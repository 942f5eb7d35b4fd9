"""llama.cpp's legacy block quantization formats, through the `gguf` package (numpy).

Every type quantizes rows in blocks of 32 consecutive input columns, each block storing an fp16
scale d (and, for the `_1` types, an fp16 minimum m) ahead of its codes:

    q8_0: w = d·q, q in [-128, 127]      q5_0: w = d·(q − 16), q in [0, 31]
    q4_0: w = d·(q − 8), q in [0, 15]    q4_1 / q5_1: w = d·q + m, q in [0, 15] / [0, 31]

The quantization step of a block is |d|. The K-quants (q4_K, …) the package can only
dequantize, so they are not offered."""

from __future__ import annotations

BLOCK = 32
# type -> bits; the first type listed for a bit width is its default.
GGUF_TYPES = {"q8_0": 8, "q5_0": 5, "q5_1": 5, "q4_0": 4, "q4_1": 4}
FLOAT_TYPES = ("f32", "f16")


def default_type(bits: int) -> str:
    for name, b in GGUF_TYPES.items():
        if b == bits:
            return name
    raise ValueError(f"gguf: no type has {bits} bits; types: {describe_types()}")


def describe_types() -> str:
    return ", ".join(f"{t} ({b} bits)" for t, b in GGUF_TYPES.items())


def ggml_type(name: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name.upper()]


def quantize_array(weight, type_name: str):
    """The packed bytes of a float32 numpy array [rows, cols] (cols a multiple of 32)."""
    import numpy as np
    from gguf.quants import quantize

    if weight.shape[-1] % BLOCK:
        raise ValueError(f"gguf {type_name}: {weight.shape[-1]} columns are not a multiple of "
                         f"the block size {BLOCK}")
    return quantize(np.ascontiguousarray(weight, dtype=np.float32), ggml_type(type_name))


def block_steps(packed, type_name: str):
    """|d| of every block of packed rows: float32 [rows, cols / 32]."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[ggml_type(type_name)]
    assert block == BLOCK
    rows = packed.reshape(packed.shape[0], -1, size)
    d = np.ascontiguousarray(rows[..., :2]).view(np.float16)[..., 0]
    return np.abs(d.astype(np.float32))


def fake_quantize(weight, type_name: str, with_codes: bool = False):
    """(dequantized weight, step [out, in / 32]) of a torch weight [out, in], in its dtype;
    `with_codes` adds the block bytes as relapse.models.codes.Codes."""
    import torch
    from gguf.quants import dequantize

    array = weight.detach().float().cpu().numpy()
    packed = quantize_array(array, type_name)
    values = dequantize(packed, ggml_type(type_name)).reshape(array.shape)
    out = (torch.from_numpy(values).to(dtype=weight.dtype, device=weight.device),
           torch.from_numpy(block_steps(packed, type_name)))
    if not with_codes:
        return out
    from relapse.models.codes import Codes

    codes = Codes("gguf", {"shape": list(array.shape), "type": type_name},
                  {"codes": torch.from_numpy(packed.copy())})
    return (*out, codes)
