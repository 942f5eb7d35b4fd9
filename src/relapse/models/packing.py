"""Bit packing of unsigned integer codes (0 <= code < 2^bits, 1 <= bits <= 8) into uint8.

- 8 bits: one code a byte.
- 4 bits: two codes a byte, the first in the high nibble (bitsandbytes' order, so a bnb 4-bit
  tensor and ours read the same way).
- any other width: every 8 consecutive codes fill `bits` bytes, code i at bit offset bits·i of
  that little-endian run (3 bits: 8 codes in 3 bytes, nothing wasted).

The last run is padded with zero codes; `unpack_bits` takes the code count back.
"""

from __future__ import annotations


def packed_size(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits take."""
    _check_bits(bits)
    if bits == 8:
        return count
    if bits == 4:
        return (count + 1) // 2
    return (count + 7) // 8 * bits


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"codes of {bits} bits cannot be packed into bytes (1 to 8)")


def pack_bits(codes, bits: int):
    """uint8 [packed_size] from integer codes of any shape (flattened, row-major)."""
    import torch

    _check_bits(bits)
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise ValueError(f"codes outside [0, {2 ** bits - 1}] cannot be packed in {bits} bits")
    flat = flat.to(torch.uint8)
    if bits == 8:
        return flat.contiguous().clone()
    if bits == 4:
        flat = torch.nn.functional.pad(flat, (0, flat.numel() % 2))
        return ((flat[0::2] << 4) | flat[1::2]).contiguous()
    runs = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8)).reshape(-1, 8).to(torch.int64)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    word = (runs << shifts).sum(-1)                      # at most 56 bits: fits int64
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    return ((word[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1).contiguous()


def unpack_bits(packed, bits: int, count: int):
    """The first `count` codes of `packed`, as uint8 [count]."""
    import torch

    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.numel() != packed_size(count, bits):
        raise ValueError(f"{packed.numel()} packed bytes ({packed.dtype}) do not hold {count} "
                         f"codes of {bits} bits")
    if bits == 8:
        return packed[:count]
    if bits == 4:
        out = torch.empty(packed.numel() * 2, dtype=torch.uint8)
        out[0::2] = packed >> 4
        out[1::2] = packed & 0xF
        return out[:count]
    runs = packed.reshape(-1, bits).to(torch.int64)
    word = (runs << (torch.arange(bits, dtype=torch.int64) * 8)).sum(-1)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    codes = (word[:, None] >> shifts) & (2 ** bits - 1)
    return codes.to(torch.uint8).reshape(-1)[:count]


def unpack_float(packed, bits: int, count: int):
    """`unpack_bits` as float32 (exact: codes are small integers), written straight into the
    float tensor for 4 bits (a quarter less memory traffic than unpacking, then converting)."""
    import torch

    if bits != 4:
        return unpack_bits(packed, bits, count).float()
    if packed.dtype != torch.uint8 or packed.numel() != packed_size(count, 4):
        raise ValueError(f"{packed.numel()} packed bytes ({packed.dtype}) do not hold {count} "
                         "codes of 4 bits")
    out = torch.empty(packed.numel() * 2, dtype=torch.float32)
    pairs = out.view(-1, 2)
    pairs[:, 0].copy_(packed >> 4)
    pairs[:, 1].copy_(packed & 0xF)
    return out[:count]


def unpack_words(words, bits: int, count: int):
    """The first `count` codes along the last dimension of integer words (GPTQ's and AWQ's
    int32 `qweight`/`qzeros`), read as one little-endian bit stream per row: code i at bit
    bits·i (3 bits: a code may straddle two words). int16 [..., count]."""
    import sys

    import torch

    _check_bits(bits)
    if sys.byteorder != "little":
        raise RuntimeError("packed GPTQ/AWQ words are read as little-endian bytes")
    data = words.contiguous().view(torch.uint8)          # [..., bytes], little-endian
    lead = data.shape[:-1]
    data = data.reshape(-1, data.shape[-1])
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
        codes = (data[..., None] >> shifts) & (2 ** bits - 1)
    else:
        if data.shape[-1] % bits:
            raise ValueError(f"{data.shape[-1]} bytes a row do not hold whole runs of 8 codes "
                             f"of {bits} bits")
        runs = data.reshape(data.shape[0], -1, bits).to(torch.int64)
        word = (runs << (torch.arange(bits, dtype=torch.int64) * 8)).sum(-1)
        codes = (word[..., None] >> (torch.arange(8, dtype=torch.int64) * bits)) & (2 ** bits - 1)
    codes = codes.reshape(data.shape[0], -1)
    if codes.shape[-1] < count:
        raise ValueError(f"{codes.shape[-1]} codes a row, {count} asked for")
    return codes[:, :count].to(torch.int16).reshape(*lead, count)
