"""The speed cost of `numerics: portable` (relapse.numerics): a few unlearning steps and one
evaluation of a tiny model (the default's size), each timed in fresh processes with and without
the pin, alternating so that load on the machine hits both alike. Writes
benchmarks/portable_numerics.json.

    .venv/bin/python benchmarks/portable_numerics.py [--repeats 3] [--epochs 5]

Everything is built here (synthetic corpus, tokenizer, a random Llama of the default's arch): no
`make run` needed. A worker prints its timings and a hash of its metrics; the hashes of two
portable workers on simulated CPUs (this CPU's best kernel set, and capped at AVX2) must match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from relapse import numerics  # noqa: E402
from relapse.io import write_json  # noqa: E402

KEYS = {"bench": "b", "method": "ga", "hp": "bench", "params": "full", "seed": 0,
        "quant": "none-w16", "quant_scheme": "none", "bits": 16}
EVAL = {"metrics": ["knowmem", "verbmem", "privleak", "utility"], "batch_size": 8,
        "bootstrap": {"samples": 100}, "knowmem": {"shots": 3, "max_new_tokens": 32},
        "verbmem": {"max_new_tokens": 64}, "privleak": {"k": 40, "reference": ["matched"]},
        "scoring": {"batch_size": 16}}


def build(workdir: Path) -> None:
    """Corpus, tokenizer and a random target of the default's arch (no timing)."""
    import torch

    from relapse.data.prepare import prepare
    from relapse.models.io import save_model
    from relapse.models.tiny import tiny_llama
    from relapse.models.reference import train_tokenizer_stage
    from relapse.models.tokenizer import load_tokenizer

    prepare("b", {"kind": "synthetic", "people": 100, "forget": 0.1, "holdout": 0.1, "seed": 0},
            workdir / "data")
    train_tokenizer_stage(workdir / "data", 2048, workdir / "tok")
    tok = load_tokenizer(workdir / "tok")
    torch.manual_seed(0)
    model = tiny_llama({"hidden": 128, "layers": 4, "heads": 2, "intermediate": 512}, tok)
    save_model(model, workdir / "target", workdir / "tok")


def worker(workdir: Path, epochs: int) -> None:
    """One unlearning run and one evaluation of its model, timed; prints one JSON line."""
    import pandas as pd
    import torch

    from relapse.evaluate.stage import evaluate_model
    from relapse.unlearn.trainer import unlearn

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        start, cpu = time.perf_counter(), time.process_time()
        unlearn("ga", {"lr": 1e-4, "epochs": epochs, "params": "full"}, 0, workdir / "target",
                workdir / "data", {"batch_size": 8, "grad_clip": 1.0}, tmp / "run")
        unlearn_s, unlearn_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        log = pd.read_parquet(tmp / "run" / "train_log.parquet")
        start, cpu = time.perf_counter(), time.process_time()
        metrics = evaluate_model(tmp / "run" / f"epoch{epochs}", workdir / "data", KEYS, EVAL,
                                 tmp / "m.parquet", tmp / "s.parquet")
        evaluate_s, evaluate_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    digest = hashlib.sha256(metrics[["metric", "split", "stat", "value"]]
                            .to_csv(index=False, float_format="%.17g").encode()).hexdigest()
    print(json.dumps({"unlearn_s": unlearn_s, "steps_s": float(log.seconds.iloc[-1]),
                      "evaluate_s": evaluate_s, "unlearn_cpu_s": unlearn_cpu_s,
                      "evaluate_cpu_s": evaluate_cpu_s, "steps": len(log),
                      "capability": torch.backends.cpu.get_cpu_capability(),
                      "metrics_sha256": digest[:16]}))


def run(workdir: Path, epochs: int, mode: str, cpu: dict[str, str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE}
    env.update(cpu or {})
    numerics.pin(mode, env)
    env["PYTHONPATH"] = f"{ROOT / 'src'}:{env.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, __file__, "--worker", str(workdir),
                           "--epochs", str(epochs)], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.epochs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build(workdir)
        runs = {"native": [], "portable": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(run(workdir, args.epochs, mode))
        avx2 = run(workdir, args.epochs, "portable",
                   {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"})
        avx2_native = run(workdir, args.epochs, "native",
                          {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"})

    def median(mode, key):
        return statistics.median(r[key] for r in runs[mode])

    result = {
        "workload": f"ga, full params, {runs['native'][0]['steps']} steps of batch 8 on a random "
                    "Llama (hidden 128, 4 layers, vocab 2048) + one evaluation "
                    "(knowmem, verbmem, privleak, utility) of its model; 1 thread; unlearn_s and "
                    "evaluate_s include process-level loading (wall clock; *_cpu_s: CPU "
                    "time), steps_s is the training loop",
        "cpu": _cpu_name(), "repeats": args.repeats, "pin": numerics.PORTABLE,
        **{f"{mode}_{key}": round(median(mode, key), 3)
           for mode in runs
           for key in ("unlearn_s", "steps_s", "evaluate_s", "unlearn_cpu_s", "evaluate_cpu_s")},
        "native_capability": runs["native"][0]["capability"],
        "portable_capability": runs["portable"][0]["capability"],
    }
    total = {m: median(m, "unlearn_s") + median(m, "evaluate_s") for m in runs}
    result["slowdown"] = round(total["portable"] / total["native"] - 1, 3)
    # CPU time of the worker (one thread): what the pin costs, less exposed than wall-clock
    # time to other processes on a shared machine
    cpu = {m: median(m, "unlearn_cpu_s") + median(m, "evaluate_cpu_s") for m in runs}
    result["cpu_slowdown"] = round(cpu["portable"] / cpu["native"] - 1, 3)
    result["steps_slowdown"] = round(median("portable", "steps_s") / median("native", "steps_s")
                                     - 1, 3)
    # Bit identity across simulated CPUs (best kernel set vs capped at AVX2): the metrics' hash.
    result["metrics_identical_across_kernel_sets"] = {
        "portable": avx2["metrics_sha256"] == runs["portable"][0]["metrics_sha256"],
        "native": avx2_native["metrics_sha256"] == runs["native"][0]["metrics_sha256"]}
    write_json(ROOT / "benchmarks" / "portable_numerics.json", result)   # temp + rename
    print(json.dumps(result, indent=2))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
