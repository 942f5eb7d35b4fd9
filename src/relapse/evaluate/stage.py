"""The evaluate stage: every configured metric on one (model, quant) cell, written as a long
metrics table (one row per metric × split × statistic) and a per-item samples table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class EvalContext:
    """What a metric sees: the model, the prepared splits, the evaluation config, and, for
    PrivLeak, the retrain model's metrics at the same quant (`retrain_metrics`, None when not
    given) or the fact that this model is the retrain model itself (`is_retrain`)."""
    model: Any
    tokenizer: Any
    data_dir: Path
    cfg: dict
    batch_size: int
    retrain_metrics: pd.DataFrame | None = None
    is_retrain: bool = False
    _scored: dict = field(default_factory=dict, repr=False)

    def split(self, name: str, max_items: int | None = None) -> pd.DataFrame:
        from relapse.data.prepare import load_split

        frame = load_split(self.data_dir, name)
        return frame.head(max_items) if max_items else frame

    def scores(self, texts) -> list:
        """Teacher-forced TextScores of `texts` (evaluate/scoring.py). Each distinct text is
        forwarded once per evaluation: a text that another metric already scored (the holdout
        biographies serve both PrivLeak and perplexity) comes from the cache."""
        from relapse.evaluate.scoring import score_texts

        cfg = self.cfg.get("scoring", {})
        todo = list(dict.fromkeys(t for t in texts if t not in self._scored))
        if todo:
            fresh = score_texts(self.model, self.tokenizer, todo, cfg.get("batch_size", 16),
                                cfg.get("max_tokens"))
            self._scored.update(zip(todo, fresh))
        return [self._scored[t] for t in texts]


def read_retrain_metrics(path: str | Path, keys: dict[str, Any]) -> pd.DataFrame:
    """The retrain model's metrics table, checked to be of the same bench and quant as `keys`
    (PrivLeak is only defined against the retrain model at matched precision)."""
    frame = pd.read_parquet(path)
    for key in ("bench", "quant"):
        found = set(frame[key]) if key in frame else set()
        if found != {keys[key]}:
            raise ValueError(f"{path}: retrain metrics are for {key} {sorted(found)}, but this "
                             f"model is {key} {keys[key]!r}; PrivLeak needs the same {key}")
    if "method" in frame and set(frame.method) != {"retrain"}:
        raise ValueError(f"{path}: not the retrain model's metrics "
                         f"(method {sorted(set(frame.method))})")
    return frame


def evaluate_model(model_dir: str | Path, data_dir: str | Path, keys: dict[str, Any],
                   eval_cfg: dict, metrics_out: str | Path, samples_out: str | Path,
                   device: str = "cpu", threads: int = 1,
                   retrain_metrics: str | Path | None = None) -> pd.DataFrame:
    """Run every metric of `eval_cfg` on one model folder. `retrain_metrics` is the retrain
    model's metrics.parquet at the same bench and quant, from which PrivLeak takes AUC_retrain;
    the retrain model itself needs none (its PrivLeak is 0 by definition)."""
    import time

    from relapse.evaluate.registry import get_metric
    from relapse.io import write_parquet
    from relapse.models.io import read_manifest
    from relapse.models.tokenizer import load_tokenizer
    from relapse.provenance import provenance
    from relapse.seeding import seed_everything

    # A wrong retrain table fails here, before the model is loaded.
    retrain = read_retrain_metrics(retrain_metrics, keys) if retrain_metrics else None
    seed_everything(0, threads)
    model_dir = Path(model_dir)
    dtype = "bfloat16" if device == "cuda" else "float32"
    from relapse.quantize.runtime import load_quantized_model

    model = load_quantized_model(model_dir, device=device, dtype=dtype)
    tokenizer = load_tokenizer(model_dir)
    quant = read_manifest(model_dir, "quant_manifest.json")
    ctx = EvalContext(model, tokenizer, Path(data_dir), eval_cfg, eval_cfg.get("batch_size", 32),
                      retrain_metrics=retrain, is_retrain=keys.get("method") == "retrain")
    boot = eval_cfg.get("bootstrap", {})
    rows, samples = [], []
    for name in eval_cfg.get("metrics", ["knowmem", "verbmem", "privleak", "utility"]):
        start = time.time()
        for result in get_metric(name)(ctx):
            mean, low, high = result.estimate(boot.get("samples", 1000), boot.get("seed", 0))
            s = result.scale
            rows.append({**keys, "metric": result.metric, "split": result.split,
                         "stat": result.stat, "value": mean * s, "ci_low": low * s,
                         "ci_high": high * s, "n": len(result.scores),
                         "seconds": time.time() - start})
            samples += [{**keys, "metric": result.metric, "split": result.split, **item}
                        for item in result.samples]
    meta = provenance(eval_cfg, keys=keys, quantization=quant)
    metrics = pd.DataFrame(rows)
    write_parquet(metrics_out, metrics, meta)
    write_parquet(samples_out, pd.DataFrame(samples), meta)
    return metrics
