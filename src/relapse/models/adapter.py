"""A LoRA checkpoint stored as what it is: the peft adapter (`adapter/`, safetensors) and a
pointer to the base it was trained on (`lora_base.json`: the base folder's path, its content
fingerprint (relapse.fingerprint) and the dtype the base was loaded in for training), instead of
a full fp32 copy of merged weights (27 GB for a 7B model, against ~80 MB of adapter).

`load_model` (relapse.models.io) sees the pointer and merges in memory, so every stage that
needs a merged model (quantize, evaluate, diagnose, attacks) gets the same tensors the merged
checkpoint used to hold: the base as it was loaded for training, upcast to fp32, plus
(B @ A) · scaling per adapted Linear, computed the way peft's `merge_and_unload` computes it
(peft.tuners.lora.layer.Linear.get_delta_weight, then an in-place add), in plain torch, so no
job pays peft's import (7 s, DESIGN §10b). A base whose content changed since training is
refused: the adapter was fitted to the old one.

The merge runs on the CPU whatever device the model then goes to, so every job (a CPU quantize
job, a GPU evaluation) gets the same merged bits. The old checkpoint was merged on the training
device; a CUDA-trained run's old merged folder may therefore differ from this merge in the last
bit of B @ A (the same on one device: tests/test_lora_checkpoint.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LORA_BASE = "lora_base.json"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT = 1


class StaleAdapterError(ValueError):
    """The base a LoRA checkpoint points at is missing or no longer holds the content the
    adapter was trained on."""


def is_adapter_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / LORA_BASE).is_file()


def base_record(base_dir: str | Path, dtype: str) -> dict:
    """What a LoRA checkpoint records of its base, taken when training loads the base."""
    from relapse.fingerprint import fingerprint

    return {"format": FORMAT, "path": str(base_dir), "workdir": os.getcwd(),
            "dtype": dtype, "fingerprint": fingerprint(base_dir)}


def save_adapter_checkpoint(peft_model, folder: str | Path, base: dict,
                            tokenizer_dir: str | Path) -> None:
    """Write `adapter/` (peft's own files), the pointer (with the adapter file's SHA-256, the
    adapter's counterpart of weights.sha256.json) and the tokenizer."""
    from relapse.fingerprint import file_sha256
    from relapse.io import write_json
    from relapse.models.io import copy_tokenizer

    folder = Path(folder)
    peft_model.save_pretrained(str(folder / ADAPTER_DIR), safe_serialization=True)
    write_json(folder / LORA_BASE, {
        **base, "adapter_sha256": file_sha256(folder / ADAPTER_DIR / ADAPTER_WEIGHTS)})
    copy_tokenizer(tokenizer_dir, folder)


def _base_path(record: dict) -> Path:
    """The base folder: its recorded path as the job saw it (relative to the workflow's working
    directory), from here or from that directory."""
    path = Path(record["path"]).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return Path(record.get("workdir", ".")) / path


def check_base(folder: str | Path) -> tuple[Path, dict]:
    """(base folder, pointer record) of a LoRA checkpoint, after checking that the base still
    holds the content the adapter was trained on."""
    from relapse.fingerprint import fingerprint

    folder = Path(folder)
    record = json.loads((folder / LORA_BASE).read_text())
    if record.get("format") != FORMAT:
        raise StaleAdapterError(f"{folder / LORA_BASE}: format {record.get('format')!r}, this "
                                f"relapse reads format {FORMAT}: rerun the unlearning run")
    base = _base_path(record)
    rerun = (f"delete {folder} (and the unlearning run it came from) and rerun it, so that the "
             "adapter is trained on the base as it is now")
    if not base.is_dir():
        raise StaleAdapterError(f"{folder} is a LoRA adapter over the base {base}, which does "
                                f"not exist (any more): {rerun}")
    now = fingerprint(base)["sha256"]
    then = record["fingerprint"]["sha256"]
    if now != then:
        raise StaleAdapterError(
            f"{folder} is a LoRA adapter trained on {base}, whose content has changed since "
            f"(fingerprint {now[:16]}…, recorded {then[:16]}…): the adapter no longer applies "
            f"to it. {rerun}")
    return base, record


def _verify_adapter(folder: Path, record: dict) -> None:
    from relapse.fingerprint import file_sha256
    from relapse.models.io import CorruptModelError

    if os.environ.get("RELAPSE_VERIFY_WEIGHTS", "1") == "0" or "adapter_sha256" not in record:
        return
    file = folder / ADAPTER_DIR / ADAPTER_WEIGHTS
    if not file.exists():
        raise CorruptModelError(f"{file}: missing; {folder} is not a complete LoRA checkpoint "
                                "(delete it and rerun the rule that writes it)")
    if file_sha256(file) != record["adapter_sha256"]:
        raise CorruptModelError(f"{file}: its content changed after it was written; delete "
                                f"{folder} and rerun the rule that writes it")


def lora_deltas(adapter_dir: str | Path) -> dict:
    """Linear module name -> (A, B, scaling, fan_in_fan_out) of a saved peft LoRA adapter.
    Only plain LoRA is read (what relapse.models.modules.make_trainable trains); any variant
    whose merge is not B @ A · alpha/r is refused rather than merged wrongly."""
    import math

    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    unsupported = {key: config.get(key) for key in
                   ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "lora_bias")
                   if config.get(key)}
    if config.get("peft_type") != "LORA" or unsupported:
        raise ValueError(f"{adapter_dir}: a {config.get('peft_type')} adapter with "
                         f"{unsupported or 'no LoRA settings'}; relapse merges plain LoRA only")
    r, alpha = config["r"], config["lora_alpha"]
    # peft's LoraLayer.update_layer: a Python float, multiplied into the fp32 product
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    weights = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    modules: dict = {}
    for key, tensor in weights.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if key.endswith(marker):
                name = key[:-len(marker)].removeprefix("base_model.model.")
                modules.setdefault(name, {})[part] = tensor
    incomplete = sorted(n for n, parts in modules.items() if len(parts) != 2)
    if not modules or incomplete:
        raise ValueError(f"{adapter_dir}: no complete lora_A/lora_B pair for "
                         f"{incomplete or 'any module'}")
    fan = bool(config.get("fan_in_fan_out"))
    return {n: (p["lora_A"], p["lora_B"], scaling, fan) for n, p in modules.items()}


def merge_lora(model, adapter_dir: str | Path) -> None:
    """W += (B @ A) · scaling for every adapted Linear of `model` (fp32), in place, in peft's
    order of operations (so the sums round as peft's merge rounds them)."""
    import torch

    with torch.no_grad():
        for name, (a, b, scaling, fan_in_fan_out) in lora_deltas(adapter_dir).items():
            weight = model.get_submodule(name).weight
            delta = b.to(weight.device) @ a.to(weight.device)
            delta = (delta.T if fan_in_fan_out else delta) * scaling
            weight.data += delta


def load_adapter_checkpoint(folder: str | Path, device: str = "cpu", dtype: str = "float32",
                            trust_remote_code: bool = False):
    """The merged model of a LoRA checkpoint: its base loaded as training loaded it, upcast to
    fp32 (as the old save did before merging), merged on the CPU, then cast to `dtype`."""
    import torch

    from relapse.models.io import load_model

    folder = Path(folder)
    base, record = check_base(folder)
    _verify_adapter(folder, record)
    model = load_model(base, device="cpu", dtype=record.get("dtype", "float32"),
                       trust_remote_code=trust_remote_code)
    model = model.float()
    merge_lora(model, folder / ADAPTER_DIR)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    return model.to(device).eval()
