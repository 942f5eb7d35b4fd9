"""Survival diagnostics (DESIGN §8): the projection of the quantized update onto the
full-precision one, codes and steps on uniform and codebook grids, and the per-module table of
an unlearned model."""

import copy

import numpy as np
import pytest
import torch

from relapse.quantize.diagnostics import _projection_sums, _ratios, weight_diagnostics
from relapse.quantize.grid import Grid
from relapse.quantize.rtn import rtn_codes, rtn_quantize

MODULES = ("model.layers.0.mlp.up_proj", "model.layers.1.self_attn.o_proj")
# NF4 as published (Dettmers et al. 2023, QLoRA, appendix E), to 4 decimals: written out here,
# not read from bitsandbytes.
NF4 = np.array([-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
                0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0])


def _rtn_step(w, bits, group_size):
    _, scale, _ = rtn_codes(w, bits, group_size)
    rows, cols = w.shape
    return scale.expand(rows, cols // group_size, group_size).reshape(rows, cols)


@pytest.fixture(scope="module")
def forget_texts():
    from relapse.data.prepare import build_splits

    return build_splits({"people": 20, "seed": 0})[0]["forget"].text.tolist()[:3]


def _hooked_inputs(model, tok, texts, max_tokens):
    """Each module's inputs, caught by forward pre-hooks (not the diagnostics' forward hooks)."""
    caught = {n: [] for n in MODULES}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: caught[n].append(args[0][0].double().numpy()))
        for n in MODULES]
    with torch.no_grad():
        for text in texts:
            model(tok(text, return_tensors="pt", truncation=True,
                      max_length=max_tokens).input_ids)
    for h in handles:
        h.remove()
    return {n: np.concatenate(x) for n, x in caught.items()}


def test_projection_sums_match_numpy_on_the_same_activations(tiny_lm, forget_texts):
    _, model, tok = tiny_lm
    gen = torch.Generator().manual_seed(0)
    shapes = {n: model.get_submodule(n).weight.shape for n in MODULES}
    dw = {n: 0.01 * torch.randn(s, generator=gen) for n, s in shapes.items()}
    dq = {n: dw[n] + 0.01 * torch.randn(s, generator=gen) for n, s in shapes.items()}
    sums, tokens = _projection_sums(model, dw, dq, forget_texts, tok, 16)
    x = _hooked_inputs(model, tok, forget_texts, 16)
    assert tokens == 3 * 16 == len(x[MODULES[0]])          # the texts are longer than 16 tokens
    for n in MODULES:
        w_out, q_out = x[n] @ dw[n].double().numpy().T, x[n] @ dq[n].double().numpy().T
        expected = [(q_out * w_out).sum(), (q_out ** 2).sum(), (w_out ** 2).sum()]
        assert sums[n] == pytest.approx(expected, rel=1e-5)
        r = _ratios(*sums[n])
        cosine = (q_out * w_out).sum() / np.linalg.norm(q_out) / np.linalg.norm(w_out)
        assert r["cosine"] == pytest.approx(cosine, rel=1e-5)
        assert r["update_survival"] == pytest.approx(r["cosine"] * r["norm_ratio"], rel=1e-9)


def test_survival_is_one_for_an_identity_and_zero_inside_one_bin(tiny_lm, forget_texts):
    _, model, tok = tiny_lm
    name = MODULES[0]
    torch.manual_seed(0)
    # identity quantization: ΔQ = ΔW
    dw = {name: 0.01 * torch.randn(model.get_submodule(name).weight.shape)}
    r = _ratios(*_projection_sums(model, dw, dw, forget_texts, tok, 16)[0][name])
    assert r["update_survival"] == pytest.approx(1.0, abs=1e-12) and r["norm_ratio"] == 1.0
    # a target on its grid and an update under half a step, with every group's min and max
    # kept: rounding gives the target's weights back, and the survival is 0
    w_t = rtn_quantize(model.get_submodule(name).weight.detach(), 4, 8)
    step = _rtn_step(w_t, 4, 8)
    grouped = w_t.reshape(64, 4, 8)
    extreme = ((grouped == grouped.amax(-1, keepdim=True))
               | (grouped == grouped.amin(-1, keepdim=True))).reshape(64, 32)
    w_u = torch.where(extreme, w_t, w_t + 0.3 * step * torch.sign(torch.randn(64, 32)))
    q_t, q_u = rtn_quantize(w_t, 4, 8), rtn_quantize(w_u, 4, 8)
    assert torch.equal(q_t, q_u)
    sums, _ = _projection_sums(model, {name: w_u - w_t}, {name: q_u - q_t}, forget_texts, tok, 16)
    r = _ratios(*sums[name])
    assert r["update_survival"] == 0.0 and r["norm_ratio"] == 0.0
    d = weight_diagnostics(w_t, w_u, q_t, q_u, Grid(step), Grid(step))
    assert d["same_code_fraction"] == 1.0
    assert d["delta_over_step"] == pytest.approx(0.3 * (~extreme).float().mean().item(), rel=1e-5)


def test_same_code_survives_a_slightly_rescaled_uniform_grid():
    """Moving one weight of a group past the group's max rescales every level of the group by a
    hair; the other weights still sit on their old levels, which is what same_code counts."""
    torch.manual_seed(0)
    w_t = rtn_quantize(torch.randn(1, 16), 4, 16)       # on its own grid
    w_u = w_t.clone()
    w_u[0, w_t.argmax()] += 1e-3                         # the group's max moves a little
    q_t, q_u = rtn_quantize(w_t, 4, 16), rtn_quantize(w_u, 4, 16)
    assert (q_t != q_u).sum() >= 8                        # most levels moved a little
    grid = Grid(_rtn_step(w_t, 4, 16))
    d = weight_diagnostics(w_t, w_u, q_t, q_u, grid, grid)
    assert d["same_code_fraction"] == 1.0
    assert d["changed_fraction"] == 1 / 16


# --- codebook grids (bnb fp4 / nf4) -------------------------------------------------------------


def _bnb_grid(weight, quant_type):
    from relapse.quantize.bnb import bnb_4bit, codebook_4bit
    from relapse.quantize.grid import distinct_levels

    q, absmax, group_index, _ = bnb_4bit(weight, quant_type, 64)
    return q, Grid(absmax[:, group_index], distinct_levels(codebook_4bit(quant_type)))


@pytest.mark.parametrize("quant_type", ["fp4", "nf4"])
def test_codebook_levels_are_bitsandbytes_own_codes(quant_type):
    """The level read back from a dequantized weight is the value of the 4-bit code that
    bitsandbytes packed for it (fp4's +0 and −0 codes are one level)."""
    import bitsandbytes.functional as F

    torch.manual_seed(1)
    w = torch.randn(8, 64) * torch.rand(8, 1)
    q, grid = _bnb_grid(w, quant_type)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    nibbles = packed.view(torch.uint8).reshape(-1)
    codes = torch.stack([nibbles >> 4, nibbles & 15], -1).reshape(8, 64).long()
    value = state.code.float()[codes]
    assert torch.equal(grid.levels[grid.level_index(q)], value)
    assert len(grid.levels) == (15 if quant_type == "fp4" else 16)


def test_nf4_codes_and_local_steps_by_hand():
    """One block of 64 weights on NF4's levels, absmax 2: an update of 0.4 of a level's gap
    keeps the code, 0.6 changes it, and the block's absmax growing by 10 % rescales every
    level without changing any code; |ΔW| is measured in the local gap of each level."""
    absmax = 2.0
    k = torch.arange(64) % 16
    w_t = torch.tensor(NF4, dtype=torch.float32)[k].reshape(1, 64) * absmax
    w_t[0, 15] = absmax                                          # the block's absmax
    q_t, grid_t = _bnb_grid(w_t, "nf4")
    assert torch.allclose(q_t, w_t, atol=2e-4 * absmax)         # on the grid (4-decimal table)
    # an update toward the next level up by a fraction of the gap (down from the top level)
    up = np.append(NF4[1:] - NF4[:-1], NF4[-1] - NF4[-2])
    direction = np.where(np.arange(16) == 15, -1.0, 1.0)
    fraction = np.where(np.arange(64) < 32, 0.4, 0.6)
    fraction[15] = 0.0                                          # keep the absmax
    move = (fraction * direction[k.numpy()] * up[k.numpy()] * absmax).astype(np.float32)
    w_u = w_t + torch.from_numpy(move).reshape(1, 64)
    q_u, grid_u = _bnb_grid(w_u, "nf4")
    # expected: nearest NF4 level of each weight over the absmax, with numpy
    level = lambda w: np.abs(w.numpy().reshape(-1, 1) / absmax - NF4).argmin(1)   # noqa: E731
    same = level(w_u) == level(w_t)
    assert same[:32].all() and not same[32:].any()
    width = np.concatenate([[NF4[1] - NF4[0]], (NF4[2:] - NF4[:-2]) / 2, [NF4[-1] - NF4[-2]]])
    expected_ratio = np.mean(np.abs(move) / (width[level(w_t)] * absmax))
    d = weight_diagnostics(w_t, w_u, q_t, q_u, grid_t, grid_u)
    assert d["same_code_fraction"] == pytest.approx(same.mean())
    assert d["delta_over_step"] == pytest.approx(expected_ratio, rel=2e-3)
    # the block's absmax grows by 10 %: every dequantized value moves, no code does
    w_big = w_t.clone()
    w_big[0, 15] = 1.1 * absmax
    q_big, grid_big = _bnb_grid(w_big, "nf4")
    assert (q_big != q_t).sum() > 50
    assert weight_diagnostics(w_t, w_big, q_t, q_big, grid_t, grid_big)["same_code_fraction"] == 1


# --- the table ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forget_data(tmp_path_factory):
    from relapse.data.prepare import build_splits

    data = tmp_path_factory.mktemp("data")
    build_splits({"people": 20, "seed": 0})[0]["forget"].to_parquet(data / "forget.parquet")
    return data


def test_survival_diagnostics_table(tmp_path, tiny_lm, forget_data, monkeypatch):
    import gc
    import weakref

    import pandas as pd

    import relapse.quantize.diagnostics as diagnostics

    from relapse.io import read_parquet_metadata
    from relapse.models.io import save_model
    from relapse.quantize.diagnostics import survival_diagnostics
    from relapse.quantize.stage import quantize_model

    folder, model, tok = tiny_lm
    data = forget_data
    # an "unlearned" model: layer 0's up_proj moved by ~3 RTN-4 steps, the rest untouched
    unlearned = copy.deepcopy(model)
    w = unlearned.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w += 3 * _rtn_step(w, 4, 16) * torch.randn_like(w)
    save_model(unlearned, tmp_path / "u", tokenizer_dir=folder)
    cells = []
    for scheme, bits in [("rtn", 4), ("bnb", 8), ("bnb", 4)]:
        q = f"{scheme}-w{bits}"
        settings = {"group_size": 16} if scheme == "rtn" else {}
        quantize_model(folder, tmp_path / f"t-{q}", scheme, bits, settings)
        quantize_model(tmp_path / "u", tmp_path / f"u-{q}", scheme, bits, settings)
        cells.append((q, tmp_path / f"t-{q}", tmp_path / f"u-{q}"))
    # One cell's quantized weights in memory at a time: holding every cell's at once took
    # 12 GB on SmolLM2 x 10 quants and was OOM-killed.
    class Weights(dict):
        pass

    live, most = [], []
    load = diagnostics._linear_weights

    def tracked(*args, **kwargs):
        gc.collect()
        out = Weights(load(*args, **kwargs))
        live.append(weakref.ref(out))
        most.append(sum(ref() is not None for ref in live))
        return out

    monkeypatch.setattr(diagnostics, "_linear_weights", tracked)
    keys = {"bench": "b", "method": "ga", "hp": "lr=1", "seed": 0}
    frame = survival_diagnostics(folder, tmp_path / "u", cells, data, keys, {"samples": 4},
                                 tmp_path / "diagnostics.parquet")
    assert len(most) == 2 * len(cells) and max(most) <= 2
    assert frame.equals(pd.read_parquet(tmp_path / "diagnostics.parquet"))
    assert read_parquet_metadata(tmp_path / "diagnostics.parquet")["keys"]["method"] == "ga"
    assert set(frame.quant) == {"rtn-w4", "bnb-w8", "bnb-w4"}
    assert len(frame) == 3 * 2 * 7                       # 3 quants x 2 layers x 7 Linear
    assert (frame.dtype == "float32").all() and (frame.note == "").all()
    assert set(frame.groupby("quant").grid.first().items()) == {
        ("rtn-w4", "uniform"), ("bnb-w8", "uniform"), ("bnb-w4", "codebook")}
    moved = frame[frame.module == "model.layers.0.mlp.up_proj"].set_index("quant")
    # |N(0, 1)| has mean sqrt(2/pi) = 0.80
    assert moved.loc["rtn-w4", "delta_over_step"] == pytest.approx(3 * 0.8, rel=0.25)
    assert 0.5 < moved.loc["rtn-w4", "update_survival"] < 1.5
    assert moved.loc["bnb-w8", "update_survival"] == pytest.approx(1.0, abs=0.05)
    assert 0 < moved.loc["bnb-w4", "same_code_fraction"] < 1
    still = frame[frame.module != "model.layers.0.mlp.up_proj"]
    assert (still.changed_fraction == 0).all() and still.update_survival.isna().all()
    assert (still.same_code_fraction == 1).all() and (still.delta_over_step == 0).all()
    assert (frame.layer.isin([0, 1])).all() and (frame.tokens > 0).all()
    with pytest.raises(ValueError, match="dtype.*'float8'"):
        survival_diagnostics(folder, tmp_path / "u", cells, data, keys, {}, tmp_path / "x",
                             dtype="float8")


def test_adapter_mode_rows_say_survival_is_by_construction(tmp_path, tiny_lm, forget_data):
    """lora_merge: adapter keeps the LoRA update in full precision over the quantized base:
    the rows carry NaN and a note, not a survival of 1 that looks like a finding. The models
    load in the dtype asked for (the evaluation's), and the rows record it."""
    from peft import LoraConfig, get_peft_model

    from relapse.quantize.diagnostics import ADAPTER_NOTE, survival_diagnostics
    from relapse.quantize.stage import quantize_model

    folder, model, tok = tiny_lm
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=4, lora_alpha=8, target_modules=["up_proj"], init_lora_weights=False))
    run = tmp_path / "run"
    peft_model.save_pretrained(str(run / "adapter"))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(str(run))
    tok.save_pretrained(str(run))
    quantize_model(folder, tmp_path / "t", "rtn", 4, {"group_size": 16})
    quantize_model(run, tmp_path / "u", "rtn", 4, {"group_size": 16}, lora_merge="adapter",
                   base_quant_dir=tmp_path / "t")
    frame = survival_diagnostics(folder, run, [("rtn-w4", tmp_path / "t", tmp_path / "u")],
                                 forget_data, {"method": "ga"}, {"samples": 2},
                                 tmp_path / "d.parquet", dtype="bfloat16")
    assert (frame.note == ADAPTER_NOTE).all() and (frame.lora_merge == "adapter").all()
    for column in ("update_survival", "cosine", "norm_ratio", "same_code_fraction"):
        assert frame[column].isna().all(), column
    assert (frame.dtype == "bfloat16").all()
    row = frame.set_index("module").loc[MODULES[0]]
    # |ΔW| of the weights as bfloat16 holds them, over the target's rtn step
    bf16 = lambda m: m.get_submodule(MODULES[0]).weight.detach().bfloat16().double()  # noqa: E731
    delta = (bf16(merged) - bf16(model)).abs()
    assert row.mean_abs_delta == pytest.approx(float(delta.mean()), rel=1e-9)
    assert row.mean_abs_delta != pytest.approx(
        float((merged.get_submodule(MODULES[0]).weight.detach().double()
               - model.get_submodule(MODULES[0]).weight.detach().double()).abs().mean()),
        rel=1e-6)
    assert row.delta_over_step > 0
