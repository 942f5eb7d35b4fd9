"""Local dataset snapshots laid out exactly as the hub lays them out (what `push_to_hub` writes:
one folder per config with `{split}-00000-of-00001.parquet`, declared in the README's `configs:`
metadata), for MUSE and TOFU in both of their layouts. The loaders under test read them through
`datasets.load_dataset`, as they read the hub."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml


def write_snapshot(root: Path, configs: dict[str, dict[str, pd.DataFrame]],
                   folders: dict[str, str] | None = None) -> Path:
    """configs: config -> split -> frame. `folders` maps a config to its data folder (push_to_hub
    puts the `default` config under data/)."""
    root.mkdir(parents=True, exist_ok=True)
    meta = []
    for config, splits in configs.items():
        folder = (folders or {}).get(config, config)
        (root / folder).mkdir(parents=True, exist_ok=True)
        for split, frame in splits.items():
            frame.to_parquet(root / folder / f"{split}-00000-of-00001.parquet", index=False)
        meta.append({"config_name": config, "data_files": [
            {"split": split, "path": f"{folder}/{split}-*"} for split in splits]})
    front = yaml.safe_dump({"configs": meta}, sort_keys=False)
    (root / "README.md").write_text(f"---\n{front}---\n\n# a local snapshot for tests\n")
    return root


def _texts(prefix: str, n: int, words: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"text": [" ".join(f"{prefix}{i}w{j}" for j in range(words))
                                  for i in range(n)]})


def _qa(prefix: str, n: int) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"What is {prefix} {i}?" for i in range(n)],
                         "answer": [f"{prefix} answer {i}" for i in range(n)]})


def muse_snapshot(root: Path, old_names: bool = False, long_words: int = 40,
                  drop: tuple[str, str] | None = None) -> Path:
    """MUSE-shaped: raw 4/6/5/3 texts, verbmem 7, knowmem 8 QA + 3 ICL, privleak 5 each.
    `old_names`: the older retain2_* names; `drop`: a (config, split) left out."""
    retain = "retain2" if old_names else "retain"
    configs = {
        "raw": {"forget": _texts("f", 4, long_words), "retain1": _texts("r", 6),
                "retain2": _texts("e", 5), "holdout": _texts("h", 3)},
        "verbmem": {"forget": pd.DataFrame({"prompt": [f"prompt {i} " for i in range(7)],
                                            "gt": [f"ground truth {i}" for i in range(7)]})},
        "knowmem": {"forget_qa": _qa("forget", 8), "forget_qa_icl": _qa("ficl", 3),
                    f"{retain}_qa": _qa("retain", 8), f"{retain}_qa_icl": _qa("ricl", 3)},
        "privleak": {"forget": _texts("pf", 5), retain: _texts("pr", 5),
                     "holdout": _texts("ph", 5)},
    }
    if drop:
        del configs[drop[0]][drop[1]]
    return write_snapshot(root, configs)


def _perturbed(prefix: str, n: int, base: str) -> pd.DataFrame:
    frame = _qa(prefix, n)
    if base != "answer":
        frame[base] = [f"{prefix} paraphrase {i}" for i in range(n)]
    frame["perturbed_answer"] = [[f"{prefix} wrong {i}.{k}" for k in range(3)] for i in range(n)]
    return frame


def tofu_subsets() -> dict[str, pd.DataFrame]:
    """TOFU-shaped subsets at 1/10 of the hub's sizes for forget10: 40 / 360 / 40."""
    return {
        "forget10": _qa("forget", 40), "retain90": _qa("retain", 360),
        "holdout10": _qa("holdout", 40),
        "real_authors": _qa("real", 10), "world_facts": _qa("world", 12),
        "forget10_perturbed": _perturbed("forget", 40, "paraphrased_answer"),
        "retain_perturbed": _perturbed("retainp", 40, "paraphrased_answer"),
        "real_authors_perturbed": _perturbed("real", 10, "answer"),
        "world_facts_perturbed": _perturbed("world", 12, "answer"),
    }


def tofu_snapshot(root: Path, layout: str = "configs", drop: str | None = None) -> Path:
    """layout `configs`: one config per subset, split train; `default`: the 2024 layout."""
    subsets = {k: v for k, v in tofu_subsets().items() if k != drop}
    if layout == "configs":
        return write_snapshot(root, {name: {"train": frame} for name, frame in subsets.items()})
    return write_snapshot(root, {"default": subsets}, folders={"default": "data"})


def muse_bench_config(source, model_dir, schemes: list[dict], **extra) -> dict:
    """A one-bench MUSE config on a local snapshot and a local model folder (target and retrain
    alike), one `ga` run, the given quantization schemes; `extra` top-level keys over it."""
    return {
        "device": "cpu",
        "benchmarks": {"news": {
            "corpus": {"kind": "muse", "subset": "news", "source": str(source), "max_length": 32},
            "reference": {"kind": "pretrained", "target": str(model_dir),
                          "retrain": str(model_dir)}}},
        "methods": {"ga": {"params": "full", "lr": 1.0e-4, "epochs": 1}},
        "quantization": {"schemes": schemes, "diagnostics": {"enabled": False}},
        **extra,
    }
