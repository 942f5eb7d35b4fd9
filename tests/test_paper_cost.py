"""The after-formats arithmetic of benchmarks/paper_cost.py, each against a count made here:
the adapter's size from peft itself, a codes cell by hand, the capped perplexity's tokens."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cost():
    spec = importlib.util.spec_from_file_location("paper_cost", ROOT / "benchmarks/paper_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lora_params_is_what_peft_trains_on_every_decoder_linear(cost):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    m = {"hidden": 64, "intermediate": 176, "layers": 2, "vocab": 100}
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=m["hidden"], intermediate_size=m["intermediate"],
        num_hidden_layers=m["layers"], num_attention_heads=4, num_key_value_heads=4,
        vocab_size=m["vocab"]))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    trained = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert cost.lora_params(m, r=8) == trained


def test_a_codes_cell_by_hand_and_from_the_measured_json(cost, tmp_path, monkeypatch):
    m = cost.INPUTS["model_7b"]
    P = cost.llama_params(m)
    rtn4 = {"scheme": "rtn", "bits": [4], "group_size": 128, "symmetric": False}
    assert cost.linear_bytes_formula(rtn4, 4, m) == 0.5 + (4 + 4) / 128
    assert cost.linear_bytes_formula({**rtn4, "symmetric": True}, 4, m) == 0.5 + 4 / 128
    assert cost.linear_bytes_formula({"scheme": "bnb", "bits": [4]}, 4, m) == 0.5 + 4 / 64
    cfg = {"quantization": {"schemes": [{"scheme": "none", "bits": [16]}, rtn4]}}
    monkeypatch.setattr(cost, "CODES_JSON", tmp_path / "absent.json")
    unquantized = 2 * 32000 * 4096 * 4                 # embeddings and LM head, fp32
    linear = 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008)
    cell = cost.codes_cells(cfg, P, m)["rtn-w4"]
    assert cell["gb"] == pytest.approx((linear * 0.5625 + unquantized) / 1e9, abs=1e-3)
    assert cell["source"].startswith("formula")
    # measured at group 64: 0.5703 bytes per quantized parameter = 0.5 + 4.5 bytes per group
    # of 64; priced at the config's group of 128 from the same per-group bytes
    measured = tmp_path / "quantized_codes.json"
    measured.write_text(json.dumps({"schemes": {"rtn-w4": {"bytes_per_quantized_param": 0.5703125},
                                                "bnb-nf4-dq": {"bytes_per_quantized_param": 0.55}}}))
    monkeypatch.setattr(cost, "CODES_JSON", measured)
    cell = cost.codes_cells(cfg, P, m)["rtn-w4"]
    assert cell["gb"] == pytest.approx((linear * (0.5 + 4.5 / 128) + unquantized) / 1e9, abs=1e-3)
    assert cell["source"].startswith("measured layout")
    nf4 = {"scheme": "bnb", "name": "bnb_nf4", "bits": [4], "quant_type": "nf4"}
    cells = cost.codes_cells({"quantization": {"schemes": [nf4, {"scheme": "gptq", "bits": [4]}]}},
                             P, m)
    assert cells["bnb_nf4-w4"]["gb"] == pytest.approx((linear * 0.55 + unquantized) / 1e9,
                                                      abs=1e-3)
    # gptq: GPTQModel's packed checkpoint (fp16 scale and a 4-bit zero point per group of 128),
    # its unquantized tensors in fp32 there only
    assert cells["gptq-w4"]["gb"] == pytest.approx(
        (linear * (0.5 + 2.5 / 128) + unquantized) / 1e9, abs=1e-3)
    assert cells["gptq-w4"]["source"].startswith("formula over GPTQModel")


def test_the_utility_cap_scores_a_sample_of_texts(cost):
    A, m = cost.ASSUMPTIONS, cost.INPUTS["model_7b"]
    P = cost.llama_params(m)
    cfg = {"evaluation": {"batch_size": 16, "scoring": {"max_tokens": 2048},
                          "knowmem": {"max_new_tokens": 32}, "verbmem": {"max_new_tokens": 128}}}
    full = cost.eval_cost("news", {}, P, m, A, cfg)
    capped = cost.eval_cost("news", {}, P, m, A, cfg, utility_cap=100)
    # MUSE-News raw retain2: 6,437,312 bytes in 1,778 articles, 4 bytes a token
    assert full["scored_tokens"]["utility_retain_eval"] == round(6437312 / 4)
    assert capped["scored_tokens"]["utility_retain_eval"] == round(100 * 6437312 / 1778 / 4)
    assert capped["scored_tokens"]["privleak"] == full["scored_tokens"]["privleak"]
    assert capped["gpu_h_per_job"] < full["gpu_h_per_job"] / 4
