"""GPU-hours and disk of the paper grids (config/muse.yaml, config/tofu.yaml) on 7B models,
estimated from FLOPs, with the relative cost of each method's step measured on this CPU with
relapse's own step code. No GPU is used. Writes benchmarks/paper_cost.json.

    .venv/bin/python benchmarks/paper_cost.py [--dry-run] [--steps 2] [--no-measure]
    .venv/bin/python benchmarks/paper_cost.py --only wmdp    # config/wmdp.yaml's grid alone,
                                                              # into the existing JSON

--dry-run recounts the jobs per rule with `snakemake -n --quiet rules` (about 40 s on 2 cores);
without it the counts recorded below (from that command) are used. Every input that is not
read from the repository is in INPUTS or ASSUMPTIONS with its source, and lands in the JSON.

Method: FLOPs per optimizer step = (forward 2·N + backward 2·N + weight gradients 2·N_trainable)
per token (≈ 6·N for params=full, ≈ 4·N for LoRA) + causal attention, plus a no-grad reference
forward (2·N per token) where the objective needs one (KLR: the retain batch, every step; NPO:
the forget set once, at θ₀). GPU seconds = FLOPs / (peak × MFU). The CPU measurement times
relapse.unlearn.step.accumulate_step + clipping + AdamW on a 2-layer Llama at sequence length
2048 and checks that the FLOP model predicts the methods' relative step times.

Every grid is costed twice (issue 28): `before`, the formats and metric budget relapse had
(every checkpoint and quantized cell a 27 GB fp32 folder, perplexity over every retain2/holdout
text), and `after`: LoRA checkpoints as adapters over their base (relapse.models.adapter),
quantized cells as integer codes + scales (bytes per param from benchmarks/quantized_codes.json
where it measured the scheme, else CODES_FORMULA), and the configs' `utility.max_items`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- inputs (sources in "source")
INPUTS = {
    "model_7b": {
        "source": "Llama-2-7B config (hidden 4096, intermediate 11008, 32 layers, vocab 32000); "
                  "assumed for all reference models (MUSE-News/Books target+retrain, "
                  "open-unlearning/tofu_Llama-2-7b-chat-hf_*)",
        "hidden": 4096, "intermediate": 11008, "layers": 32, "vocab": 32000},
    "muse_news": {
        "source": "huggingface.co/datasets/muse-bench/MUSE-News README.md dataset_info "
                  "(num_bytes / num_examples)",
        "forget": [3281546, 889], "retain1": [6456895, 1777], "retain2": [6437312, 1778],
        "holdout": [9095347, 3043], "privleak_forget": [806172, 100],
        "privleak_holdout": [806341, 100], "knowmem_icl_bytes": [1154, 1265],
        "knowmem_items": [100, 100]},
    "muse_books": {
        "source": "huggingface.co/datasets/muse-bench/MUSE-Books README.md dataset_info",
        "forget": [4096855, 4], "retain1": [836924, 12], "retain2": [1969626, 13],
        "holdout": [2328993, 3], "privleak_forget": [744007, 100],
        "privleak_holdout": [706326, 100], "knowmem_icl_bytes": [1033, 1143],
        "knowmem_items": [100, 100], "verbmem": [417969, 100]},
    "tofu_forget10": {
        "source": "locuslab/TOFU: 4000 QA pairs on 200 authors; forget10 = 400, retain90 = 3600, "
                  "holdout10 = 400; perturbed sets: forget10 400, retain 400, real_authors 100, "
                  "world_facts 117 (TOFU paper / dataset card)",
        "forget": 400, "retain": 3600, "holdout": 400,
        "perturbed": {"forget": 400, "retain": 400, "real_authors": 100, "world_facts": 117}},
    "wmdp": {
        "source": "cais/wmdp dataset card: wmdp-bio 1273, wmdp-chem 408, wmdp-cyber 1987 "
                  "test questions; cais/mmlu: 14042 test questions over 57 subjects; "
                  "config/wmdp.yaml: RMU, 150 batches of 4 texts of <= 512 tokens (WMDP's run)",
        "questions": {"wmdp_bio": 1273, "wmdp_chem": 408, "wmdp_cyber": 1987, "mmlu": 14042},
        "model_7b": "Zephyr-7B (Mistral-7B: hidden 4096, intermediate 14336, 32 layers, vocab "
                    "32000; grouped-query attention, 8 kv heads)",
        "hidden": 4096, "intermediate": 14336, "layers": 32, "vocab": 32000, "kv_share": 0.25},
    "jobs_recorded": {
        "source": "snakemake -n --quiet rules --configfile config/{muse,tofu}.yaml "
                  "(Snakemake 9.27.1, this tree)",
        "muse": {"fetch_pretrained": 4, "prepare_corpus": 2, "unlearn": 192, "select_epoch": 320,
                 "quantize": 2916, "evaluate": 2916, "diagnose": 320, "report": 1, "all": 1},
        "tofu": {"fetch_pretrained": 2, "prepare_corpus": 1, "unlearn": 96, "select_epoch": 96,
                 "quantize": 882, "evaluate": 882, "diagnose": 96, "report": 1, "all": 1},
        "wmdp": {"check_corpus": 1, "fetch_pretrained": 2, "prepare_corpus": 1, "unlearn": 1,
                 "select_epoch": 1, "quantize": 27, "evaluate": 27, "diagnose": 1,
                 "check_cells": 1, "report": 1, "all": 1}},
}

ASSUMPTIONS = {
    "gpu": "A100-80GB SXM: 312 TFLOP/s dense bf16 (training runs under bf16 autocast), "
           "19.5 TFLOP/s fp32 (evaluation.dtype: float32 and relapse does not enable TF32), "
           "2.04 TB/s HBM",
    "gpu_bf16_flops": 312e12, "gpu_fp32_flops": 19.5e12, "gpu_hbm_bytes_s": 2.04e12,
    "h100_note": "H100 SXM (989 TFLOP/s bf16, 67 fp32, 3.35 TB/s): roughly 0.3x the training "
                 "and 0.3x the evaluation hours below",
    "mfu": 0.40,
    "decode_bandwidth_efficiency": 0.6,
    "bytes_per_token": 4.0,
    "bytes_per_token_note": "English text with the Llama tokenizer (~4 characters per token); "
                            "the MUSE cards give bytes, not tokens",
    "padding_factor": {"news": 1.5, "books": 1.0, "tofu": 1.3},
    "padding_note": "encode() pads each micro-batch of 4 to its longest text: News articles "
                    "(~920 tokens, varying) and TOFU QA pairs are padded ~1.5x / ~1.3x (guess); "
                    "Books chunks are all 2048. MUSE with corpus.packing: stream (the default) "
                    "trains on windows that are all max_length long: no padding",
    "tofu_qa_tokens": 80,
    "tofu_qa_note": "one 'Question: …\\nAnswer: …' text (guess from TOFU's 1-3 sentence answers)",
    "verbmem_news_like_books": "MUSE-News verbmem bytes not on the card: taken as Books' "
                               "(~1045 tokens per item, 128 of them the ground truth)",
    "quantize_hours": {"none": 0.01, "bnb": 0.05, "rtn": 0.05, "gptq": 0.17, "awq": 0.25},
    "quantize_note": "none: a byte copy; bnb/rtn: load + save of a 27 GB fp32 folder (I/O, "
                     "~3 min, assumption); gptq: the GPTQ paper's ~4 GPU-hours for a 175B model "
                     "(arXiv 2210.17323) scaled linearly to 6.7B = 0.15-0.17 h; awq: assumption "
                     "0.25 h (its scale search costs more than GPTQ in relapse's CPU benchmark)",
    "io_bytes_s": 1.0e9,
    "io_note": "1 GB/s model-folder reads/writes (shared file system), for checkpoint saves and "
               "diagnose, which loads 2 + 2x8 fp32 models",
    "reference_hub_bytes_per_param": 2,
    "reference_note": "hub references stored in bf16/fp16 (13.5 GB) and hard-linked from the "
                      "HF cache (counted once)",
    "concurrent_gpu_jobs": 8,
    "lm_eval_prompt_tokens": {"mmlu": 110, "wmdp_bio": 130, "wmdp_cyber": 350,
                              "wmdp_chem": 130},
    "lm_eval_note": "zero-shot prompt lengths with the Llama/Mistral tokenizer (guess: MMLU and "
                    "WMDP-Bio/Chem questions are a few sentences; WMDP-Cyber's often carry code "
                    "or disassembly). lm-eval scores the 4 one-token continuations ' A'..' D' of "
                    "one prompt in one forward (HFLM groups requests by context), so one fp32 "
                    "forward per question",
    "lora_merge_gflop_s_per_thread": 0.55,
    "lora_merge_note": "an adapter checkpoint is merged on the CPU where it is loaded (quantize "
                       "of each quantized cell, evaluate of its full-precision cell, diagnose): "
                       "2·r·(in·out) FLOPs per Linear (103 GFLOP on 7B); the rank-8 products ran "
                       "at 1.1 GFLOP/s on 2 threads here, taken to scale with the job's threads "
                       "(config resources); the GPU waits meanwhile",
}

# A quantized cell stored as codes (issue 28, item 1): per quantized Linear parameter
#   bytes/param = bits / 8 + (scale_bytes + zero_bytes) / group
# (one scale, and for an asymmetric grid one zero point, per group of `group` weights); the
# tensors that are not quantized (embeddings, LM head, norms) stay as in the source (fp32), and
# no separate quant_steps grid is kept (the scales are the steps).
CODES_FORMULA = {
    "formula": "bits/8 + (scale_bytes + zero_bytes)/group per quantized Linear parameter; "
               "unquantized tensors at the source's 4 bytes; no separate grid file",
    "rtn": {"scale_bytes": 4, "zero_bytes_asymmetric": 4, "group": "group_size (config)",
            "note": "fp32 scale and fp32 zero point per group (asymmetric)"},
    "bnb_4bit": {"scale_bytes": 4, "zero_bytes": 0, "group": 64,
                 "note": "bitsandbytes fp4/nf4: one fp32 absmax per block of 64, no double "
                         "quantization (relapse's default)"},
    "bnb_int8": {"scale_bytes": 4, "zero_bytes": 0, "group": "in_features",
                 "note": "LLM.int8: one fp32 absmax per output row"},
    "gptq_awq": {"scale_bytes": 2, "zero_bytes": "bits/8", "group": "group_size (config)",
                 "unquantized_bytes": {"gptq": 4, "awq": 2},
                 "note": "GPTQModel's packed native/ checkpoint, which the codes point into: fp16 "
                         "scale and a packed zero point per group; g_idx (4 bytes per input "
                         "column) ignored. Its unquantized tensors are read from native/ too "
                         "(`dense_in`): fp32 for gptq (quantized in fp32), fp16 for awq "
                         "(GPTQModel's AWQ runs in fp16)"},
}
CODES_JSON = ROOT / "benchmarks" / "quantized_codes.json"
ADAPTER_NOTE = ("a params=lora checkpoint is its adapter (r=8 on every decoder Linear: "
                "r·(in + out) fp32 numbers per Linear) + a pointer to its base "
                "(relapse.models.adapter); its full-precision cell hard-links it, and loading "
                "it reads the bf16 base (13.5 GB) + the adapter and merges in memory")

PEAK_NOTE = ("peak with temp(): references + every checkpoint + the target's quantized folders "
             "(inputs of every diagnose job, kept to the end) + the quantized folders of the "
             "checkpoints in flight, taken as concurrent_gpu_jobs checkpoints × their 9 folders "
             "(Snakemake deletes a folder once its evaluate and diagnose jobs are done; it does "
             "not bound how many checkpoints are quantized before they are diagnosed)")


def llama_params(m: dict) -> dict:
    h, i, n, v = m["hidden"], m["intermediate"], m["layers"], m["vocab"]
    linear = n * (4 * h * h + 3 * h * i)
    return {"linear": linear, "head": v * h, "embed": v * h, "total": linear + 2 * v * h}


def attn_flops_per_token(m: dict, seq: float, passes: int) -> float:
    """QK^T and AV of causal attention (mean context seq/2): 2 matmuls × 2 FLOPs × layers ×
    hidden × seq/2 per forward; `passes` forward-equivalents (3 for fwd+bwd)."""
    return passes * 2 * 2 * m["layers"] * m["hidden"] * seq / 2


def step_flops_per_token(P: dict, m: dict, seq: float, params: str) -> float:
    """Forward + activation gradients (2 + 2 per weight of the Linear layers and the LM head)
    + weight gradients (2 per trainable weight: the decoder Linears for full; ~0 for LoRA)."""
    fwd = 2 * (P["linear"] + P["head"])
    act = 2 * (P["linear"] + P["head"])
    wgrad = 2 * P["linear"] if params == "full" else 0.0
    return fwd + act + wgrad + attn_flops_per_token(m, seq, 3)


def fwd_flops_per_token(P: dict, m: dict, seq: float) -> float:
    return 2 * (P["linear"] + P["head"]) + attn_flops_per_token(m, seq, 1)


METHOD_PARTS = {  # forget objective, regularizer; what each step computes beyond fwd+bwd
    "ga": ("ga", None), "ga_gdr": ("ga", "gdr"), "ga_klr": ("ga", "klr"),
    "npo": ("npo", None), "npo_gdr": ("npo", "gdr"), "npo_klr": ("npo", "klr")}


def corpora(A: dict, packing: dict[str, str]) -> dict:
    """Training samples per epoch and their lengths. MUSE (`packing[bench]`, corpus.packing):
    `stream` is MUSE's windows of max_len tokens (BOS + max_len - 1 stream tokens; the texts
    joined by a blank line, 2 bytes each; the short last window filled up to max_len);
    `article` one sample per article, cut into chunks of at most max_len."""
    bpt = A["bytes_per_token"]
    news, books, tofu = INPUTS["muse_news"], INPUTS["muse_books"], INPUTS["tofu_forget10"]

    def chunks(bytes_, docs, mode, max_len=2048):
        if mode == "stream":
            n = math.ceil((bytes_ + 2 * (docs - 1)) / bpt / (max_len - 1))
            return n, max_len, n * max_len
        tokens = bytes_ / bpt
        per_doc = tokens / docs
        n = docs * max(1, math.ceil(per_doc / (max_len - 1)))
        return n, tokens / n, tokens

    out = {}
    for name, src, pad in (("news", news, A["padding_factor"]["news"]),
                           ("books", books, A["padding_factor"]["books"])):
        mode = packing.get(name, "stream")
        pad = 1.0 if mode == "stream" else pad
        f_n, f_len, f_tokens = chunks(*src["forget"], mode)
        r_n, r_len, _ = chunks(*src["retain1"], mode)
        out[name] = {"packing": mode, "forget_chunks": f_n, "forget_tokens": f_tokens,
                     "forget_seq": min(2048, f_len * pad), "retain_seq": min(2048, r_len * pad),
                     "mean_forget_chunk_tokens": f_len, "mean_retain_chunk_tokens": r_len}
    q = A["tofu_qa_tokens"]
    out["tofu"] = {"forget_chunks": tofu["forget"], "forget_tokens": tofu["forget"] * q,
                   "forget_seq": q * A["padding_factor"]["tofu"],
                   "retain_seq": q * A["padding_factor"]["tofu"],
                   "mean_forget_chunk_tokens": q, "mean_retain_chunk_tokens": q}
    return out


def methods_of(cfg: dict):
    for name, m in cfg["methods"].items():
        base = name.removesuffix("_sure")
        yield name, base, name.endswith("_sure"), len(m["lr"]), max(m["epochs"]), len(m["epochs"])


def lora_params(m: dict, r: int = 8) -> int:
    """r·(in + out) per decoder Linear: q/k/v/o (h→h), gate/up (h→i), down (i→h)."""
    h, i = m["hidden"], m["intermediate"]
    return m["layers"] * r * (4 * (h + h) + 3 * (h + i))


def unlearn_cost(cfg: dict, bench: str, C: dict, P: dict, m7: dict, A: dict,
                 adapters: bool = False) -> dict:
    c = C[bench]
    bs = cfg["unlearning"]["batch_size"]
    steps_epoch = math.ceil(c["forget_chunks"] / bs)
    rate = A["gpu_bf16_flops"] * A["mfu"]
    fp32_save_s = llama_params(m7)["total"] * 4 / A["io_bytes_s"]
    total_s, runs, ckpts, rows = 0.0, 0, 0, {}
    for name, base, sure, n_lr, max_ep, n_ep in methods_of(cfg):
        forget, reg = METHOD_PARTS[base]
        for params in cfg["unlearning"]["params"]:
            per_step = bs * c["forget_seq"] * step_flops_per_token(P, m7, c["forget_seq"], params)
            if reg:
                per_step += bs * c["retain_seq"] * step_flops_per_token(P, m7, c["retain_seq"], params)
            if reg == "klr":
                per_step += bs * c["retain_seq"] * fwd_flops_per_token(P, m7, c["retain_seq"])
            once = 0.0
            if forget == "npo":       # π_ref(y|x) of the whole forget set, at θ₀
                once += c["forget_tokens"] * fwd_flops_per_token(P, m7, c["forget_seq"])
            if sure:                  # ∇_W L_forget over the whole forget set (base weights)
                once += c["forget_tokens"] * step_flops_per_token(P, m7, c["forget_seq"], "full")
            steps = steps_epoch * max_ep
            ckpt_s = lora_params(m7) * 4 / A["io_bytes_s"] if adapters and params == "lora" \
                else fp32_save_s
            seconds = (per_step * steps + once) / rate + n_ep * ckpt_s
            rows[f"{name}/{params}"] = {"steps": steps, "tflop_per_step": round(per_step / 1e12, 1),
                                        "gpu_h_per_run": round(seconds / 3600, 3), "runs": n_lr}
            total_s += seconds * n_lr
            runs += n_lr
            ckpts += n_lr * n_ep
    return {"steps_per_epoch": steps_epoch, "runs": runs, "checkpoints": ckpts,
            "gpu_hours": total_s / 3600, "per_method": rows}


def eval_cost(bench: str, C: dict, P: dict, m7: dict, A: dict, cfg: dict,
              utility_cap: int | None = None, load_bytes: float | None = None) -> dict:
    """One evaluate job: teacher-forced scoring (fp32 forwards) + greedy decoding (bandwidth)
    + loading the cell (`load_bytes`, default a 27 GB fp32 folder). `utility_cap`:
    evaluation.utility.max_items, texts per perplexity split (a uniform sample)."""
    bpt = A["bytes_per_token"]
    ev = cfg["evaluation"]
    bs = ev["batch_size"]
    cap = ev["scoring"].get("max_tokens") or 10 ** 9
    fp32_rate = A["gpu_fp32_flops"] * A["mfu"]
    step_s = llama_params(m7)["total"] * 4 / (A["gpu_hbm_bytes_s"] * A["decode_bandwidth_efficiency"])

    def capped(bytes_, n, items=None):
        return min(n, items or n) * min(bytes_ / n / bpt, cap)

    if bench in ("news", "books"):
        src = INPUTS["muse_news" if bench == "news" else "muse_books"]
        scored = {"utility_retain_eval": capped(*src["retain2"], utility_cap),
                  "utility_holdout": capped(*src["holdout"], utility_cap),
                  "privleak": capped(*src["privleak_forget"]) + capped(*src["privleak_holdout"])}
        vb = INPUTS["muse_books"]["verbmem"]
        verb_prompt = vb[0] / vb[1] / bpt - ev["verbmem"]["max_new_tokens"]
        icl = sum(src["knowmem_icl_bytes"]) / 2 / bpt
        n_qa = src["knowmem_items"]
        prefill = sum(n_qa) * 20 + 2 * icl + 100 * verb_prompt   # ICL prefix cached per split
        decode_steps = (sum(math.ceil(n / bs) for n in n_qa) * ev["knowmem"]["max_new_tokens"]
                        + math.ceil(100 / bs) * ev["verbmem"]["max_new_tokens"])
        seq = 2048
    else:
        t, q = INPUTS["tofu_forget10"], A["tofu_qa_tokens"]
        pert = sum(t["perturbed"].values())
        per_split = min(400, utility_cap or 400)      # retain_eval (retain_perturbed), holdout10
        scored = {"tofu_answer_losses": pert * 7 * q,          # answer, paraphrase, 5 perturbed
                  "utility": 2 * per_split * q, "privleak": 800 * q}
        n_qa = [t["forget"], t["retain"] - 10, t["holdout"]]
        prefill = sum(n_qa) * q / 2 + t["forget"] * q / 2
        decode_steps = (sum(math.ceil(n / bs) for n in n_qa) * ev["knowmem"]["max_new_tokens"]
                        + math.ceil(t["forget"] / bs) * ev["verbmem"]["max_new_tokens"]
                        + math.ceil(pert / bs) * ev["tofu"]["max_new_tokens"])
        seq = q
    tokens = sum(scored.values()) + prefill
    flops = tokens * fwd_flops_per_token(P, m7, min(seq, cap))
    load_s = (load_bytes or llama_params(m7)["total"] * 4) / A["io_bytes_s"]
    scoring_s = {k: v * fwd_flops_per_token(P, m7, min(seq, cap)) / fp32_rate
                 for k, v in scored.items()}
    seconds = flops / fp32_rate + decode_steps * step_s + load_s
    return {"scored_tokens": {k: round(v) for k, v in scored.items()}, "prefill_tokens": round(prefill),
            "decode_steps": decode_steps, "pflop": round(flops / 1e15, 1),
            "utility_max_items": utility_cap,
            "gpu_s": {**{f"scoring {k}": round(v) for k, v in scoring_s.items()},
                      "prefill": round(prefill * fwd_flops_per_token(P, m7, min(seq, cap))
                                       / fp32_rate),
                      "decoding": round(decode_steps * step_s), "load": round(load_s)},
            "gpu_h_per_job": seconds / 3600}


def disk(cfg: dict, jobs: dict, n_ckpt: int, benches: int, P: dict, A: dict) -> dict:
    GB = 1e9
    fp32 = P["total"] * 4 / GB
    ref = P["total"] * A["reference_hub_bytes_per_param"] / GB
    grid = P["linear"] / 128 * 4 / GB                          # quant_steps: one fp32 scale per group
    adapter = 20e6 * 4 / GB                                     # r=8 all-linear on 7B: ~20M params
    n_quants = sum(len(s["bits"]) for s in cfg["quantization"]["schemes"])
    lora_share = cfg["unlearning"]["params"].count("lora") / len(cfg["unlearning"]["params"])
    refs = 2 * benches * ref
    ckpts = n_ckpt * (fp32 + lora_share * adapter)
    base_q = 2 * benches * ((n_quants - 1) * (fp32 + grid) + ref)     # none: a byte copy
    unl_q = n_ckpt * ((n_quants - 1) * (fp32 + grid) + fp32)
    assert jobs["quantize"] == n_quants * (n_ckpt + 2 * benches), "job count mismatch"
    per_ckpt_set = (n_quants - 1) * (fp32 + grid) + fp32
    kept_target = benches * ((n_quants - 1) * (fp32 + grid))
    inflight = A["concurrent_gpu_jobs"] * per_ckpt_set
    TB = 1000
    return {
        "model_folder_gb": {"fp32": round(fp32, 2), "reference_bf16": round(ref, 2),
                            "quantized (fp32 dequantized + grid)": round(fp32 + grid, 2)},
        "references_tb": refs / TB, "checkpoints_tb": ckpts / TB,
        "quantized_tb_without_temp": (base_q + unl_q) / TB,
        "total_without_temp_tb": (refs + ckpts + base_q + unl_q) / TB,
        "quantized_peak_with_temp_tb": (kept_target + inflight) / TB,
        "total_peak_with_temp_tb": (refs + ckpts + kept_target + inflight) / TB,
        "note": PEAK_NOTE}


def wmdp_grid(A: dict, jobs: dict) -> dict:
    """config/wmdp.yaml: RMU (one run) on Zephyr-7B, then 9 quant cells of the target, the
    retrain placeholder and the unlearned model, each scored by lm-eval (WMDP-Cyber + MMLU,
    fp32 forwards) and perplexity. RMU's step: forget and retain batches through the updated
    model (activation gradients only; 3 down-projections train), the frozen model's retain
    forward; all forwards taken as full-depth (RMU's forward_with_cache runs the whole model)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config/wmdp.yaml").read_text())
    w = INPUTS["wmdp"]
    m = {k: w[k] for k in ("hidden", "intermediate", "layers", "vocab")}
    h, i, n, v = m["hidden"], m["intermediate"], m["layers"], m["vocab"]
    linear = n * ((2 + 2 * w["kv_share"]) * h * h + 3 * h * i)
    P = {"linear": linear, "head": v * h, "embed": v * h, "total": linear + 2 * v * h}
    corpus = cfg["benchmarks"]["wmdp"]["corpus"]
    bs, seq = cfg["unlearning"]["batch_size"], corpus["max_length"]
    steps = math.ceil(corpus["samples"] / bs) * cfg["methods"]["rmu"]["epochs"]
    per_step = 2 * bs * seq * step_flops_per_token(P, m, seq, "lora") \
        + bs * seq * fwd_flops_per_token(P, m, seq)
    unlearn_h = (per_step * steps / (A["gpu_bf16_flops"] * A["mfu"])
                 + P["total"] * 4 / A["io_bytes_s"]) / 3600
    ev = cfg["evaluation"]
    prompt = A["lm_eval_prompt_tokens"]
    lm_tokens = {t: w["questions"][t] * prompt[t] for t in ev["lm_eval"]["tasks"]}
    ppl_tokens = 2 * corpus["eval_texts"] * seq
    fp32_rate = A["gpu_fp32_flops"] * A["mfu"]
    load_s = P["total"] * 4 / A["io_bytes_s"]
    lm_s = sum(tok * fwd_flops_per_token(P, m, prompt[t]) for t, tok in lm_tokens.items()) \
        / fp32_rate
    ppl_s = ppl_tokens * fwd_flops_per_token(P, m, seq) / fp32_rate
    job_h = (lm_s + ppl_s + load_s) / 3600
    n_q = sum(len(s["bits"]) for s in cfg["quantization"]["schemes"])
    q_hours = sum(A["quantize_hours"][s["scheme"]] * len(s["bits"])
                  for s in cfg["quantization"]["schemes"])
    assert jobs["quantize"] == jobs["evaluate"] == 3 * n_q, jobs
    stages = {"unlearn": {"jobs": jobs["unlearn"], "gpu_hours": unlearn_h},
              "quantize": {"jobs": jobs["quantize"], "gpu_hours": q_hours * 3},
              "evaluate": {"jobs": jobs["evaluate"], "gpu_hours": job_h * jobs["evaluate"]},
              "diagnose": {"jobs": jobs["diagnose"],
                           "gpu_hours": jobs["diagnose"] * (2 + 2 * (n_q - 1)) * load_s / 3600}}
    stages["total"] = {"jobs": sum(jobs.values()),
                       "gpu_hours": sum(s["gpu_hours"] for s in stages.values())}
    for s in stages.values():
        s["gpu_hours"] = round(s["gpu_hours"], 1)
    return {"config": "config/wmdp.yaml", "jobs": jobs, "stages": stages, "params_7b": P,
            "unlearn": {"steps": steps, "tflop_per_step": round(per_step / 1e12, 1),
                        "gpu_hours": round(unlearn_h, 3)},
            "evaluate_per_job": {"lm_eval_prompt_tokens": lm_tokens, "ppl_tokens": ppl_tokens,
                                 "lm_eval_gpu_s": round(lm_s), "ppl_gpu_s": round(ppl_s),
                                 "load_s": round(load_s), "gpu_h_per_job": job_h}}
def quants_of(cfg: dict) -> list[tuple[str, dict, int]]:
    """(quant id, scheme entry, bits) of every quantized cell but the full-precision one."""
    return [(f"{e.get('name', e['scheme'])}-w{b}", e, b)
            for e in cfg["quantization"]["schemes"] if e["scheme"] != "none" for b in e["bits"]]


# benchmarks/quantized_codes.json's scheme names -> (scheme, bits, quant_type) of a config entry
MEASURED_NAMES = {"rtn-w8": ("rtn", 8, None), "rtn-w4": ("rtn", 4, None),
                  "rtn-w3": ("rtn", 3, None), "bnb-fp4": ("bnb", 4, "fp4"),
                  "bnb-nf4-dq": ("bnb", 4, "nf4"), "bnb-int8": ("bnb", 8, None)}
# Schemes whose codes are a library's own packed checkpoint (relapse.models.codes kinds gptq,
# awq: the layout points into GPTQModel's native/), priced by the formula.
NATIVE_SCHEMES = ("gptq", "awq")


def measured_codes() -> dict[tuple, dict]:
    """(scheme, bits, quant_type) -> {"overhead_bytes_per_group", "group", "bytes"} from
    benchmarks/quantized_codes.json: what a measured cell stores per quantized Linear parameter
    beyond bits/8, as bytes per group of its group size (rtn: scale + zero; bnb 4-bit: absmax
    per block of 64), so that a config's other group size is priced from the same layout;
    {} when the file is absent."""
    if not CODES_JSON.exists():
        return {}
    data = json.loads(CODES_JSON.read_text())
    out = {}
    for name, key in MEASURED_NAMES.items():
        row = data.get("schemes", {}).get(name)
        if not row or "bytes_per_quantized_param" not in row:
            continue
        group = data.get("group_size", 64) if key[0] == "rtn" else 64
        extra = row["bytes_per_quantized_param"] - key[1] / 8
        out[key] = {"bytes": row["bytes_per_quantized_param"], "group": group,
                    "overhead_bytes_per_group": extra * group}
    return out


def linear_bytes_formula(entry: dict, bits: int, m: dict) -> float:
    """CODES_FORMULA's bytes per quantized Linear parameter."""
    scheme, group = entry["scheme"], entry.get("group_size", 128)
    if scheme == "rtn":
        group = entry.get("group_size", 64)            # relapse's rtn default
        zero = 0 if entry.get("symmetric", False) else 4
        return bits / 8 + (4 + zero) / group
    if scheme == "bnb" and bits == 4:
        return bits / 8 + 4 / 64
    if scheme == "bnb":             # int8: one fp32 scale per output row of in_features weights
        h, i, n = m["hidden"], m["intermediate"], m["layers"]
        rows = n * (4 * h + 2 * i + h)                 # q/k/v/o and gate/up: h inputs; down: i
        return 1 + 4 * rows / llama_params(m)["linear"]
    if scheme in ("gptq", "awq"):
        return bits / 8 + (2 + bits / 8) / group
    raise ValueError(f"no codes formula for scheme {scheme}")


def codes_cells(cfg: dict, P: dict, m: dict) -> dict:
    """Quant id -> {"gb": a 7B cell's folder as relapse writes it, "source": how it was sized}:
    codes priced from the measured layout where the benchmark measured the scheme, else by the
    formula; gptq/awq by the formula over GPTQModel's packed checkpoint."""
    measured = measured_codes()
    out = {}
    for qid, entry, bits in quants_of(cfg):
        key = (entry["scheme"], bits, entry.get("quant_type") if entry["scheme"] == "bnb"
               and bits == 4 else None)
        got = measured.get(key)
        if entry["scheme"] in NATIVE_SCHEMES:
            bpp = linear_bytes_formula(entry, bits, m)
            unquantized = CODES_FORMULA["gptq_awq"]["unquantized_bytes"][entry["scheme"]]
            gb = (P["linear"] * bpp + (P["head"] + P["embed"]) * unquantized) / 1e9
            source = (f"formula over GPTQModel's native/ ({bpp:.4f} bytes per quantized Linear "
                      f"parameter; unquantized tensors {unquantized} bytes, in native/ only)")
        elif got and entry["scheme"] == "rtn":
            group = entry.get("group_size", 64)
            bpp = bits / 8 + got["overhead_bytes_per_group"] / group
            gb = (P["linear"] * bpp + (P["head"] + P["embed"]) * 4) / 1e9
            source = (f"measured layout ({got['bytes']:.4f} bytes per quantized parameter at group "
                      f"{got['group']}, benchmarks/quantized_codes.json) at group {group}: "
                      f"{bpp:.4f}")
        elif got:
            gb = (P["linear"] * got["bytes"] + (P["head"] + P["embed"]) * 4) / 1e9
            source = (f"measured ({got['bytes']:.4f} bytes per quantized parameter, "
                      "benchmarks/quantized_codes.json)")
        else:
            bpp = linear_bytes_formula(entry, bits, m)
            gb = (P["linear"] * bpp + (P["head"] + P["embed"]) * 4) / 1e9
            source = f"formula ({bpp:.4f} bytes per quantized Linear parameter)"
        out[qid] = {"gb": round(gb, 3), "bytes_per_param": round(gb * 1e9 / P["total"], 4),
                    "source": source}
    return out


def disk_after(cfg: dict, n_ckpt: int, benches: int, P: dict, A: dict, cells: dict) -> dict:
    """Disk with adapters and codes. Full-precision cells are hard links of their source
    (relapse.quantize.stage), so they add nothing: the `before` estimate counted each as a copy."""
    GB, TB = 1e9, 1000
    fp32 = P["total"] * 4 / GB
    ref = P["total"] * A["reference_hub_bytes_per_param"] / GB
    adapter = lora_params(INPUTS["model_7b"]) * 4 / GB
    lora_share = cfg["unlearning"]["params"].count("lora") / len(cfg["unlearning"]["params"])
    per_set = sum(c["gb"] for c in cells.values())      # one model's quantized cells
    refs = 2 * benches * ref
    ckpts = n_ckpt * ((1 - lora_share) * fp32 + lora_share * adapter)
    base_q, unl_q = 2 * benches * per_set, n_ckpt * per_set
    kept_target = benches * per_set
    inflight = A["concurrent_gpu_jobs"] * per_set
    return {
        "model_folder_gb": {"fp32": round(fp32, 2), "reference_bf16": round(ref, 2),
                            "lora_adapter": round(adapter, 3),
                            **{f"{q} (codes)": c["gb"] for q, c in cells.items()}},
        "cells": cells, "adapter_note": ADAPTER_NOTE,
        "references_tb": refs / TB, "checkpoints_tb": ckpts / TB,
        "quantized_tb_without_temp": (base_q + unl_q) / TB,
        "total_without_temp_tb": (refs + ckpts + base_q + unl_q) / TB,
        "quantized_peak_with_temp_tb": (kept_target + inflight) / TB,
        "total_peak_with_temp_tb": (refs + ckpts + kept_target + inflight) / TB,
        "hard_link_correction_tb": (n_ckpt * fp32 + 2 * benches * ref) / TB,
        "hard_link_note": "the before estimate counted every full-precision cell as a copy of "
                          "its source (fp32 per checkpoint, the reference per baseline); "
                          "relapse hard-links them, so this much of before's total was never "
                          "on disk: it is a correction of the estimate, not a new format",
        "note": "full-precision cells: hard links (0 bytes); " + PEAK_NOTE}


def utility_caps(cfg: dict) -> int | None:
    return (cfg["evaluation"].get("utility") or {}).get("max_items")


# ---------------------------------------------------------------- CPU measurement
def measure(steps: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from relapse.unlearn.registry import get_method
    from relapse.unlearn import step as T
    from relapse.models.modules import make_trainable

    torch.set_num_threads(2)
    torch.manual_seed(0)
    m = {"hidden": 128, "intermediate": 344, "layers": 2, "vocab": 8000}
    config = LlamaConfig(hidden_size=m["hidden"], intermediate_size=m["intermediate"],
                         num_hidden_layers=m["layers"], num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=m["vocab"],
                         max_position_embeddings=2048)
    seq, micro, n_micro = 2048, 1, 1
    P = llama_params(m)

    def batch():
        ids = torch.randint(3, m["vocab"], (micro, seq))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    out = {}
    cases = [("ga", "full"), ("ga_klr", "full"), ("npo", "full"), ("ga", "lora")]
    for name, params in cases:
        method = get_method(name)
        hp = {**method.defaults(), "lr": 1e-5, "params": params}
        model = LlamaForCausalLM(config).float().eval()
        reference = None
        if params == "full" and method.needs_reference:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        forget = [batch() for _ in range(n_micro)]
        retain = [batch() for _ in range(n_micro)] if method.regularizer else None
        if method.forget.needs_ref_seq_logp:
            logp = T._ref_seq_logprobs(model, forget)
            for i, b in enumerate(forget):
                b["ref_seq_logp"] = logp[i * micro:(i + 1) * micro]
        model = make_trainable(model, params, {"r": 8, "alpha": 16, "targets": "all-linear"})
        ctx = T.StepContext(model, "paper", reference, is_lora=params == "lora")
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0)
        times = []
        for i in range(steps + 1):          # the first step warms the allocator up
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            T.accumulate_step(method, ctx, hp, forget, retain, None, i)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            times.append(time.perf_counter() - start)
        base, reg = METHOD_PARTS[name]
        flops = n_micro * micro * seq * step_flops_per_token(P, m, seq, params)
        if reg:
            flops += n_micro * micro * seq * step_flops_per_token(P, m, seq, params)
        if reg == "klr":
            flops += n_micro * micro * seq * fwd_flops_per_token(P, m, seq)
        s = min(times[1:])
        out[f"{name}/{params}"] = {"s_per_step": round(s, 3), "gflop_per_step": round(flops / 1e9, 1),
                                   "cpu_gflop_s": round(flops / s / 1e9, 1)}
    ga = out["ga/full"]
    for v in out.values():
        v["time_vs_ga_full"] = round(v["s_per_step"] / ga["s_per_step"], 2)
        v["flops_vs_ga_full"] = round(v["gflop_per_step"] / ga["gflop_per_step"], 2)
    return {"model": {**m, "params": P["total"], "seq_len": seq,
                      "tokens_per_step": n_micro * micro * seq, "threads": 2,
                      "torch": torch.__version__},
            "code": "relapse.unlearn.step.accumulate_step (+ clip_grad_norm_ + AdamW), "
                    "loss_variant paper", "steps_timed": steps, "results": out}


def dry_run_counts(config: str) -> dict:
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    text = subprocess.run([snakemake, "-n", "--quiet", "rules", "--configfile", config],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout
    block = text.split("Job stats:")[1]
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", block, re.M) if k != "total"}


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true", help="recount jobs with snakemake -n")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--no-measure", action="store_true",
                        help="keep the CPU step timing already in paper_cost.json")
    parser.add_argument("--only", choices=["wmdp"],
                        help="compute this grid alone into the existing JSON")
    args = parser.parse_args()
    A, m7 = ASSUMPTIONS, INPUTS["model_7b"]
    wmdp_jobs = dry_run_counts("config/wmdp.yaml") if args.dry_run \
        else INPUTS["jobs_recorded"]["wmdp"]
    if args.only == "wmdp":
        from relapse.io import atomic_file

        out = ROOT / "benchmarks" / "paper_cost.json"
        result = json.loads(out.read_text())
        result["inputs"]["wmdp"] = INPUTS["wmdp"]
        result["inputs"]["jobs_recorded"]["wmdp"] = INPUTS["jobs_recorded"]["wmdp"]
        result["assumptions"] = A
        result["grids"]["wmdp"] = wmdp_grid(A, wmdp_jobs)
        with atomic_file(out) as tmp:        # the file's own layout: the other grids' lines stay
            tmp.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["grids"]["wmdp"]["stages"], indent=1))
        return
    P = llama_params(m7)
    muse = yaml.safe_load((ROOT / "config/muse.yaml").read_text())["benchmarks"]
    C = corpora(A, {b: e["corpus"].get("packing", "stream") for b, e in muse.items()})
    result = {"inputs": INPUTS, "assumptions": A, "params_7b": P, "corpora": C, "grids": {}}
    for grid, path in (("muse", "config/muse.yaml"), ("tofu", "config/tofu.yaml")):
        cfg = yaml.safe_load((ROOT / path).read_text())
        jobs = dry_run_counts(path) if args.dry_run else INPUTS["jobs_recorded"][grid]
        benches = list(cfg["benchmarks"])
        cells = codes_cells(cfg, P, m7)
        fp32_b = P["total"] * 4
        n_cells = len(cells)
        n_none = sum(len(e["bits"]) for e in cfg["quantization"]["schemes"]
                     if e["scheme"] == "none")
        per_set = sum(c["gb"] for c in cells.values()) * 1e9
        # an evaluate job loads its cell: full-precision cells as before (a LoRA one reads its
        # base + adapter, taken as the same bytes), quantized cells as codes
        load_after = (n_none * fp32_b + per_set) / (n_none + n_cells)
        versions = {
            "before": {"adapters": False, "cap": None, "load": None,
                       "q_save": {q: 0.0 for q in cells}, "diag_bytes": None},
            "after": {"adapters": True, "cap": utility_caps(cfg), "load": load_after,
                      "q_save": {q: (fp32_b - c["gb"] * 1e9) / A["io_bytes_s"] / 3600
                                 for q, c in cells.items()},
                      "diag_bytes": 2 * fp32_b + 2 * per_set},
        }
        out = {"config": path, "jobs": jobs, "codes_cells": cells}
        for version, v in versions.items():
            un = {b: unlearn_cost(cfg, b, C, P, m7, A, adapters=v["adapters"]) for b in benches}
            ev = {b: eval_cost(b, C, P, m7, A, cfg, utility_cap=v["cap"], load_bytes=v["load"])
                  for b in benches}
            n_ckpt = sum(u["checkpoints"] for u in un.values())
            assert jobs["unlearn"] == sum(u["runs"] for u in un.values()), (jobs, un)
            assert jobs["select_epoch"] == n_ckpt == jobs["diagnose"], (jobs, n_ckpt)
            n_q = {b: jobs["quantize"] // len(benches) for b in benches}
            by_id = {q: e for q, e, _ in quants_of(cfg)}
            q_hours = n_none * A["quantize_hours"]["none"] + sum(
                max(A["quantize_hours"][by_id[q]["scheme"]] - v["q_save"][q], 0.0)
                for q in cells)
            diag_bytes = v["diag_bytes"] or (2 + 2 * n_cells) * fp32_b
            diag_h = diag_bytes / A["io_bytes_s"] / 3600
            stages = {
                "unlearn": {"jobs": jobs["unlearn"],
                            "gpu_hours": sum(u["gpu_hours"] for u in un.values())},
                "quantize": {"jobs": jobs["quantize"],
                             "gpu_hours": q_hours * (n_ckpt + 2 * len(benches))},
                "evaluate": {"jobs": jobs["evaluate"],
                             "gpu_hours": sum(ev[b]["gpu_h_per_job"] * n_q[b] for b in benches)},
                "diagnose": {"jobs": jobs["diagnose"], "gpu_hours": diag_h * jobs["diagnose"]},
            }
            if v["adapters"]:
                m = m7
                merge_gflop = 2 * 8 * m["layers"] * (4 * m["hidden"] ** 2
                                                     + 3 * m["hidden"] * m["intermediate"]) / 1e9
                lora_ckpts = n_ckpt * cfg["unlearning"]["params"].count("lora") \
                    / len(cfg["unlearning"]["params"])
                res = cfg.get("resources", {})

                def merge_h(stage, loads):
                    rate = A["lora_merge_gflop_s_per_thread"] * res.get(stage, {}).get("threads", 1)
                    return loads * merge_gflop / rate / 3600

                merges = {"quantize": merge_h("quantize", lora_ckpts * n_cells),
                          "evaluate": merge_h("evaluate", lora_ckpts * n_none),
                          "diagnose": merge_h("diagnose", lora_ckpts)}
                for stage, hours in merges.items():
                    stages[stage]["gpu_hours"] += hours
                stages["lora_merge_hours_included"] = {k: round(h, 1) for k, h in merges.items()}
            stages["total"] = {"jobs": sum(jobs.values()),
                               "gpu_hours": sum(st["gpu_hours"] for st in stages.values()
                                                if "gpu_hours" in st)}
            for st in stages.values():
                if "gpu_hours" in st:
                    st["gpu_hours"] = round(st["gpu_hours"])
            space = (disk(cfg, jobs, n_ckpt, len(benches), P, A) if version == "before"
                     else disk_after(cfg, n_ckpt, len(benches), P, A, cells))
            out[version] = {"stages": stages, "unlearn": un, "evaluate_per_job": ev,
                            "disk": space}
        result["grids"][grid] = out
    # config/wmdp.yaml: one RMU run on Zephyr-7B, estimated as it is configured (no before/after)
    result["grids"]["wmdp"] = wmdp_grid(A, wmdp_jobs)
    previous = ROOT / "benchmarks" / "paper_cost.json"
    if args.no_measure and previous.exists():
        result["cpu_measurement"] = json.loads(previous.read_text())["cpu_measurement"]
    else:
        result["cpu_measurement"] = measure(args.steps)
    from relapse.io import write_json

    write_json(ROOT / "benchmarks" / "paper_cost.json", result)
    print(json.dumps({g: {v: {"stages": {k: s.get("gpu_hours", s)
                                         for k, s in r[v]["stages"].items()},
                              "disk": {k: round(x, 2) for k, x in r[v]["disk"].items()
                                       if k.endswith("tb")}}
                          for v in ("before", "after")}
                      for g, r in result["grids"].items() if "after" in r}, indent=1))
    print(json.dumps({"wmdp": result["grids"]["wmdp"]["stages"]}, indent=1))
    print(json.dumps(result["cpu_measurement"]["results"], indent=1))


if __name__ == "__main__":
    main()
