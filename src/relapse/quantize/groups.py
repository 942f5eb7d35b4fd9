"""Group sizes of the uniform schemes, in one place: a group is `group_size` consecutive input
columns of a weight; -1 (or 0, or any size at least the row) is the whole row, i.e. per channel.

Which sizes a scheme accepts stays with the scheme (`Quantizer.validate`: rtn any positive size,
gptq and awq the sizes of their kernels), and GPTQModel's own shape check stays in
gptqmodel_backend.py: GPTQModel packs `in_features // group_size` groups, so a size larger
than the row is an error there, where the torch RTN here takes it as one group per row.
"""

from __future__ import annotations


def group_width(in_features: int, group_size: int) -> int:
    """The number of columns in a group: the whole row for -1, 0 or a size >= the row."""
    return in_features if group_size < 1 or group_size >= in_features else group_size


def uniform_group_index(in_features: int, group_size: int):
    """group_index [in] (the group of each input column) for consecutive groups."""
    import torch

    return torch.arange(in_features) // group_width(in_features, group_size)


def grouped(weight, group_size: int):
    """`weight` [rows, cols] viewed as [rows, groups, group width]; a ragged last group is an
    error (the grid of a group is its own scale, so every group is whole)."""
    rows, cols = weight.shape
    g = group_width(cols, group_size)
    if cols % g:
        raise ValueError(f"group_size {g} does not divide the input dimension {cols}")
    return weight.reshape(rows, cols // g, g)
