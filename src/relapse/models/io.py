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
    """A causal LM from a folder holding safetensors weights (pickle files are refused); a LoRA
    checkpoint (an adapter and a pointer to its base: relapse.models.adapter) is merged in
    memory, and a quantized cell stored as codes (relapse.models.codes) is decoded to its exact
    weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from relapse.models.adapter import is_adapter_checkpoint, load_adapter_checkpoint
    from relapse.models.codes import check_not_legacy, is_codes_folder, load_codes_model

    path = Path(path)
    if is_adapter_checkpoint(path):
        return load_adapter_checkpoint(path, device=device, dtype=dtype,
                                       trust_remote_code=trust_remote_code)
    require_safetensors(path)
    check_not_legacy(path)
    check_model_files(path)
    if is_codes_folder(path):
        return load_codes_model(path, device, dtype, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, dtype), use_safetensors=True,
        trust_remote_code=trust_remote_code)
    return model.to(device).eval()


# Weight files that only pickle can read: loading one can run arbitrary code.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def require_safetensors(path: str | Path) -> None:
    """Refuse a model folder without safetensors weights, naming the pickle files it has, before
    any library could fall back to unpickling them."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder")
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
    found = f"it has only pickle weights ({', '.join(pickled)})" if pickled else \
        "it has no weight files"
    # FileNotFoundError: the safetensors file relapse needs is not there.
    raise FileNotFoundError(
        f"{path}: refusing to load this model: {found}. relapse loads weights from safetensors "
        "only, because unpickling a file can run arbitrary code. Convert it once in a trusted "
        "environment (model.save_pretrained(dir, safe_serialization=True)) and point relapse at "
        "that folder.")


class CorruptModelError(ValueError):
    """A model folder whose files are truncated or unreadable (e.g. a copy cut short)."""


# The SHA-256 of each weight file, written with the weights: a file changed in place afterwards
# (a bad disk, a stray write into a hard-linked copy) keeps its size and its safetensors header,
# loads fine, and would silently yield garbage metrics. Reading a file costs what loading it
# costs; RELAPSE_VERIFY_WEIGHTS=0 (config `integrity.verify_weights: false`) skips it.
WEIGHT_HASHES = "weights.sha256.json"
WEIGHT_GLOB = "model*.safetensors"
_verified: set = set()


def set_weight_verification(enabled: bool) -> None:
    """Turn verify_weights on or off for this process and the jobs it starts (the workflow
    calls it with config `integrity.verify_weights`)."""
    import os

    os.environ["RELAPSE_VERIFY_WEIGHTS"] = "1" if enabled else "0"


def seal_weights(folder: str | Path, known: dict[str, str] | None = None,
                 extra=()) -> None:
    """Record the SHA-256 of the folder's weight files (`known`: name -> hash already computed,
    e.g. by the source's fingerprint); `extra`: files below the folder that its weights are
    read from too (a codes folder reading GPTQModel's native/ checkpoint), by relative path."""
    from relapse.fingerprint import file_sha256
    from relapse.io import write_json

    folder = Path(folder)
    known = known or {}
    hashes = {p.name: known.get(p.name) or file_sha256(p) for p in sorted(folder.glob(WEIGHT_GLOB))}
    hashes.update({name: file_sha256(folder / name) for name in extra})
    write_json(folder / WEIGHT_HASHES, hashes)


def verify_weights(path: str | Path) -> None:
    """Check each weight file against the hash recorded when it was written (folders without a
    record, e.g. written before relapse kept one, are not checked). Once per file per process."""
    import os

    from relapse.fingerprint import file_sha256

    if os.environ.get("RELAPSE_VERIFY_WEIGHTS", "1") == "0":
        return
    path = Path(path)
    record = path / WEIGHT_HASHES
    if not record.exists():
        return
    expected = json.loads(record.read_text())
    for file in sorted(path.glob(WEIGHT_GLOB)):
        if file.name not in expected:
            raise CorruptModelError(f"{file}: a weight file that {record} does not list; the "
                                    "folder was changed after it was written: delete it and "
                                    "rerun the rule that writes it")
    for name, digest in expected.items():
        file = path / name
        if not file.exists():
            raise CorruptModelError(f"{file}: listed in {record} but missing: delete the model "
                                    "folder and rerun the rule that writes it")
        st = file.stat()
        stamp = (str(file.resolve()), st.st_size, st.st_mtime_ns, digest)
        if stamp in _verified:
            continue
        actual = file_sha256(file)
        if actual != digest:
            raise CorruptModelError(
                f"{file}: its content changed after it was written (SHA-256 {actual[:16]}…, "
                f"recorded {digest[:16]}…); the weights are corrupt: delete the model folder "
                "and rerun the rule that writes it")
        _verified.add(stamp)


def check_model_files(path: str | Path) -> None:
    """Read the config and every safetensors header of a model folder, so that a truncated or
    corrupt file fails here, naming the file, instead of deep inside transformers. Opening a
    safetensors file checks that its header covers the whole file (a cut copy does not)."""
    import json

    from safetensors import safe_open

    path = Path(path)
    config = path / "config.json"
    try:
        json.loads(config.read_text())
    except FileNotFoundError:
        raise CorruptModelError(f"{config}: missing; {path} is not a complete model folder "
                                "(delete it and rerun the rule that writes it)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptModelError(f"{config}: not valid JSON ({err}); the model folder is corrupt "
                                "or was cut short: delete it and rerun the rule that writes "
                                "it") from None
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as err:        # safetensors raises its own SafetensorError
            size = file.stat().st_size
            raise CorruptModelError(
                f"{file}: not a readable safetensors file ({size} bytes: {err}); it is truncated "
                "or corrupt: delete the model folder and rerun the rule that writes it") from None
    verify_weights(path)


def save_model(model, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> None:
    """Write weights as safetensors, and copy the tokenizer files beside them."""
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    seal_weights(out_dir)
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
