"""The deployment path for GGUF: one model quantized by the `gguf` scheme at each type, then
evaluated with the config's metric set twice, dequantized (torch, float32) and native
(llama.cpp through llama-cpp-python, `evaluation.kernels: native`).

    .venv/bin/python benchmarks/native_gguf.py [--model DIR] [--data DIR] [--label NAME]
        [--types q4_0 q8_0] [--threads 1]

For each type it records the wall seconds of each metric on each path, every metric value on
both, the largest difference, and how many greedy outputs (KnowMem, VerbMem) are identical.
The cell stands as its own PrivLeak reference (a retrain at the same quant), so PrivLeak itself
is 0 on both paths and the Min-K% AUC it comes from is compared in the MIA rows. Results go under `runs[label]` of benchmarks/native_gguf.json,
so runs on several models (the default's tiny target, SmolLM2) sit side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from relapse.io import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "results/synthbio/target/default/s0/none-w16/model"
DATA = ROOT / "results/synthbio/data"
GENERATED = ("knowmem", "verbmem")


def evaluate(cell: Path, data: Path, cfg: dict, kernels: str, out: Path, threads: int):
    """(metric rows, sample rows, wall seconds) of one evaluation."""
    import pandas as pd

    from relapse.evaluate.stage import evaluate_model

    keys = {"bench": "bench", "method": "retrain", "hp": "default", "params": "none", "seed": 0,
            "quant": cell.name, "quant_scheme": "gguf", "bits": int(cell.name[1])}
    start = time.time()
    rows = evaluate_model(cell, data, keys, {**cfg, "kernels": kernels},
                          out / f"{kernels}.parquet", out / f"{kernels}-samples.parquet",
                          threads=threads)
    seconds = time.time() - start
    return rows, pd.read_parquet(out / f"{kernels}-samples.parquet"), seconds


def compare(cell: Path, data: Path, cfg: dict, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        runs = {k: evaluate(cell, data, cfg, k, Path(tmp), threads)
                for k in ("dequantized", "native")}
    (a, sa, ta), (b, sb, tb) = runs["dequantized"], runs["native"]
    key = ["metric", "split", "stat"]
    both = a.merge(b, on=key, suffixes=("_dequantized", "_native"))
    values = {f"{r.metric}/{r.split}/{r.stat}": {"dequantized": round(r.value_dequantized, 4),
                                                 "native": round(r.value_native, 4)}
              for r in both.itertuples()}
    gen = [m for m in GENERATED if m in set(sa.metric)]
    outputs = sa[sa.metric.isin(gen)].merge(sb[sb.metric.isin(gen)],
                                            on=["metric", "split", "item"])
    # a registered metric's rows carry its seconds so far: the last row's is its total
    seconds = {k: {m: round(float(s), 2) for m, s in rows.groupby("metric").seconds.max().items()}
               for k, rows in (("dequantized", a), ("native", b))}
    return {
        "seconds": {"dequantized": round(ta, 2), "native": round(tb, 2)},
        "seconds_per_metric": seconds,
        "greedy_outputs": len(outputs),
        "identical_greedy": int((outputs.output_x == outputs.output_y).sum()),
        "max_abs_metric_diff": round(float((both.value_dequantized - both.value_native)
                                           .abs().max()), 4),
        "values": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--label", default="default target")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--types", nargs="+", default=["q4_0", "q8_0"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and llama.cpp threads (the evaluate rule's default is 1)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "native_gguf.json"))
    args = parser.parse_args()

    import torch
    from importlib.metadata import version

    from relapse.config import load_config
    from relapse.quantize.gguf import GGUF_TYPES
    from relapse.quantize.stage import quantize_model

    cfg = load_config(args.config)["evaluation"]
    cfg["privleak"] = {**cfg.get("privleak", {}), "reference": "matched"}
    cfg["bootstrap"] = {**cfg.get("bootstrap", {}), "samples": 0}
    def shown(path):
        path = Path(path).absolute()
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) \
            else str(path)

    result = {"model": shown(args.model), "data": shown(args.data), "threads": args.threads,
              "metrics": cfg["metrics"], "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for type_name in args.types:
            cell = Path(tmp) / type_name
            quantize_model(args.model, cell, "gguf", GGUF_TYPES[type_name], {"type": type_name})
            result["types"][type_name] = compare(cell, Path(args.data), cfg, args.threads)
            print(type_name, json.dumps(result["types"][type_name]["seconds"]), flush=True)
    out = Path(args.out)
    existing = read_json(out) if out.exists() else {}
    existing.update({
        "benchmark": "one gguf cell per type, evaluated dequantized (torch float32) and native "
                     "(llama.cpp); the cell is its own PrivLeak reference, so PrivLeak is 0 and its AUCs are "
                     "compared in the MIA rows",
        "machine": {"cpus": __import__("os").cpu_count(), "cpu": platform.machine(),
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "llama-cpp-python": version("llama-cpp-python"),
                     "gguf": version("gguf")},
    })
    existing.setdefault("runs", {})[args.label] = result
    write_json(out, existing)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
