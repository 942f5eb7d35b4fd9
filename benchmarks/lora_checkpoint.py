"""Disk and load time of a params=lora checkpoint as an adapter over its base
(relapse.models.adapter) against the merged fp32 folder it replaces, on a Llama of ~150M
parameters (r=8 on every decoder Linear), on this CPU: the time to load each and read every
weight once (best of --repeats, in one process: the weight hashes are checked once). Writes benchmarks/lora_checkpoint.json.

    .venv/bin/python benchmarks/lora_checkpoint.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from relapse.io import write_json
    from relapse.models.adapter import base_record, save_adapter_checkpoint
    from relapse.models.io import load_model, save_model
    from relapse.models.tokenizer import train_tokenizer
    from relapse.provenance import provenance

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    shape = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
             "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000}
    model = LlamaForCausalLM(LlamaConfig(**shape)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    tok = train_tokenizer(["a tiny corpus for a tokenizer", "with a few words"], 300)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        tmp = Path(tmp)
        base, merged_dir, ckpt = tmp / "base", tmp / "merged", tmp / "adapter_ckpt"
        tok.save_pretrained(str(base))
        save_model(model, base)
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
        ckpt.mkdir()
        fingerprint_s = time.perf_counter()
        record = base_record(base, "float32")
        fingerprint_s = time.perf_counter() - fingerprint_s
        save_adapter_checkpoint(peft_model, ckpt, record, base)
        save_model(copy.deepcopy(peft_model).merge_and_unload(), merged_dir, base)

        def best(folder):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                loaded = load_model(folder)
                # safetensors maps the weights lazily: read each once, as a first forward does
                sum(float(p.detach().sum()) for p in loaded.parameters())
                times.append(time.perf_counter() - start)
            return min(times)

        merged_s, adapter_s = best(merged_dir), best(ckpt)
        result = {
            "model": {**shape, "params": n_params, "lora": {"r": 8, "alpha": 16,
                                                             "targets": "all-linear"}},
            "bytes": {"merged_fp32_folder": folder_bytes(merged_dir),
                      "adapter_checkpoint": folder_bytes(ckpt),
                      "adapter_weights": (ckpt / "adapter" / "adapter_model.safetensors")
                      .stat().st_size},
            "load_and_read_s": {"merged_fp32_folder": round(merged_s, 3),
                       "adapter_checkpoint (base + fingerprint check + merge)": round(adapter_s, 3),
                       "ratio": round(adapter_s / merged_s, 2)},
            "fingerprint_first_s": round(fingerprint_s, 3),
            "threads": 2, "repeats": args.repeats, **provenance({})}
    write_json(ROOT / "benchmarks" / "lora_checkpoint.json", result)
    print(result["bytes"], result["load_and_read_s"])


if __name__ == "__main__":
    main()
