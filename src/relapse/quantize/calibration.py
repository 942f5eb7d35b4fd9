"""Calibration samples for data-dependent schemes (GPTQ, AWQ), drawn from a prepared split:
`samples` texts picked with a seeded generator, each cut to `seq_len` tokens."""

from __future__ import annotations

from pathlib import Path

CALIBRATION_DEFAULTS = {"split": "retain", "samples": 32, "seq_len": 128, "seed": 0,
                        "batch_size": 8}


def check_calibration(cal: dict, scheme: str) -> dict:
    unknown = set(cal) - set(CALIBRATION_DEFAULTS)
    if unknown:
        raise ValueError(f"{scheme}: unknown calibration setting(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(CALIBRATION_DEFAULTS))}")
    full = {**CALIBRATION_DEFAULTS, **cal}
    for key in ("samples", "seq_len", "batch_size"):
        if not isinstance(full[key], int) or full[key] < 1:
            raise ValueError(f"{scheme}: calibration.{key} must be a positive integer, "
                             f"got {full[key]!r}")
    return full


def calibration_batch(data_dir: str | Path, tokenizer, cal: dict) -> list[dict]:
    """[{input_ids, attention_mask}] lists, one per sample, as GPTQModel takes them."""
    import numpy as np

    from relapse.data.prepare import load_split

    if data_dir is None:
        raise ValueError("calibration needs the prepared data folder (--data)")
    texts = load_split(data_dir, cal["split"])["text"].tolist()
    if not texts:
        raise ValueError(f"calibration split {cal['split']!r} is empty")
    rng = np.random.default_rng(cal["seed"])
    picked = rng.choice(len(texts), size=min(cal["samples"], len(texts)), replace=False)
    out = []
    for i in sorted(picked):
        ids = tokenizer(texts[i], truncation=True, max_length=cal["seq_len"])["input_ids"]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return out
