"""Reference `kind: pretrained`: published target and retrain models (MUSE's `…_target` /
`…_retrain`, TOFU's full and retain models), from the hub or from a local folder.

Safetensors only: a model whose weights exist only as pickle files (pytorch_model.bin, *.pt)
is refused, because unpickling runs code. `trust_remote_code` is passed on only where the config
sets it. Both folders get the target's tokenizer (a retrain model must read the same token ids),
with a pad token when it has none (Llama-2's has none; batching needs one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# What a model folder needs besides its weights; *.py only travels with trust_remote_code.
META_FILES = ("config.json", "generation_config.json")
HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer.model",
                "*.jinja", "*.txt"]


class PretrainedError(ValueError):
    """A pretrained reference that relapse will not load."""


def model_source(ref_cfg: dict, which: str) -> tuple[str, str | None]:
    """(hub id or folder, revision) of the target or retrain model."""
    if which not in ("target", "retrain"):
        raise ValueError(f"reference model {which!r}: expected target or retrain")
    if not ref_cfg.get(which):
        raise PretrainedError(f"reference.{which}: required with kind: pretrained (a hub id or "
                              "a local model folder)")
    revision = ref_cfg.get("revision")
    if isinstance(revision, dict):
        revision = revision.get(which)
    return ref_cfg[which], revision


def is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def safetensors_files(folder: str | Path, label: str = "") -> list[Path]:
    """The folder's .safetensors files; a folder with only pickle weights is refused."""
    folder = Path(folder)
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    what = f"{label} " if label else ""
    if pickles:
        raise PretrainedError(
            f"{what}{folder}: only pickle weights ({', '.join(pickles)}); relapse loads "
            "safetensors only, because unpickling a checkpoint can run code. Convert it once "
            "where you trust it (model.save_pretrained(out, safe_serialization=True)) and point "
            "the config at the converted folder")
    raise PretrainedError(f"{what}{folder}: no .safetensors weights; files there: "
                          f"{', '.join(sorted(p.name for p in folder.iterdir())) or 'none'}")


def check_reference(ref_cfg: dict) -> None:
    """At validation: local folders must hold safetensors (hub ids are checked when fetched)."""
    for which in ("target", "retrain"):
        source, _ = model_source(ref_cfg, which)
        if is_local(source):
            safetensors_files(Path(source).expanduser(), f"reference.{which}:")


def snapshot(source: str, revision: str | None, trust_remote_code: bool = False) -> Path:
    """A local folder holding the model: the folder itself, or a hub snapshot of only the files
    relapse reads (safetensors, JSON configs, tokenizer; code only with trust_remote_code)."""
    if is_local(source):
        return Path(source).expanduser()
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS + (["*.py"] if trust_remote_code else [])
    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=patterns))
    except Exception as err:  # no network, an unknown repo or revision, a gated model
        raise PretrainedError(f"cannot download {source!r} at revision {revision or 'main'} "
                              f"from the hub ({type(err).__name__}: {err})") from None


def ensure_pad_token(tokenizer) -> str | None:
    """Give a tokenizer without a pad token its EOS (or UNK) as pad; returns the token it set.
    A new token would need a resized embedding that the published weights do not have; padding
    never reaches the loss (labels are -100 wherever the attention mask is 0)."""
    if tokenizer.pad_token is not None:
        return None
    pad = tokenizer.eos_token or tokenizer.unk_token
    if pad is None:
        raise PretrainedError("the target's tokenizer has no pad, eos or unk token to pad with")
    tokenizer.pad_token = pad
    return pad


def training_dtype(ref_cfg: dict, device: str) -> str:
    """The dtype pretrained weights are trained in: bf16 on CUDA (trainable parameters are kept
    in fp32 by the trainer, DESIGN §6), fp32 on the CPU, unless `reference.dtype` sets one."""
    dtype = ref_cfg.get("dtype", "auto")
    if dtype != "auto":
        return dtype
    return "bfloat16" if device == "cuda" else "float32"


def fetch_reference(ref_cfg: dict, which: str, out_dir: str | Path) -> dict[str, Any]:
    """Write the target or retrain model as a relapse model folder: its safetensors and config,
    and the target's tokenizer with a pad token. The manifest records source, revision, the
    resolved snapshot and every file."""
    from transformers import AutoConfig, AutoTokenizer

    from relapse.fingerprint import local_fingerprint, weight_hashes
    from relapse.models.io import seal_weights
    from relapse.io import atomic_dir, link_or_copy, write_json
    from relapse.provenance import provenance

    trust = bool(ref_cfg.get("trust_remote_code", False))
    source, revision = model_source(ref_cfg, which)
    folder = snapshot(source, revision, trust)
    weights = safetensors_files(folder, f"reference.{which}:")
    index = sorted(folder.glob("*.safetensors.index.json"))
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust)
    tok_source, tok_revision = model_source(ref_cfg, "target")
    tok_folder = folder if which == "target" else snapshot(tok_source, tok_revision, trust)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_folder), trust_remote_code=trust)
    pad = ensure_pad_token(tokenizer)
    with atomic_dir(out_dir) as tmp:
        files = weights + index + [folder / n for n in META_FILES if (folder / n).exists()]
        if trust:
            files += sorted(folder.glob("*.py"))
        for path in files:
            link_or_copy(path, tmp / path.name)
        tokenizer.save_pretrained(str(tmp))
        seal_weights(tmp, weight_hashes(folder) if is_local(source) else None)
        manifest = {
            "which": which, "kind": "pretrained", "source": source, "revision": revision,
            "snapshot": str(folder), "local": is_local(source),
            # A local folder is pinned by its content, a hub id by the commit it resolved to
            # (hub snapshots live in .../snapshots/<commit>): a rerun never mixes two silently.
            "source_sha256": local_fingerprint(source) if is_local(source) else None,
            "resolved_revision": None if is_local(source) else folder.name,
            "architecture": (config.architectures or [config.model_type])[0],
            "files": {p.name: p.stat().st_size for p in files},
            "tokenizer_from": tok_source, "pad_token_added": pad,
            "trust_remote_code": trust, **provenance(ref_cfg)}
        write_json(tmp / "reference_manifest.json", manifest)
    return manifest
