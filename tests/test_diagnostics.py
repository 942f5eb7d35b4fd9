"""Survival diagnostics (DESIGN §8): the projection of the quantized update onto the
full-precision one, and the per-module table of an unlearned model."""

import copy

import pytest
import torch

from relapse.quantize.diagnostics import update_projection, weight_diagnostics
from relapse.quantize.rtn import rtn_quantize, rtn_step


def test_projection_is_one_when_quantization_is_the_identity():
    torch.manual_seed(0)
    w_t = torch.randn(16, 32)
    w_u = w_t + 0.01 * torch.randn(16, 32)
    x = torch.randn(50, 32)
    r = update_projection(w_u - w_t, w_u - w_t, x)
    assert r["update_survival"] == 1.0 and r["norm_ratio"] == 1.0
    assert r["cosine"] == pytest.approx(1.0, abs=1e-12)


def test_projection_is_zero_when_the_update_stays_inside_one_bin():
    torch.manual_seed(0)
    w_t = rtn_quantize(torch.randn(16, 32), 4, 8)          # on the grid: bins centred on w_t
    step = rtn_step(w_t, 4, 8)
    w_u = w_t + 0.3 * step * torch.sign(torch.randn(16, 32))   # < half a step everywhere
    w_u[:, ::8] = w_t[:, ::8]        # keep each group's min and max fixed, so the grid holds
    w_u = torch.where(w_t == w_t.reshape(16, 4, 8).amax(-1, keepdim=True).expand(-1, -1, 8)
                      .reshape(16, 32), w_t, w_u)
    w_u = torch.where(w_t == w_t.reshape(16, 4, 8).amin(-1, keepdim=True).expand(-1, -1, 8)
                      .reshape(16, 32), w_t, w_u)
    q_t, q_u = rtn_quantize(w_t, 4, 8), rtn_quantize(w_u, 4, 8)
    assert torch.equal(q_t, q_u)
    x = torch.randn(50, 32)
    r = update_projection(w_u - w_t, q_u - q_t, x)
    assert r["update_survival"] == 0.0 and r["norm_ratio"] == 0.0
    d = weight_diagnostics(w_t, w_u, q_t, q_u, step)
    assert d["same_code_fraction"] == 1.0
    assert 0.0 < d["delta_over_step"] < 0.5


def test_a_large_update_survives():
    torch.manual_seed(0)
    w_t = torch.randn(16, 32)
    w_u = w_t + 5 * rtn_step(w_t, 8, -1) * torch.randn(16, 32)
    x = torch.randn(100, 32)
    r = update_projection(w_u - w_t, rtn_quantize(w_u, 8) - rtn_quantize(w_t, 8), x)
    assert r["update_survival"] == pytest.approx(1.0, abs=0.05)


def test_survival_diagnostics_table(tmp_path, tiny_lm, monkeypatch):
    import gc
    import weakref

    import pandas as pd

    import relapse.quantize.diagnostics as diagnostics

    from relapse.data.prepare import build_splits
    from relapse.io import read_parquet_metadata
    from relapse.models.io import save_model
    from relapse.quantize.diagnostics import survival_diagnostics
    from relapse.quantize.stage import quantize_model

    folder, model, tok = tiny_lm
    data = tmp_path / "data"
    data.mkdir()
    build_splits({"people": 20, "seed": 0})[0]["forget"].to_parquet(data / "forget.parquet")
    # an "unlearned" model: layer 0's up_proj moved by ~3 RTN-4 steps, the rest untouched
    unlearned = copy.deepcopy(model)
    w = unlearned.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w += 3 * rtn_step(w, 4, 16) * torch.randn_like(w)
    save_model(unlearned, tmp_path / "u", tokenizer_dir=folder)
    cells = []
    for scheme, bits in [("rtn", 4), ("bnb", 8)]:
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
    assert set(frame.quant) == {"rtn-w4", "bnb-w8"}
    assert len(frame) == 2 * 2 * 7                       # 2 quants x 2 layers x 7 Linear
    moved = frame[frame.module == "model.layers.0.mlp.up_proj"].set_index("quant")
    assert moved.loc["rtn-w4", "delta_over_step"] == pytest.approx(3 * 0.8, rel=0.25)
    assert 0.5 < moved.loc["rtn-w4", "update_survival"] < 1.5
    assert moved.loc["bnb-w8", "update_survival"] == pytest.approx(1.0, abs=0.05)
    still = frame[frame.module != "model.layers.0.mlp.up_proj"]
    assert (still.changed_fraction == 0).all() and still.update_survival.isna().all()
    assert (still.same_code_fraction == 1).all()
    assert (frame.layer.isin([0, 1])).all() and (frame.tokens > 0).all()


def test_same_code_survives_a_slightly_rescaled_grid():
    """Moving one weight of a group past the group's max rescales every level of the group by a
    hair; the other weights still sit on their old levels, which is what same_code counts."""
    torch.manual_seed(0)
    w_t = rtn_quantize(torch.randn(1, 16), 4, 16)       # on its own grid
    w_u = w_t.clone()
    w_u[0, w_t.argmax()] += 1e-3                         # the group's max moves a little
    q_t, q_u = rtn_quantize(w_t, 4, 16), rtn_quantize(w_u, 4, 16)
    assert (q_t != q_u).sum() >= 8                        # most levels moved a little
    d = weight_diagnostics(w_t, w_u, q_t, q_u, rtn_step(w_t, 4, 16))
    assert d["same_code_fraction"] == 1.0
    assert d["changed_fraction"] == 1 / 16
