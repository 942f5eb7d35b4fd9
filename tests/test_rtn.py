import pytest
import torch

from relapse.quantize.rtn import rtn_codes, rtn_quantize


def _step(w, bits, group_size, symmetric):
    """Every weight's step, from the group's own min/max (written out here, not rtn's code)."""
    rows, cols = w.shape
    g = cols if group_size == -1 else group_size
    grouped = w.reshape(rows, cols // g, g)
    if symmetric:
        step = grouped.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
    else:
        lo = torch.minimum(grouped.amin(-1, keepdim=True), torch.zeros(()))
        hi = torch.maximum(grouped.amax(-1, keepdim=True), torch.zeros(()))
        step = (hi - lo) / (2 ** bits - 1)
    return step.expand_as(grouped).reshape(rows, cols)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [-1, 16, 64])
@pytest.mark.parametrize("symmetric", [False, True])
def test_error_within_half_a_step_and_idempotent(bits, group_size, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(32, 128) * 0.05
    q = rtn_quantize(w, bits, group_size, symmetric)
    step = _step(w, bits, group_size, symmetric)
    # symmetric clamps the most negative level away only at -qmax-1, so the bound holds too
    assert ((q - w).abs() <= step / 2 + 1e-7).all()
    assert torch.allclose(rtn_quantize(q, bits, group_size, symmetric), q, atol=1e-7, rtol=0)


def test_group_size_is_honoured():
    w = torch.randn(4, 64)
    for group_size in (8, 32):
        q = rtn_quantize(w, 2, group_size)
        for g in range(64 // group_size):
            block = q[:, g * group_size:(g + 1) * group_size]
            assert all(len(set(row.tolist())) <= 4 for row in block)
    with pytest.raises(ValueError):
        rtn_quantize(torch.randn(4, 60), 4, 64 if False else 7)


def test_asymmetric_by_hand():
    w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    codes, scale, zero = rtn_codes(w, 2, -1, symmetric=False)
    # scale = (2 - (-1)) / 3 = 1, zero = round(1) = 1
    assert scale.item() == pytest.approx(1.0) and zero.item() == 1
    assert codes.flatten().tolist() == [0, 1, 1, 3]   # round(0.5) = 0 (half to even), +1
    assert rtn_quantize(w, 2, -1).flatten().tolist() == [-1.0, 0.0, 0.0, 2.0]


def test_asymmetric_range_holds_zero_and_the_zero_point_is_a_code():
    """All-positive and all-negative groups: 0 stays on the grid and the zero point is a valid
    unsigned code, as in GPTQ's and llama.cpp's int formats (the old [min, max] range gave the
    positive group zero = -15 and mapped 0 to 1.0)."""
    w = torch.tensor([[1.0, 1.5, 2.0, 0.0], [-2.0, -1.0, -0.5, 0.0], [1.0, 1.5, 2.0, 3.0]])
    codes, scale, zero = rtn_codes(w, 4, 4, symmetric=False)
    assert ((zero >= 0) & (zero <= 15)).all()
    assert zero.flatten().tolist() == [0, 15, 0]
    # the range is [0, 2], [-2, 0] and [0, 3]: steps 2/15, 2/15, 3/15
    assert scale.flatten().tolist() == pytest.approx([2 / 15, 2 / 15, 3 / 15])
    q = rtn_quantize(w, 4, 4, symmetric=False)
    assert q[0, 3].item() == 0.0 and q[1, 3].item() == 0.0       # 0 maps exactly to 0
    assert q[0, 2].item() == pytest.approx(2.0) and q[1, 0].item() == pytest.approx(-2.0)
    # 0 is a level of every group, whatever its sign pattern: code = zero dequantizes to 0
    torch.manual_seed(0)
    shifted = torch.randn(8, 64) * 0.05 + torch.linspace(-0.3, 0.3, 8)[:, None]
    _, scale, zero = rtn_codes(shifted, 4, 16, symmetric=False)
    assert ((zero >= 0) & (zero <= 15)).all()
    with_zero = torch.cat([shifted, torch.zeros(8, 16)], 1)
    assert (rtn_quantize(with_zero, 4, 16)[:, 64:] == 0).all()


def test_symmetric_by_hand():
    w = torch.tensor([[-1.0, 0.2, 0.5, 3.0]])
    codes, scale, zero = rtn_codes(w, 3, -1, symmetric=True)
    # qmax = 3, scale = 3 / 3 = 1; codes = round(w) clamped to [-4, 3]
    assert scale.item() == pytest.approx(1.0) and zero.item() == 0
    assert codes.flatten().tolist() == [-1, 0, 0, 3]


def test_constant_group_is_exact():
    w = torch.full((2, 8), 0.3)
    assert torch.allclose(rtn_quantize(w, 4, -1), w, atol=1e-7)
