"""Loading a quantize-stage folder for inference, the same way on CPU and CUDA: the dequantized
weights, then what the scheme's kernels add on top (LLM.int8's int8 activation matmuls) and, in
`lora_merge: adapter` mode, the full-precision LoRA adapter over the quantized base."""

from __future__ import annotations

from pathlib import Path


def load_quantized_model(model_dir: str | Path, device: str = "cpu", dtype: str = "float32",
                         kernels: bool = True, native: bool = False):
    """`kernels=False` keeps plain Linear modules (the saved weights are exactly the quantized
    values): what the survival diagnostics compare. `native=True` (`evaluation.kernels:
    native`) runs the packed model with its scheme's own kernels (relapse.quantize.native)."""
    from relapse.models.io import load_model, read_manifest

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir, "quant_manifest.json")
    settings = manifest.get("settings", {})
    if native:
        from relapse.quantize.native import load_native

        model = load_native(model_dir, manifest, lambda: load_model(model_dir, device=device,
                                                                     dtype=dtype), device, dtype)
    else:
        model = load_model(model_dir, device=device, dtype=dtype)
        if kernels and settings.get("runtime") == "bnb_int8":
            from relapse.quantize.bnb import swap_in_int8_linear

            swap_in_int8_linear(model, settings["quantized_modules"], settings["threshold"])
    if manifest.get("lora_merge") == "adapter" and (model_dir / "adapter").is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir / "adapter")).eval()
    return model.eval()
