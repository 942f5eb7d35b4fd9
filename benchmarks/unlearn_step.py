"""One unlearning step of relapse's loop against a bare torch loop (forward + backward + AdamW)
on the same model and batch. Goal: at most 15% overhead. Writes benchmarks/unlearn_step.json.

    .venv/bin/python benchmarks/unlearn_step.py [--target DIR] [--data DIR] [--steps 30]

The target and data default to the embedded pipeline's (run `make run` first). Both loops run
`ga` (−NLL on the forget batch) with full parameters on one thread, so the only difference is
relapse's machinery: batching from text, the loss registry, the NaN guard, clipping, the
schedule and the per-step log. relapse's step times come from its own train log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from relapse.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def bare_loop(model, batch, steps: int) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"])
        (-out.loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def relapse_steps(target: Path, data: Path, steps: int, batch_size: int) -> list[float]:
    """Time relapse's own loop from its train log (seconds column, per step)."""
    import pandas as pd

    from relapse.unlearn.trainer import unlearn

    n_forget = len(pd.read_parquet(data / "forget.parquet"))
    epochs = max(1, -(-steps * batch_size // n_forget))
    with tempfile.TemporaryDirectory() as tmp:
        unlearn("ga", {"lr": 1e-4, "epochs": epochs, "params": "full"}, 0, target, data,
                {"batch_size": batch_size, "grad_clip": 1.0}, Path(tmp) / "run")
        log = pd.read_parquet(Path(tmp) / "run" / "train_log.parquet")
    seconds = log.seconds.tolist()
    return [b - a for a, b in zip([0.0] + seconds[:-1], seconds)]


def main() -> None:
    import pandas as pd

    from relapse.models.batching import encode
    from relapse.models.io import load_model
    from relapse.models.tokenizer import load_tokenizer
    from relapse.models.modules import make_trainable

    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default=str(ROOT / "results/synthbio/reference/target"))
    parser.add_argument("--data", default=str(ROOT / "results/synthbio/data"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    target, data = Path(args.target), Path(args.data)
    if not target.exists():
        raise SystemExit(f"{target} not found: run `make run` first (or pass --target/--data)")
    torch.set_num_threads(1)
    torch.manual_seed(0)

    ours = relapse_steps(target, data, args.steps, args.batch_size)
    tokenizer = load_tokenizer(target)
    texts = pd.read_parquet(data / "forget.parquet").text.tolist()[:args.batch_size]
    model = make_trainable(load_model(target), "full", {})
    batch = encode(tokenizer, texts, eos=True)
    bare = bare_loop(model, batch, len(ours))
    # Skip the first steps of each (allocator warm-up), compare medians.
    ours_med, bare_med = statistics.median(ours[3:]), statistics.median(bare[3:])
    result = {"method": "ga", "params": "full", "batch_size": args.batch_size,
              "steps": len(ours), "threads": 1,
              "relapse_step_s": round(ours_med, 4), "bare_torch_step_s": round(bare_med, 4),
              "overhead": round(ours_med / bare_med - 1, 3), "goal_overhead": 0.15}
    write_json(ROOT / "benchmarks" / "unlearn_step.json", result)   # temp + rename
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
