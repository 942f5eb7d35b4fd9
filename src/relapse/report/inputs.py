"""The tables the report reads beside the metrics, and their schemas.

Per-item scores (each cell's samples.parquet, `--samples`): what the report's intervals resample.

Survival diagnostics (one file per cell, `results/{bench}/{method}/{hp}/s{seed}/{quant}/
diagnostics.parquet`): a row per decoder Linear layer of an unlearned x quantized model.
Relearning curves (one table, `--relearn`): a row per (model, quant, attack step, metric).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

DIAGNOSTICS_COLUMNS = {
    "bench": "benchmark", "method": "unlearning method", "hp": "hp id", "seed": "seed",
    "quant": "quant id", "scheme": "quant scheme", "bits": "bit width",
    "module": "module name, e.g. model.layers.0.self_attn.q_proj", "layer": "decoder layer index",
    "delta_over_step": "mean |W_u - W_t| / quantization step",
    "same_code_fraction": "share of weights whose quantized code equals the target's",
    "update_survival": "projection of the quantized update onto the full-precision one on "
                       "forget activations (1: survives, 0: erased)",
    "cosine": "cosine of the two updates", "norm_ratio": "norm of quantized / full update",
}
RELEARN_COLUMNS = {
    "bench": "benchmark", "method": "unlearning method", "hp": "hp id", "seed": "seed",
    "quant": "quant id", "step": "relearning step (0 = before the attack)",
    "metric": "metric name, as in metrics.parquet", "split": "split", "value": "the metric's value",
}


def _check(frame: pd.DataFrame, required: dict, what: str) -> pd.DataFrame:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {', '.join(missing)}; "
                         f"expected {', '.join(required)}")
    return frame


def read_diagnostics(paths: list[str | Path]) -> pd.DataFrame | None:
    """Concatenate the diagnostics files that exist; None when there are none."""
    frames = [pd.read_parquet(p) for p in paths if Path(p).exists()]
    if not frames:
        return None
    return _check(pd.concat(frames, ignore_index=True), DIAGNOSTICS_COLUMNS, "diagnostics")


SAMPLE_KEYS = ("bench", "method", "hp", "seed", "quant", "metric", "split", "item")


def read_samples(paths: list[str | Path], metrics: set[str], splits: set[str],
                 scores: set[str]) -> pd.DataFrame | None:
    """The per-item scores of every cell's samples.parquet: only the key columns and the score
    columns `scores`, only rows of `metrics` x `splits` (the prompts and generations stay on
    disk: they are most of the file). None when no file has any such row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in paths:
        if not Path(path).exists():
            continue
        names = set(pq.read_schema(path).names)
        if not set(SAMPLE_KEYS) <= names or not scores & names:
            continue     # a cell without item scores (none of its metrics has any)
        columns = list(SAMPLE_KEYS) + sorted(scores & names)
        tables.append(pq.read_table(path, columns=columns,
                                    filters=[("metric", "in", sorted(metrics)),
                                             ("split", "in", sorted(splits))]))
    if not tables:
        return None
    frame = pa.concat_tables(tables, promote_options="default").to_pandas()
    return frame if len(frame) else None


ATTACK_KEYS = ("attack", "attack_data", "attack_steps", "sparsity")


def read_item_scores(paths: list[str | Path], metric: str, splits: set[str], score: str,
                     extra: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """Per-item `score` of `metric` on `splits` from samples.parquet files of un-attacked and
    attacked cells alike: the key columns, the attack's key columns (attack `none` for an
    un-attacked cell), `score` and the `extra` columns a file has (e.g. an MIA text's
    `member`). None when no file has any such row."""
    import pyarrow.parquet as pq

    frames = []
    for path in paths:
        if not Path(path).exists():
            continue
        names = set(pq.read_schema(path).names)
        if not set(SAMPLE_KEYS) <= names or score not in names:
            continue
        columns = list(SAMPLE_KEYS) + [k for k in ATTACK_KEYS if k in names] + [score] + \
            [c for c in extra if c in names]
        frame = pq.read_table(path, columns=columns,
                              filters=[("metric", "=", metric),
                                       ("split", "in", sorted(splits))]).to_pandas()
        frames.append(frame)
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    out = pd.concat(frames, ignore_index=True)
    for key in ATTACK_KEYS:
        if key not in out:
            out[key] = None
    out["attack"] = out.attack.fillna("none")
    out["attack_data"] = out.attack_data.fillna("none")
    out["attack_steps"] = pd.to_numeric(out.attack_steps).fillna(0.0)
    out["sparsity"] = pd.to_numeric(out.sparsity)
    return out


def read_relearn(path: str | Path | None) -> pd.DataFrame | None:
    if not path or not Path(path).exists():
        return None
    frame = pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path)
    return _check(frame, RELEARN_COLUMNS, "relearn table")
