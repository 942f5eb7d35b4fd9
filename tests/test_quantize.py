import json

import pytest
import torch

from relapse.models.io import load_model
from relapse.quantize.registry import get_quantizer, quantizer_names
from relapse.quantize.rtn import rtn_quantize
from relapse.quantize.stage import quantize_model


def test_registry():
    assert {"none", "rtn"} <= set(quantizer_names())
    with pytest.raises(ValueError, match="unknown setting"):
        get_quantizer("rtn").check_settings({"groupsize": 64})


def test_none_is_identity_and_rtn_roundtrips_through_disk(tmp_path, tiny_lm):
    folder, model, tok = tiny_lm
    ids = tok("Alden Ashdown was born in", return_tensors="pt").input_ids
    quantize_model(folder, tmp_path / "none", "none", 16, {})
    quantize_model(folder, tmp_path / "rtn", "rtn", 4, {"group_size": 16})
    with torch.no_grad():
        ref = model(ids).logits
        same = load_model(tmp_path / "none")(ids).logits
        q1 = load_model(tmp_path / "rtn")(ids).logits
        q2 = load_model(tmp_path / "rtn")(ids).logits
    assert torch.equal(ref, same)
    assert torch.equal(q1, q2)
    assert not torch.allclose(ref, q1)
    manifest = json.loads((tmp_path / "rtn" / "quant_manifest.json").read_text())
    assert manifest["scheme"] == "rtn" and manifest["bits"] == 4
    assert manifest["settings"]["group_size"] == 16 and manifest["library"] == "torch"
    # decoder Linear weights sit on the grid; embeddings and lm_head are untouched by default
    qmodel = load_model(tmp_path / "rtn")
    w = qmodel.model.layers[0].mlp.up_proj.weight
    assert torch.allclose(rtn_quantize(w, 4, 16), w, atol=1e-7, rtol=0)
    assert torch.equal(qmodel.lm_head.weight, model.lm_head.weight)
    assert (tmp_path / "rtn" / "tokenizer.json").exists()


def test_full_precision_copy_needs_no_torch(tmp_path, tiny_lm):
    import subprocess
    import sys

    folder, _, _ = tiny_lm
    code = ("import sys; from relapse.quantize.stage import quantize_model; "
            f"quantize_model({str(folder)!r}, {str(tmp_path / 'q')!r}, 'none', 16, {{}}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "q" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_unsupported_bits_are_refused(tmp_path, tiny_lm):
    folder, _, _ = tiny_lm
    with pytest.raises(ValueError, match="does not support 16 bits"):
        quantize_model(folder, tmp_path / "x", "rtn", 16, {})


def test_the_full_precision_cell_links_every_weight_file_of_a_sharded_source(tmp_path, tiny_lm):
    """none-w16 hard-links the source's files (no second copy of a 7B model), and all of them: a
    published reference is sharded (model-0000k-of-0000n.safetensors + an index), and a cell
    that took only model.safetensors would have no weights."""
    folder, model, tok = tiny_lm
    quantize_model(folder, tmp_path / "none", "none", 16, {})
    src, dst = folder / "model.safetensors", tmp_path / "none" / "model.safetensors"
    assert src.stat().st_ino == dst.stat().st_ino

    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    tok.save_pretrained(sharded)
    shards = sorted(p.name for p in sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (sharded / "model.safetensors").exists()
    quantize_model(sharded, tmp_path / "none_sharded", "none", 16, {})
    out = tmp_path / "none_sharded"
    assert sorted(p.name for p in out.glob("model-*-of-*.safetensors")) == shards
    assert (out / "model.safetensors.index.json").exists()
    ids = tok("Alden Ashdown was born in", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(load_model(out)(ids).logits, model(ids).logits)
