"""The evaluate stage: every configured metric on one (model, quant) cell, written as a long
metrics table (one row per metric × split × statistic) and a per-item samples table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class EvalContext:
    """What a metric sees: the model, the prepared splits, the evaluation config, the cell's
    keys, and, for PrivLeak, the retrain models' metrics by reference name (`references`:
    full, matched) and the references this model is itself (`self_references`: the retrain
    model is its own matched reference, and its own full one at full precision). `template`
    is the prompt template the metrics put questions in (the data folder's, relapse.data.
    prompts); `prompts` is its object, whose methods take the model's tokenizer."""
    model: Any
    tokenizer: Any
    data_dir: Path
    cfg: dict
    batch_size: int
    references: dict[str, pd.DataFrame] = field(default_factory=dict)
    self_references: frozenset[str] = frozenset()
    keys: dict[str, Any] = field(default_factory=dict)
    template: str = "qa"
    _scored: dict = field(default_factory=dict, repr=False)

    def split(self, name: str, max_items: int | None = None) -> pd.DataFrame:
        from relapse.data.prepare import load_split

        if max_items is not None and max_items < 1:
            # 0 would mean "all items" to a truthiness test: a silently full evaluation
            raise ValueError(f"max_items for split {name!r} is {max_items}; it must be at least "
                             "1, or null for every item")
        frame = load_split(self.data_dir, name)
        return frame.head(max_items) if max_items is not None else frame

    @property
    def prompts(self):
        from relapse.data.prompts import get_template

        return get_template(self.template)

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


DTYPES = ("float32", "bfloat16", "float16")
KERNELS = ("dequantized", "native")   # relapse.quantize.native; a row records which


def read_retrain_metrics(path: str | Path, keys: dict[str, Any],
                         reference: str = "matched") -> pd.DataFrame:
    """The retrain model's metrics table, checked to be of the same bench as `keys` and, for the
    `matched` reference, of the same quant; for `full`, of the full-precision cell (quant
    scheme none)."""
    frame = pd.read_parquet(path)
    quant = ("quant", keys["quant"], "the same quant as this model") if reference == "matched" \
        else ("quant_scheme", "none", "the full-precision retrain")
    for column, value, why in (("bench", keys["bench"], "the same bench as this model"), quant):
        found = set(frame[column]) if column in frame else set()
        if found != {value}:
            raise ValueError(f"{path}: retrain metrics are for {column} {sorted(found)}, but "
                             f"PrivLeak's {reference} reference needs {column} {value!r} ({why})")
    if "method" in frame and set(frame.method) != {"retrain"}:
        raise ValueError(f"{path}: not the retrain model's metrics "
                         f"(method {sorted(set(frame.method))})")
    # Metrics that need the retrain cell's per-item scores (TOFU's forget quality) read its
    # samples.parquet beside this file.
    frame.attrs["path"] = str(path)
    return frame


def self_references(keys: dict[str, Any]) -> frozenset[str]:
    """The PrivLeak references that this cell is itself: any retrain cell is its own matched
    reference, and the full-precision one (scheme none) its own full reference."""
    if keys.get("method") != "retrain" or keys.get("attack"):   # an attacked retrain is not it
        return frozenset()
    return frozenset({"matched", "full"} if keys.get("quant_scheme") == "none" else {"matched"})


def cell_name(keys: dict[str, Any]) -> str:
    name = "/".join(str(keys[k]) for k in ("bench", "method", "hp") if k in keys)
    name += f"/s{keys['seed']}" if "seed" in keys else ""
    name += f"/{keys['quant']}" if "quant" in keys else ""
    attack = {k: v for k, v in keys.items() if k.startswith("attack") and v is not None}
    return name + (f" {attack}" if attack else "")


def require_finite(rows: list[dict], keys: dict[str, Any]) -> None:
    """A NaN or infinite metric means broken weights or a broken metric, never a result: stop
    the job, naming the cell and each bad metric, instead of writing it into the tables."""
    import math

    bad = [f"{r['metric']}/{r['split']}/{r['stat']} = {r['value']}" for r in rows
           if not math.isfinite(float(r["value"]))]
    if bad:
        raise FloatingPointError(f"cell {cell_name(keys)}: non-finite metric value(s): "
                                 f"{'; '.join(bad)}. The model's weights may be corrupt or "
                                 "diverged; nothing was written")


def evaluate_model(model_dir: str | Path, data_dir: str | Path, keys: dict[str, Any],
                   eval_cfg: dict, metrics_out: str | Path, samples_out: str | Path,
                   device: str = "cpu", threads: int = 1,
                   retrain_metrics: str | Path | None = None,
                   full_retrain_metrics: str | Path | None = None) -> pd.DataFrame:
    """Run every metric of `eval_cfg` on one model folder, loaded in `eval_cfg["dtype"]`
    (float32 unless set, on every device: DESIGN §7) with `eval_cfg["kernels"]`: the
    dequantized weights (default) or the scheme's native kernels. PrivLeak takes AUC_retrain from
    `retrain_metrics` (the retrain model's metrics.parquet at the same bench and quant: the
    `matched` reference) or `full_retrain_metrics` (the full-precision retrain's: `full`); a
    model that is its own reference needs no table."""
    import time

    from relapse.data.prepare import data_template
    from relapse.evaluate.registry import get_metric
    from relapse.io import write_parquet
    from relapse.models.io import read_manifest
    from relapse.models.tokenizer import load_tokenizer
    from relapse.provenance import provenance
    from relapse.seeding import seed_everything

    dtype = eval_cfg.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"evaluation.dtype: {dtype!r} is not allowed; allowed: "
                         f"{', '.join(DTYPES)}")
    kernels = eval_cfg.get("kernels", "dequantized")
    if kernels not in KERNELS:
        raise ValueError(f"evaluation.kernels: {kernels!r} is not allowed; allowed: "
                         f"{', '.join(KERNELS)}")
    if keys.get("attack"):
        # An attacked cell's folder holds the attack's own weights (relearned, pruned), not a
        # packed checkpoint; it is evaluated as saved, and its rows say so.
        kernels = "dequantized"
    # A wrong retrain table fails here, before the model is loaded.
    given = {"matched": retrain_metrics, "full": full_retrain_metrics}
    references = {name: read_retrain_metrics(path, keys, name)
                  for name, path in given.items() if path}
    seed_everything(0, threads)
    model_dir = Path(model_dir)
    from relapse.quantize.runtime import load_quantized_model

    model = load_quantized_model(model_dir, device=device, dtype=dtype,
                                 native=kernels == "native")
    if kernels == "native":
        # a native kernel may compute in its own dtype (GPTQModel's: fp16 or bf16 only)
        dtype = getattr(model, "compute_dtype", None) or str(
            model.get_input_embeddings().weight.dtype).removeprefix("torch.")
    tokenizer = load_tokenizer(model_dir)
    quant = read_manifest(model_dir, "quant_manifest.json")
    ctx = EvalContext(model, tokenizer, Path(data_dir), eval_cfg, eval_cfg.get("batch_size", 32),
                      references=references, self_references=self_references(keys), keys=keys,
                      template=data_template(data_dir))
    boot = eval_cfg.get("bootstrap", {})
    rows, samples = [], []
    for name in eval_cfg.get("metrics", ["knowmem", "verbmem", "privleak", "utility"]):
        start = time.time()
        for result in get_metric(name)(ctx):
            mean, low, high = result.estimate(boot.get("samples", 1000), boot.get("seed", 0))
            s = result.scale
            rows.append({**keys, "metric": result.metric, "split": result.split,
                         "stat": result.stat, "value": mean * s, "ci_low": low * s,
                         "ci_high": high * s, "n": len(result.scores), "dtype": dtype,
                         "kernels": kernels, "template": ctx.template,
                         **result.columns, "seconds": time.time() - start})
            samples += [{**keys, "metric": result.metric, "split": result.split, **item}
                        for item in result.samples]
    require_finite(rows, keys)
    meta = provenance(eval_cfg, keys=keys, quantization=quant,
                      runtime=getattr(model, "info", None))
    metrics = pd.DataFrame(rows)
    write_parquet(metrics_out, metrics, meta)
    write_parquet(samples_out, pd.DataFrame(samples), meta)
    return metrics
