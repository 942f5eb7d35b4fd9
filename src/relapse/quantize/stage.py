"""The quantize stage: load a model of the grid, apply one scheme at one bit width, save it.

Output folder: the quantized weights as codes (model.codes.safetensors + quant_codes.json,
relapse.models.codes: packed integer codes, scales, zero points or codebooks, and the unquantized
tensors), which relapse.models.io.load_model decodes to exactly the dequantized weights the
quantizer computed, so the evaluation loads every scheme alike; the grid of every quantized
weight (the survival diagnostics', relapse.quantize.grid) is read from those codes. The
full-precision cell of a LoRA run links its adapter and base pointer, which load_model merges.
Beside them the tokenizer, `quant_manifest.json` (scheme, bits, settings, library and version,
source) and, for gptq/awq, GPTQModel's packed `native/` checkpoint. With `lora_merge: adapter` a
LoRA-unlearned model is its reference base quantized (the target's folder at the same quant,
reused) plus the full-precision `adapter/` on top."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from relapse.models.codes import (CODES_FILE, CODES_JSON, is_codes_folder, read_layout,
                                  referenced_files)

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
CODES_FILES = ("config.json", "generation_config.json", CODES_FILE, CODES_JSON,
               "weights.sha256.json")
MANIFEST = "quant_manifest.json"
LORA_MERGE_MODES = ("merged", "adapter")


def quantize_model(source_dir: str | Path, out_dir: str | Path, scheme: str, bits: int,
                   settings: dict[str, Any], device: str = "cpu", threads: int = 1,
                   data_dir: str | Path | None = None, lora_merge: str = "merged",
                   base_quant_dir: str | Path | None = None) -> dict:
    """Quantize the model folder `source_dir` (a reference or merged unlearned model) into
    `out_dir`. Returns the manifest written."""
    from relapse.io import atomic_dir, link_or_copy, write_json
    from relapse.models.io import TOKENIZER_FILES, read_manifest
    from relapse.provenance import provenance
    from relapse.quantize.registry import QuantJob, get_quantizer

    quantizer = get_quantizer(scheme)
    if bits not in quantizer.supported_bits:
        raise ValueError(f"{scheme} does not support {bits} bits; "
                         f"supported: {', '.join(map(str, quantizer.supported_bits))}")
    if lora_merge not in LORA_MERGE_MODES:
        raise ValueError(f"lora_merge must be one of {LORA_MERGE_MODES}, got {lora_merge!r}")
    if device not in quantizer.devices:
        raise RuntimeError(
            f"quantization scheme {scheme!r} ({quantizer.library}) has kernels only for "
            f"{', '.join(quantizer.devices)}, and this job runs on {device} (quantizing "
            f"{source_dir} into {out_dir}); run it with device: {quantizer.devices[0]} on a "
            f"machine that has one, or choose another scheme")
    import time

    start = time.time()
    source_dir = Path(source_dir)
    adapter_mode = lora_merge == "adapter" and (source_dir / "adapter").is_dir()
    if adapter_mode and base_quant_dir is None:
        raise ValueError(f"{source_dir} is a LoRA run and lora_merge is 'adapter': the quantized "
                         "base (--base-quant) is needed")
    manifest_extra: dict[str, Any] = {"lora_merge": "adapter" if adapter_mode else "merged"}
    with atomic_dir(out_dir) as tmp:
        if adapter_mode:
            # The base is quantized once, in the target's cell; reuse exactly those weights.
            base = Path(base_quant_dir)
            base_manifest = read_manifest(base, MANIFEST)
            if (base_manifest.get("scheme"), base_manifest.get("bits")) != (scheme, bits):
                raise ValueError(f"{base}: quantized as {base_manifest.get('scheme')}-"
                                 f"{base_manifest.get('bits')}, not {scheme}-{bits}")
            # codes (a quantized base) or the weight files themselves (none-w16's, hard links
            # to the target's, sharded for a published 7B)
            names = CODES_FILES + MODEL_FILES + tuple(sorted(
                p.name for p in base.glob("model-*-of-*.safetensors"))) + (
                "model.safetensors.index.json",)
            for name in names:
                if (base / name).exists():
                    shutil.copy2(base / name, tmp / name)
            if is_codes_folder(base):
                # codes read in place from a library's checkpoint (gptq/awq: native/) go along
                for folder in {Path(f).parts[0] for f in referenced_files(read_layout(base))}:
                    shutil.copytree(base / folder, tmp / folder)
            shutil.copytree(source_dir / "adapter", tmp / "adapter")
            for name in TOKENIZER_FILES:
                if (source_dir / name).exists():
                    shutil.copy2(source_dir / name, tmp / name)
            used = base_manifest.get("settings", {})
            manifest_extra["base_quant"] = str(base)
        elif quantizer.is_identity:
            from relapse.models.adapter import ADAPTER_DIR, LORA_BASE, is_adapter_checkpoint
            from relapse.models.io import WEIGHT_HASHES

            # The source's own files, hard-linked: the full-precision cell needs neither torch nor
            # a load/save round trip, nor a second copy of the weights on disk. Every weight file
            # (a published 7B reference is sharded: model-0000k-of-0000n.safetensors + index).
            names = MODEL_FILES + TOKENIZER_FILES + tuple(
                sorted(p.name for p in source_dir.glob("model-*-of-*.safetensors"))) + (
                "model.safetensors.index.json", WEIGHT_HASHES)
            for name in names:
                if (source_dir / name).exists():
                    link_or_copy(source_dir / name, tmp / name)
            if is_adapter_checkpoint(source_dir):
                # a LoRA checkpoint stays an adapter over its base: the loaders merge it
                (tmp / ADAPTER_DIR).mkdir()
                for path in sorted((source_dir / ADAPTER_DIR).iterdir()):
                    link_or_copy(path, tmp / ADAPTER_DIR / path.name)
                link_or_copy(source_dir / LORA_BASE, tmp / LORA_BASE)
            used = quantizer.resolve(settings, bits)
        else:
            from relapse.models.codes import save_codes_folder
            from relapse.models.io import copy_tokenizer, load_model
            from relapse.seeding import seed_everything

            seed_everything(0, threads)
            model = load_model(source_dir, device=device)
            job = QuantJob(source_dir=source_dir, out_dir=tmp,
                           data_dir=Path(data_dir) if data_dir else None,
                           device=device, threads=threads)
            used = quantizer.quantize(model, bits, settings, job)
            layout = save_codes_folder(model, tmp, job.codes, job.steps, job.codebook,
                                       job.dense_sources)
            copy_tokenizer(source_dir, tmp)
            if layout["stored_dense"]:
                used = {**used, "stored_dense": layout["stored_dense"]}
        manifest = {
            "scheme": scheme, "bits": bits, "settings": used, "library": quantizer.library,
            "library_version": quantizer.library_version(), **manifest_extra,
            "seconds": round(time.time() - start, 3),
            "source": str(source_dir),
            "source_manifest": read_manifest(source_dir, "unlearn_manifest.json")
            or read_manifest(source_dir, "reference_manifest.json"),
            **provenance()}
        write_json(tmp / MANIFEST, manifest)
    return manifest
