"""`evaluation.kernels: native`: a quantized cell run through its library's own kernels
(bitsandbytes Linear4bit / Linear8bitLt, GPTQModel) against the default dequantized path, the
validation of schemes without a native kernel, and the `kernels` column of every metrics row."""

import copy

import pytest
import torch

from relapse.config import ConfigError, validate
from relapse.quantize.runtime import load_quantized_model
from relapse.quantize.stage import quantize_model

LAYER = "model.layers.0.mlp.up_proj"


@pytest.fixture(scope="module")
def trained_lm64(tmp_path_factory, tiny_lm):
    """A hidden-64 Llama (every Linear input a multiple of bitsandbytes' blocksize 64) trained
    briefly on biographies, so that its greedy outputs are peaked, not ties of a random model."""
    from relapse.data.prepare import build_splits
    from relapse.models.batching import pack
    from relapse.models.io import save_model
    from relapse.models.tiny import tiny_llama

    _, _, tok = tiny_lm
    torch.manual_seed(0)
    texts = list(build_splits({"people": 20, "seed": 0})[0]["people"].biography)
    model = tiny_llama({"hidden": 64, "layers": 2, "heads": 2, "intermediate": 128}, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the loop is tiny: more threads only contend
    for step in range(40):
        loss = model(**pack(tok, texts[(step * 8) % len(texts):][:8])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("lm64")
    tok.save_pretrained(str(folder))
    save_model(model.eval(), folder)
    return folder, tok, [t[:40] for t in texts]


def _compare(dequantized, native, tok, prompts):
    """(max |logit difference|, max |logit|, greedy continuations that agree, of how many)."""
    from relapse.models.generation import greedy_generate

    batch = tok(prompts[:8], return_tensors="pt", padding=True)
    mask = batch.attention_mask.bool()
    with torch.no_grad():
        a, b = dequantized(**batch).logits[mask], native(**batch).logits[mask]
    same = sum(x == y for x, y in zip(greedy_generate(dequantized, tok, prompts, 16),
                                      greedy_generate(native, tok, prompts, 16)))
    return float((a - b).abs().max()), float(a.abs().max()), same, len(prompts)


@pytest.mark.parametrize("quant_type", ["fp4", "nf4"])
def test_native_bnb_4bit_runs_linear4bit_on_the_same_codes(tmp_path, trained_lm64, quant_type):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    folder, tok, prompts = trained_lm64
    quantize_model(folder, tmp_path / "q", "bnb", 4, {"quant_type": quant_type})
    dequantized = load_quantized_model(tmp_path / "q")
    native = load_quantized_model(tmp_path / "q", native=True)
    module = native.get_submodule(LAYER)
    assert isinstance(module, bnb.nn.Linear4bit) and module.weight.dtype == torch.uint8
    assert module.weight.quant_state.quant_type == quant_type
    # re-quantizing the on-grid weights inside Params4bit gives back exactly the same values
    assert torch.equal(F.dequantize_4bit(module.weight.data, module.weight.quant_state).float(),
                       dequantized.get_submodule(LAYER).weight)
    assert isinstance(native.lm_head, torch.nn.Linear)          # load_in_4bit leaves it alone
    # Same weights; only the kernel's arithmetic differs (bitsandbytes' CPU 4-bit matmul works
    # in bf16: a layer's output differs by about 2^-8 of its size). Measured: max |logit
    # difference| 0.023 (fp4) / 0.026 (nf4) of a max |logit| 7.2; greedy 16-token
    # continuations equal on 20 of 20 prompts (a 60-step model: 19 / 18 of 20).
    diff, scale, same, n = _compare(dequantized, native, tok, prompts)
    assert 0 < diff < 0.01 * scale, (diff, scale)
    assert same >= 0.75 * n, (same, n)


def test_native_bnb_int8_is_llm_int8_whatever_int8_activations_says(tmp_path, trained_lm64):
    import bitsandbytes as bnb

    folder, tok, prompts = trained_lm64
    quantize_model(folder, tmp_path / "w", "bnb", 8, {"int8_activations": False})
    weights_only = load_quantized_model(tmp_path / "w")
    native = load_quantized_model(tmp_path / "w", native=True)
    assert isinstance(weights_only.get_submodule(LAYER), torch.nn.Linear)
    assert isinstance(native.get_submodule(LAYER), bnb.nn.Linear8bitLt)
    # int8 activations against int8 weights alone. Measured: max |logit difference| 0.042 of
    # 7.2; greedy continuations equal on 20 of 20 prompts (a 60-step model: 18 of 20).
    diff, scale, same, n = _compare(weights_only, native, tok, prompts)
    assert 0 < diff < 0.03 * scale, (diff, scale)
    assert same >= 0.75 * n, (same, n)
    # with int8_activations (the default) the dequantized path already runs Linear8bitLt:
    # native is the same computation, to the bit
    quantize_model(folder, tmp_path / "a", "bnb", 8, {})
    ids = tok(prompts[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(load_quantized_model(tmp_path / "a")(**ids).logits,
                           load_quantized_model(tmp_path / "a", native=True)(**ids).logits)


def test_native_bnb_under_lora_adapter_mode_keeps_the_adapter_over_linear4bit(tmp_path,
                                                                             trained_lm64):
    import shutil

    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    from relapse.models.io import load_model, save_model

    folder, tok, prompts = trained_lm64
    torch.manual_seed(0)
    peft_model = get_peft_model(load_model(folder), LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    unlearned = tmp_path / "u"
    unlearned.mkdir()
    peft_model.save_pretrained(str(unlearned / "adapter"))
    save_model(peft_model.merge_and_unload(), unlearned, folder)
    quantize_model(folder, tmp_path / "tq", "bnb", 4, {})
    quantize_model(unlearned, tmp_path / "uq", "bnb", 4, {}, lora_merge="adapter",
                   base_quant_dir=tmp_path / "tq")
    shutil.rmtree(tmp_path / "tq")          # the cell holds its own copy of the base
    dequantized = load_quantized_model(tmp_path / "uq")
    native = load_quantized_model(tmp_path / "uq", native=True)
    layer = native.base_model.model.get_submodule(LAYER)
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit) and layer.lora_A
    # measured: max |logit difference| 0.019 of 3.4 (the bf16 CPU 4-bit matmul)
    ids = tok(prompts[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = dequantized(**ids).logits, native(**ids).logits
    assert 0 < float((a - b).abs().max()) < 0.02 * float(a.abs().max())


def _config(default_config, kernels, schemes, lora_merge="merged", params=("lora",)):
    raw = copy.deepcopy(default_config)
    raw.pop("attacks")          # the default's attack slice names rtn-w4, which these lack
    raw["evaluation"]["kernels"] = kernels
    raw["quantization"]["schemes"] = [{"scheme": "none", "bits": [16]}] + [
        s for s in schemes if s["scheme"] != "none"]
    raw["quantization"]["lora_merge"] = lora_merge
    raw["unlearning"]["params"] = list(params)
    return raw


def test_kernels_default_to_dequantized_and_native_accepts_schemes_with_kernels(default_config):
    assert validate(default_config)["evaluation"]["kernels"] == "dequantized"
    schemes = [{"scheme": "bnb", "bits": [4, 8]},
               {"scheme": "gptq", "bits": [4]}, {"scheme": "awq", "bits": [4]}]
    for device in ("cpu", "cuda"):
        raw = _config(default_config, "native", schemes)
        raw["device"] = device
        assert validate(raw)["evaluation"]["kernels"] == "native"
    with pytest.raises(ConfigError, match="kernels"):
        validate(_config(default_config, "packed", schemes))


@pytest.mark.parametrize("scheme, words", [
    ({"scheme": "rtn", "bits": [4]}, r"schemes\[1\] \(rtn\) cannot run natively on cpu: rtn "
                                     "is fake quantization"),
])
def test_native_refuses_schemes_without_a_native_kernel(default_config, scheme, words):
    raw = _config(default_config, "native", [scheme])
    raw["device"] = "cpu"
    with pytest.raises(ConfigError, match=words):
        validate(raw)
    raw["evaluation"]["kernels"] = "dequantized"
    assert validate(raw)


def test_native_gptq_under_lora_adapter_mode_is_refused(default_config):
    schemes = [{"scheme": "gptq", "bits": [4]}]
    with pytest.raises(ConfigError, match=r"\(gptq\) cannot run natively.*lora_merge: adapter"):
        validate(_config(default_config, "native", schemes, lora_merge="adapter"))
    # full-parameter runs are always merged, and so are bnb adapters (peft over Linear4bit)
    assert validate(_config(default_config, "native", schemes, "adapter", params=("full",)))
    assert validate(_config(default_config, "native", [{"scheme": "bnb", "bits": [4]}],
                            "adapter"))


def test_every_metrics_row_records_its_kernels(tmp_path, trained_lm64, monkeypatch):
    import bitsandbytes as bnb

    import relapse.evaluate.metrics.knowmem as knowmem
    from relapse.data.prepare import prepare
    from relapse.evaluate.stage import evaluate_model

    folder, _, _ = trained_lm64
    data = tmp_path / "data"
    prepare("t", {"kind": "synthetic", "people": 20, "seed": 0}, data)
    quantize_model(folder, tmp_path / "q", "bnb", 4, {})
    seen = []
    real = knowmem.greedy_generate
    monkeypatch.setattr(knowmem, "greedy_generate", lambda m, *a, **kw: seen.append(
        type(m.get_submodule(LAYER))) or real(m, *a, **kw))
    cfg = {"metrics": ["knowmem"], "batch_size": 8, "bootstrap": {"samples": 0},
           "knowmem": {"shots": 1, "max_new_tokens": 2, "max_items": 2}}
    keys = {"bench": "t", "method": "target", "hp": "default", "params": "none", "seed": 0,
            "quant": "bnb-w4", "quant_scheme": "bnb", "bits": 4}
    for kernels, module in (("dequantized", torch.nn.Linear), ("native", bnb.nn.Linear4bit)):
        seen.clear()
        frame = evaluate_model(tmp_path / "q", data, keys, {**cfg, "kernels": kernels},
                               tmp_path / f"{kernels}.parquet", tmp_path / f"{kernels}-s.parquet")
        assert seen and set(seen) == {module}
        assert len(frame) and (frame.kernels == kernels).all()
    seen.clear()
    # an attacked cell holds the attack's weights, not a packed checkpoint: evaluated as saved
    attacked = evaluate_model(tmp_path / "q", data, {**keys, "attack": "relearn"},
                              {**cfg, "kernels": "native"}, tmp_path / "a.parquet",
                              tmp_path / "a-s.parquet")
    assert (attacked.kernels == "dequantized").all() and set(seen) == {torch.nn.Linear}
    with pytest.raises(ValueError, match="evaluation.kernels: 'packed'"):
        evaluate_model(tmp_path / "q", data, keys, {**cfg, "kernels": "packed"},
                       tmp_path / "x.parquet", tmp_path / "x-s.parquet")


def test_native_load_refuses_a_scheme_without_kernels(tmp_path, tiny_lm):
    folder, _, _ = tiny_lm
    quantize_model(folder, tmp_path / "r", "rtn", 4, {"group_size": 32})
    with pytest.raises(RuntimeError, match="rtn-w4 cannot run natively here: rtn is fake"):
        load_quantized_model(tmp_path / "r", native=True)


@pytest.mark.slow
def test_native_gptq_and_awq_run_gptqmodel_kernels_on_the_cpu(tmp_path, trained_lm64):
    """GPTQModel's torch kernels load the packed native/ checkpoint on the CPU (in fp16: they
    refuse float32). Measured against the dequantized float32 path: max |logit difference|
    0.014 (gptq) / 0.004 (awq) of 7.2; greedy continuations equal on 20 of 20 prompts."""
    import json
    import subprocess
    import sys

    from relapse.data.prepare import build_splits

    folder, tok, prompts = trained_lm64
    data = tmp_path / "data"
    data.mkdir()
    build_splits({"people": 20, "seed": 0})[0]["retain"].to_parquet(data / "retain.parquet")
    for scheme in ("gptq", "awq"):
        quant = {"scheme": scheme, "bits": 4, "group_size": 32,
                 "calibration": {"samples": 16, "seq_len": 64}}
        # GPTQModel ends its process on a worker's failure: quantize in a process of its own
        done = subprocess.run(
            [sys.executable, "-m", "relapse.cli", "quantize", "--settings",
             json.dumps({"quant": quant, "device": "cpu"}), "--source", str(folder), "--out",
             str(tmp_path / scheme), "--data", str(data), "--threads", "1"],
            capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        dequantized = load_quantized_model(tmp_path / scheme)
        native = load_quantized_model(tmp_path / scheme, native=True)
        module = native.get_submodule(LAYER)
        assert type(module).__module__.startswith("gptqmodel.") and hasattr(module, "qweight")
        assert native.get_input_embeddings().weight.dtype == torch.float16
        diff, scale, same, n = _compare(dequantized, native, tok, prompts)
        assert 0 < diff < 0.01 * scale, (scheme, diff, scale)
        assert same >= 0.75 * n, (scheme, same, n)


# --- gguf: llama.cpp itself (llama-cpp-python, the optional `.[llamacpp]` extra) ----------------


@pytest.fixture(scope="module")
def lm64_f32_gguf(tmp_path_factory, trained_lm64):
    from relapse.quantize.export_gguf import export_gguf

    folder, _, _ = trained_lm64
    file = tmp_path_factory.mktemp("gguf") / "lm64-f32.gguf"
    export_gguf(folder, file, "f32")
    return file


def _few_shot(prompts):
    """Prompts that share a long prefix, as KnowMem's few-shot prompts do."""
    return [" ".join(prompts[:3]) + " " + p for p in prompts]


@pytest.mark.parametrize("batch_tokens", [512, 16])
def test_llamacpp_computes_what_transformers_computes_at_f32(llama_cpp, trained_lm64,
                                                            lm64_f32_gguf, batch_tokens):
    """The same f32 weights in llama.cpp and in transformers: the runtime's handling of padding
    (left and right), of rows packed into one call and split across calls (batch_tokens 16 cuts
    every row), and of shared prefixes is checked against transformers' own."""
    from relapse.models.generation import greedy_generate
    from relapse.models.io import load_model
    from relapse.models.llamacpp import LlamaCppCausalLM, LlamaCppRunner

    folder, tok, prompts = trained_lm64
    reference = load_model(folder)
    runtime = LlamaCppCausalLM(LlamaCppRunner(lm64_f32_gguf, threads=1, gpu=False,
                                              batch_tokens=batch_tokens))
    assert runtime.runner.n_vocab == reference.config.vocab_size
    texts = [p * (1 + i % 3) for i, p in enumerate(prompts[:8])]     # unequal lengths
    for side in ("right", "left"):
        tok.padding_side = side
        batch = tok(texts, return_tensors="pt", padding=True)
        mask = batch.attention_mask.bool()
        with torch.no_grad():
            a = reference(**batch).logits
        b = runtime(**batch).logits
        # f32 weights; llama.cpp's KV cache is f16. Measured: 1.5e-4 of a max |logit| 0.7
        # (random weights), and the pads' positions are zero, not another row's numbers.
        assert float((a[mask] - b[mask]).abs().max()) < 2e-3 * float(a.abs().max())
        assert not b[~mask].any()
    tok.padding_side = "right"
    few_shot = _few_shot(prompts)
    for batch in (prompts, few_shot):
        for stops in ((), (".",)):
            assert (greedy_generate(runtime, tok, batch, 16, batch_size=8, stop_strings=stops)
                    == greedy_generate(reference, tok, batch, 16, batch_size=8,
                                       stop_strings=stops))


@pytest.mark.parametrize("type_name", ["q4_0", "q4_1", "q8_0"])
def test_native_gguf_runs_llamacpp_on_the_cells_codes(llama_cpp, tmp_path, trained_lm64,
                                                     type_name):
    """A gguf cell with native kernels is the cell written at its type and run by llama.cpp:
    same codes, llama.cpp's arithmetic (its q4_0 / q8_0 dot products quantize the activations
    to 8 bits). Measured against the dequantized float32 path: see the asserts' comments."""
    from relapse.models.llamacpp import LlamaCppCausalLM

    folder, tok, prompts = trained_lm64
    bits = int(type_name[1])
    quantize_model(folder, tmp_path / "q", "gguf", bits, {"type": type_name})
    dequantized = load_quantized_model(tmp_path / "q")
    native = load_quantized_model(tmp_path / "q", native=True)
    assert isinstance(native, LlamaCppCausalLM)
    assert native.info["gguf_type"] == type_name and native.info["extra_buffer_types"] is False
    # Measured: max |logit difference| 0.034 (q4_0) / 0.030 (q4_1) / 0.035 (q8_0) of a max
    # |logit| 7.2; greedy 16-token continuations equal on 19 / 19 / 20 of 20 (a 60-step model:
    # 0.057 / 0.054 / 0.046 of 9.2, and 19 / 20 / 19).
    diff, scale, same, n = _compare(dequantized, native, tok, prompts)
    assert 0 < diff < 0.02 * scale, (diff, scale)
    assert same >= 0.75 * n, (same, n)
    # the temporary file lives as long as the model, and goes with it
    file = native.runner.path
    assert file.exists()
    native.runner.close()
    native._keep.cleanup()
    assert not file.parent.exists()


def test_llamacpp_refuses_cuda_without_gpu_offload_and_bad_masks(llama_cpp, lm64_f32_gguf):
    from relapse.models.llamacpp import LlamaCppCausalLM, LlamaCppRunner

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python was built with GPU offload")
    with pytest.raises(RuntimeError, match="built without GPU offload.*GGML_CUDA=on"):
        LlamaCppRunner(lm64_f32_gguf, gpu=True)
    runtime = LlamaCppCausalLM(LlamaCppRunner(lm64_f32_gguf))
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(ValueError, match="contiguous run of ones"):
        runtime(input_ids=ids, attention_mask=torch.tensor([[1, 0, 1, 1]]))
    with pytest.raises(ValueError, match="greedy decoding only"):
        runtime.generate(ids, max_new_tokens=2, do_sample=True)


def test_native_gguf_validation(default_config, monkeypatch):
    """Accepted where llama-cpp-python is installed; else refused with the install command;
    refused under lora_merge: adapter (one GGUF file holds no adapter)."""
    import importlib.util

    schemes = [{"scheme": "gguf", "bits": [4, 8]}]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "llama_cpp" else real(name, *a))
    for device in ("cpu", "cuda"):
        raw = _config(default_config, "native", schemes)
        raw["device"] = device
        assert validate(raw)["evaluation"]["kernels"] == "native"
    with pytest.raises(ConfigError, match=r"\(gguf\) cannot run natively.*lora_merge: adapter"):
        validate(_config(default_config, "native", schemes, lora_merge="adapter"))
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(ConfigError, match=r"\(gguf\) cannot run natively on cpu: llama.cpp's "
                                          r"runtime needs llama-cpp-python.*\[llamacpp\]"):
        validate(_config(default_config, "native", schemes))


def test_gguf_metrics_rows_record_llamacpp(llama_cpp, tmp_path, trained_lm64):
    import pandas as pd
    import pyarrow.parquet as pq

    from relapse.data.prepare import prepare
    from relapse.evaluate.stage import evaluate_model

    folder, _, _ = trained_lm64
    data = tmp_path / "data"
    prepare("t", {"kind": "synthetic", "people": 20, "seed": 0}, data)
    quantize_model(folder, tmp_path / "q", "gguf", 4, {"type": "q4_0"})
    cfg = {"metrics": ["knowmem", "verbmem", "privleak"], "batch_size": 8,
           "bootstrap": {"samples": 0}, "privleak": {"reference": ["matched"]},
           "knowmem": {"shots": 2, "max_new_tokens": 8, "max_items": 6},
           "verbmem": {"max_items": 4, "max_new_tokens": 8}}
    keys = {"bench": "t", "method": "retrain", "hp": "default", "params": "none", "seed": 0,
            "quant": "gguf-w4", "quant_scheme": "gguf", "bits": 4}
    frames = {}
    for kernels in ("dequantized", "native"):
        frames[kernels] = evaluate_model(tmp_path / "q", data, keys, {**cfg, "kernels": kernels},
                                         tmp_path / f"{kernels}.parquet",
                                         tmp_path / f"{kernels}-s.parquet")
        assert (frames[kernels].kernels == kernels).all()
        assert (frames[kernels].dtype == "float32").all()
    meta = pq.read_schema(tmp_path / "native.parquet").metadata
    assert b"llama.cpp" in b"".join(meta.values()) and b"q4_0" in b"".join(meta.values())
    # the same metrics on the same cell; only the kernels' arithmetic differs
    both = frames["dequantized"].merge(frames["native"], on=["metric", "split", "stat"],
                                       suffixes=("_d", "_n"))
    assert len(both) == len(frames["native"]) > 0
    # Compared item by item with the dequantized evaluation (torch float32 on the same q4_0
    # grid). llama.cpp multiplies q4_0 weights with activations rounded to q8_0 (8 bits per
    # block of 32: a relative step of 2^-8); those roundings are independent and average out
    # over the tokens of a score, so a teacher-forced score (mean log-likelihood, Min-K%, zlib
    # ratio) stays within one such step of its magnitude. A wrong weight, type or token offset
    # moves it by far more (0.1 to 0.3 of its magnitude between two different texts here).
    step = 2.0 ** -8
    samples = {k: pd.read_parquet(tmp_path / f"{k}-s.parquet") for k in ("dequantized", "native")}
    scored = samples["dequantized"].metric.str.startswith("mia_")
    mia = samples["dequantized"][scored].merge(
        samples["native"], on=["metric", "split", "member", "item"], suffixes=("_d", "_n"))
    assert len(mia) == int(scored.sum()) > 0
    assert ((mia.score_d - mia.score_n).abs() <= step * mia.score_d.abs()).all(), mia
    # an AUC depends only on the order of the scores: where it is the same, so is the AUC
    for metric, group in mia.groupby("metric"):
        if (group.score_d.rank().values == group.score_n.rank().values).all():
            (row,) = both[both.metric == metric].itertuples()
            assert row.value_d == row.value_n, metric
    # greedy outputs: an item with the same output has the same score, so a metric's mean moves
    # by at most 100 x (items whose outputs differ) / n
    gen = samples["dequantized"][~scored].merge(
        samples["native"], on=["metric", "split", "item"], suffixes=("_d", "_n"))
    same = gen[gen.output_d == gen.output_n]
    assert (same.rougeL_f1_d == same.rougeL_f1_n).all()
    for (metric, split), group in gen.groupby(["metric", "split"]):
        (row,) = both[(both.metric == metric) & (both.split == split)
                      & (both.stat == "rougeL_f1")].itertuples()
        assert abs(row.value_d - row.value_n) <= 100 * (group.output_d != group.output_n).sum() \
            / len(group) + 1e-9, (metric, split)
