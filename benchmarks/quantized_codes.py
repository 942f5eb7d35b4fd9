"""Disk and load time of quantized cells stored as codes (relapse.models.codes) on a random-init
Llama of SmolLM2-135M's shape (134.5M parameters, tied embeddings; no hub), against what a
quantize folder held before: the dequantized weights in fp32, 4 bytes a parameter whatever the
scheme. Writes benchmarks/quantized_codes.json:

- per scheme: bytes of the folder's weight files per model parameter (`bytes_per_param`), per
  quantized weight (`bytes_per_quantized_param`: codes, scales, zero points or codebooks of the
  quantized Linear weights over their count) and the same projected to Llama-2-7B's shape
  (`projected_7b_bytes_per_param`: its Linear weights at this scheme's bytes, its embeddings and
  untied head dense in fp32, norms aside), the tables' input (benchmarks/paper_cost.py);
- the same folders quantized from a bf16 release of the model (`from_bf16_release`): its
  unquantized tensors are bf16-exact, so the folder keeps them in 2 bytes (relapse.models.codes);
- load time (`load_seconds`: load_model plus one read of every weight) of codes folders against
  the fp32 folder, `--loads` of each taken in turn in one process (files warm in the page
  cache); the ratio of medians and of minima (the minimum is the least disturbed by other jobs
  on a shared machine); `load_cold` the same with each folder's files dropped from the page
  cache first (posix_fadvise), read from this machine's disk.

    .venv/bin/python benchmarks/quantized_codes.py [--threads 2] [--loads 5]

gptq and awq are not run (GPTQModel needs calibration passes that take tens of minutes on two
cores); their codes are GPTQModel's packed `native/` checkpoint, read in place (recorded as
`not measured`; benchmarks/paper_cost.py prices them by formula).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from relapse.io import write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "quantized_codes.json"
SMOLLM2_135M = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                "tie_word_embeddings": True, "max_position_embeddings": 2048}
# Llama-2-7B (MUSE's targets): Linear weights and embeddings + untied head, for the projection.
LLAMA2_7B = {"linear": 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008), "dense": 2 * 32000 * 4096}
SCHEMES = {
    "rtn-w8": ("rtn", 8, {"group_size": 64}),
    "rtn-w4": ("rtn", 4, {"group_size": 64}),
    "rtn-w4-g32-sym": ("rtn", 4, {"group_size": 32, "symmetric": True}),
    "rtn-w3": ("rtn", 3, {"group_size": 64}),
    "bnb-fp4": ("bnb", 4, {"quant_type": "fp4"}),
    "bnb-nf4-dq": ("bnb", 4, {"quant_type": "nf4", "double_quant": True}),
    "bnb-int8": ("bnb", 8, {}),
    "gguf-q8_0": ("gguf", 8, {"type": "q8_0"}),
    "gguf-q4_0": ("gguf", 4, {"type": "q4_0"}),
}
NOT_MEASURED = ("codes = GPTQModel's packed native/ checkpoint, read in place; not run here "
                "(calibration takes tens of minutes on 2 cores); priced by paper_cost.py's formula")
LOAD_TIMED = ("rtn-w4", "bnb-fp4", "bnb-int8", "gguf-q4_0")
BF16_SCHEMES = ("rtn-w4", "rtn-w3", "bnb-fp4", "gguf-q4_0")


def build_source(folder: Path, released_bf16: bool = False) -> int:
    """The random-init model saved in fp32 with a small tokenizer (quantization reads none of
    it); `released_bf16`: every weight rounded to bf16 first, as a model released in bf16 and
    loaded in fp32 is. Returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from relapse.data.prepare import build_splits
    from relapse.models.io import save_model
    from relapse.models.tokenizer import train_tokenizer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval()
    if released_bf16:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    splits, _ = build_splits({"people": 20, "seed": 0})
    tok = train_tokenizer(list(splits["people"].biography), 600)
    tok.save_pretrained(str(folder))
    save_model(model, folder)
    return sum(p.numel() for p in model.parameters())


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("model*.safetensors"))


def quantized_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of the quantized weights' tensors, their weight count), from the layout."""
    import json
    from math import prod

    from safetensors import safe_open

    layout = json.loads((folder / "quant_codes.json").read_text())
    total = count = 0
    with safe_open(str(folder / layout["file"]), framework="pt") as handle:
        for entry in layout["tensors"].values():
            count += prod(entry["shape"])
            for key in entry["keys"]:
                piece = handle.get_slice(key)
                total += prod(piece.get_shape()) * {"F32": 4, "I32": 4, "I8": 1, "U8": 1}[
                    piece.get_dtype()]
    return total, count


def evict(folder: Path) -> None:
    """Drop the folder's files from the OS page cache (their pages only), so the next load reads
    them from disk, as a job on a cluster node reads a cell it has not seen."""
    import os

    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def load_seconds(folder: Path, cold: bool = False) -> float:
    """relapse.models.io.load_model, then one read of every weight: an fp32 folder is mapped
    lazily and read at first use, a codes folder decoded at load, so both pay for their bytes
    here. Hash checks off (they read each file once more, the codes file a fifth as long)."""
    import torch

    from relapse.models.io import load_model

    if cold:
        evict(folder)
    start = time.perf_counter()
    model = load_model(folder)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.sum()
    seconds = time.perf_counter() - start
    del model
    return seconds


def timed_pairs(fp32: Path, codes: Path, loads: int, cold: bool = False) -> dict:
    """Loads of the fp32 and the codes folder taken in turn, so that the load of the other jobs
    on the machine falls on both alike; medians and minima. `cold`: files evicted first."""
    pairs = [(load_seconds(fp32, cold), load_seconds(codes, cold)) for _ in range(loads)]
    old, new = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"fp32_seconds": [round(x, 3) for x in old], "seconds": [round(x, 3) for x in new],
            "median": round(statistics.median(new), 3),
            "fp32_median": round(statistics.median(old), 3),
            "vs_fp32_median": round(statistics.median(new) / statistics.median(old), 3),
            "vs_fp32_min": round(min(new) / min(old), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    import torch

    from relapse.quantize.stage import quantize_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="relapse-codes-") as tmp:
        tmp = Path(tmp)
        params = build_source(tmp / "fp32")
        fp32_bytes = weight_bytes(tmp / "fp32")
        from relapse.models.io import set_weight_verification

        set_weight_verification(False)
        result = {"model": "random-init Llama, SmolLM2-135M's shape", "params": params,
                  "threads": args.threads, "loads": args.loads,
                  "fp32": {"bytes_per_param": round(fp32_bytes / params, 4)},
                  "schemes": {},
                  "not_measured": {q: NOT_MEASURED for q in ("gptq-w4", "awq-w4")}}
        for name, (scheme, bits, settings) in SCHEMES.items():
            out = tmp / name
            start = time.perf_counter()
            manifest = quantize_model(tmp / "fp32", out, scheme, bits, settings,
                                      threads=args.threads)
            seconds = time.perf_counter() - start
            q_bytes, q_count = quantized_bytes(out)
            per_q = q_bytes / q_count
            row = {"bytes_per_param": round(weight_bytes(out) / params, 4),
                   "bytes_per_quantized_param": round(per_q, 4),
                   "quantized_fraction": round(q_count / params, 4),
                   "projected_7b_bytes_per_param": round(
                       (LLAMA2_7B["linear"] * per_q + LLAMA2_7B["dense"] * 4)
                       / (LLAMA2_7B["linear"] + LLAMA2_7B["dense"]), 4),
                   "stored_dense": len(manifest["settings"].get("stored_dense", [])),
                   "quantize_seconds": round(seconds, 2)}
            if name in LOAD_TIMED:
                row["load"] = timed_pairs(tmp / "fp32", out, args.loads)
                row["load_cold"] = timed_pairs(tmp / "fp32", out, args.loads, cold=True)
            result["schemes"][name] = row
            print(name, row, flush=True)
            import shutil

            shutil.rmtree(out)
        # The same cells from a bf16 release: the embeddings (dense) take 2 bytes, not 4.
        params = build_source(tmp / "bf16", released_bf16=True)
        result["from_bf16_release"] = {}
        for name in BF16_SCHEMES:
            scheme, bits, settings = SCHEMES[name]
            quantize_model(tmp / "bf16", tmp / f"bf16-{name}", scheme, bits, settings,
                           threads=args.threads)
            result["from_bf16_release"][name] = {
                "bytes_per_param": round(weight_bytes(tmp / f"bf16-{name}") / params, 4),
                "projected_7b_bytes_per_param": round(
                    (LLAMA2_7B["linear"] * result["schemes"][name]["bytes_per_quantized_param"]
                     + LLAMA2_7B["dense"] * 2) / (LLAMA2_7B["linear"] + LLAMA2_7B["dense"]), 4)}
            print(name, "bf16 release", result["from_bf16_release"][name], flush=True)
    write_json(OUT, result)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
