"""What metric lm_eval costs per cell on the default's tiny model shape (hidden 128, 4 layers,
vocab 2048; random weights: the cost does not depend on them), with a fixed item count, on
made-up local snapshots of cais/wmdp (wmdp-bio) and cais/mmlu (one subject) in the hub layout,
read offline.

    .venv/bin/python benchmarks/lm_eval_cost.py [--items 100] [--cells 3] [--threads 1]

One process, as one evaluate job is: `import lm_eval` and lm-eval's task index (paid once per
job: every evaluate job is a new process), then `--cells` cells evaluated with the metric alone
(evaluation.metrics: [lm_eval], tasks wmdp_bio and mmlu_anatomy, max_items = --items each);
their seconds are the metric's own (the row's `seconds`), the first of them with the index
build. Compared with the default pipeline's mean evaluate job (benchmarks/pipeline_e2e.json).
Writes benchmarks/lm_eval_cost.json. The default config does not run lm_eval (it has no MMLU or
WMDP data).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))      # hub_snapshots: the tests' hub-layout writer


def mcq(prefix: str, n: int, subject: str | None = None):
    import pandas as pd

    frame = pd.DataFrame({
        "question": [f"Which {prefix} statement {i} about the topic holds?" for i in range(n)],
        "choices": [[f"{prefix} option {i}.{k} with a few words" for k in range(4)]
                    for i in range(n)],
        "answer": [(3 * i + 1) % 4 for i in range(n)]})
    if subject:
        frame.insert(1, "subject", subject)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--cells", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TQDM_DISABLE", "1")

    import torch

    from hub_snapshots import write_snapshot
    from relapse.data.prepare import prepare
    from relapse.evaluate.stage import evaluate_model
    from relapse.io import read_json, write_json
    from relapse.models.io import save_model
    from relapse.models.tiny import tiny_llama
    from relapse.models.tokenizer import train_tokenizer
    from relapse.quantize.stage import quantize_model

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lm_eval_cost_"))
    prepare("t", {"kind": "synthetic", "people": 20, "seed": 0}, tmp / "data")
    import pandas as pd

    texts = list(pd.read_parquet(tmp / "data" / "forget.parquet").text) + \
        list(pd.read_parquet(tmp / "data" / "retain.parquet").text)
    tok = train_tokenizer(texts, 2048)
    torch.manual_seed(0)
    model = tiny_llama({"hidden": 128, "layers": 4, "heads": 2, "intermediate": 512}, tok).eval()
    tok.save_pretrained(str(tmp / "model"))
    save_model(model, tmp / "model")
    quantize_model(tmp / "model", tmp / "cell", "none", 16, {})
    wmdp = write_snapshot(tmp / "wmdp", {"wmdp-bio": {"test": mcq("bio", args.items)}})
    mmlu = write_snapshot(tmp / "mmlu", {"anatomy": {"test": mcq("anatomy", args.items,
                                                                 "anatomy"),
                                                     "dev": mcq("dev", 5, "anatomy")}})
    lcfg = {"tasks": ["wmdp_bio", "mmlu_anatomy"], "max_items": args.items, "batch_size": 8,
            "snapshots": {"wmdp_bio": str(wmdp), "mmlu_anatomy": str(mmlu)}}
    cfg = {"metrics": ["lm_eval"], "batch_size": 8, "lm_eval": lcfg}

    import subprocess

    import lm_eval

    # in a fresh interpreter, as an evaluate job pays it (torch and transformers already in)
    code = ("import time, torch, transformers; t = time.perf_counter(); import lm_eval, "
            "lm_eval.models.huggingface; print(time.perf_counter() - t)")
    import_s = float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, check=True).stdout.split()[-1])
    keys = {"bench": "t", "method": "target", "hp": "default", "seed": 0, "quant": "none-w16",
            "quant_scheme": "none", "bits": 16}
    cells = []
    for k in range(args.cells):
        out = tmp / f"out{k}"
        out.mkdir()
        start = time.perf_counter()
        rows = evaluate_model(tmp / "cell", tmp / "data", keys, cfg, out / "m.parquet",
                              out / "s.parquet", threads=args.threads)
        cells.append({"metric_s": round(float(rows.seconds.max()), 2),
                      "evaluate_model_s": round(time.perf_counter() - start, 2),
                      "values": {r.split: round(float(r.value), 3) for r in rows.itertuples()}})
    n_items = 2 * args.items
    warm = [c["metric_s"] for c in cells[1:]] or [cells[0]["metric_s"]]
    warm_s = sum(warm) / len(warm)
    e2e = read_json(ROOT / "benchmarks" / "pipeline_e2e.json")["rules"]["evaluate"]["mean_s"]
    result = {
        "what": "metric lm_eval per cell (tasks wmdp_bio + mmlu_anatomy, max_items each) on the "
                "default's tiny model shape, local made-up snapshots, offline",
        "items_per_task": args.items, "tasks": lcfg["tasks"], "choices_per_item": 4,
        "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "lm_eval": lm_eval.__version__,
        "import_lm_eval_s": round(import_s, 2),
        "first_cell_s": cells[0]["metric_s"],
        "task_index_and_first_load_s": round(cells[0]["metric_s"] - warm_s, 2),
        "warm_cell_s": round(warm_s, 2), "ms_per_item_warm": round(1000 * warm_s / n_items, 1),
        "cells": cells,
        "default_evaluate_job_mean_s": e2e,
        "per_job_overhead_vs_default_evaluate": round((import_s + cells[0]["metric_s"]) / e2e, 2),
    }
    write_json(ROOT / "benchmarks" / "lm_eval_cost.json", result)
    print({k: v for k, v in result.items() if k != "cells"})


if __name__ == "__main__":
    main()
