"""Quantization time per scheme on a hidden-2048, 4-layer Llama (about 200M parameters), each
scheme run as the pipeline runs it: one `relapse quantize` process per scheme. Writes
benchmarks/quantize_schemes.json with the process wall time (imports included) and the
stage's own time from quant_manifest.json (load, quantize, save).

    .venv/bin/python benchmarks/quantize_schemes.py [--threads 2] [--schemes rtn-w4,gptq-w4]
                                                    [--timeout 1500]

A run of some schemes keeps the other schemes' last results in the JSON; a scheme that runs past
--timeout seconds is recorded as such.

The model has random weights (the time does not depend on what it learned); calibration texts
come from the synthetic corpus (32 samples of up to 128 tokens for GPTQ and AWQ).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relapse.io import write_json, write_parquet

ROOT = Path(__file__).resolve().parents[1]
ARCH = {"hidden": 2048, "layers": 4, "heads": 16, "intermediate": 5504}
CALIBRATION = {"samples": 32, "seq_len": 128}
SCHEMES = {
    "rtn-w8": {"scheme": "rtn", "bits": 8, "group_size": 128},
    "rtn-w4": {"scheme": "rtn", "bits": 4, "group_size": 128},
    "bnb-fp4": {"scheme": "bnb", "bits": 4, "quant_type": "fp4"},
    "bnb-nf4": {"scheme": "bnb", "bits": 4, "quant_type": "nf4"},
    "bnb-int8": {"scheme": "bnb", "bits": 8},
    "gptq-w4": {"scheme": "gptq", "bits": 4, "group_size": 128, "calibration": CALIBRATION},
    "awq-w4": {"scheme": "awq", "bits": 4, "group_size": 128, "calibration": CALIBRATION},
}


def build_model(folder: Path, data: Path) -> int:
    import torch

    from relapse.data.prepare import build_splits
    from relapse.models.io import save_model
    from relapse.models.tiny import tiny_llama
    from relapse.models.tokenizer import train_tokenizer

    splits, _ = build_splits({"people": 100, "seed": 0})
    data.mkdir(parents=True)
    write_parquet(data / "retain.parquet", splits["retain"])
    tok = train_tokenizer(list(splits["people"].biography) + list(splits["retain"].text), 2048)
    torch.manual_seed(0)
    model = tiny_llama(ARCH, tok)
    tok.save_pretrained(str(folder))
    save_model(model, folder)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--timeout", type=float, default=1500)
    args = parser.parse_args()
    out_json = ROOT / "benchmarks" / "quantize_schemes.json"
    results = json.loads(out_json.read_text())["schemes"] if out_json.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params = build_model(tmp / "model", tmp / "data")
        for name in args.schemes.split(","):
            out = tmp / name
            cmd = [sys.executable, "-m", "relapse.cli", "quantize", "--settings",
                   json.dumps({"quant": SCHEMES[name], "device": "cpu"}),
                   "--source", str(tmp / "model"), "--out", str(out), "--data", str(tmp / "data"),
                   "--threads", str(args.threads)]
            start = time.perf_counter()
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                results[name] = {"timeout_s": args.timeout, "finished": False}
                write(out_json, params, args.threads, results)
                continue
            wall = time.perf_counter() - start
            if done.returncode:
                results[name] = {"error": done.stderr[-2000:]}
                continue
            manifest = json.loads((out / "quant_manifest.json").read_text())
            results[name] = {"process_s": round(wall, 1), "stage_s": manifest["seconds"],
                             "library": manifest["library"],
                             "library_version": manifest["library_version"]}
            print(name, results[name], flush=True)
            write(out_json, params, args.threads, results)
    print(out_json.read_text())


def write(path: Path, params: int, threads: int, results: dict) -> None:
    report = {"model": {**ARCH, "parameters": params}, "threads": threads,
              "calibration": CALIBRATION,
              "note": "process_s: the `relapse quantize` process (imports included); stage_s: "
                      "load, quantize and save, from quant_manifest.json",
              "schemes": results}
    write_json(path, report)      # temp + rename: a killed run keeps the last complete file


if __name__ == "__main__":
    main()
