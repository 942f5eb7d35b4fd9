"""Load and save models: safetensors only, never remote code unless the config asks for it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# chat_template.jinja: transformers 5 keeps a chat template there; gguf_tokenizer.json: the GGUF
# tokenizer fields of a model loaded from GGUF (relapse.models.gguf), which export-gguf writes back.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "gguf_tokenizer.json")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested, but torch sees no CUDA device "
                           f"(torch {torch.__version__}, a CPU build?). Use device: cpu or auto.")
    return device


def load_model(path: str | Path, device: str = "cpu", dtype: str = "float32",
               trust_remote_code: bool = False):
    """A causal LM from a folder holding safetensors weights (pickle files are refused)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} holds no .safetensors weights; relapse loads safetensors "
                                "only (pickled .bin files can run code on load)")
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, dtype), use_safetensors=True,
        trust_remote_code=trust_remote_code)
    return model.to(device).eval()


def save_model(model, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> None:
    """Write weights as safetensors, and copy the tokenizer files beside them."""
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out_dir)


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    src, dst = Path(src), Path(dst)
    copied = False
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
            copied = True
    if not copied:
        raise FileNotFoundError(f"no tokenizer files in {src}")


def read_manifest(path: str | Path, name: str) -> dict:
    file = Path(path) / name
    return json.loads(file.read_text()) if file.exists() else {}
