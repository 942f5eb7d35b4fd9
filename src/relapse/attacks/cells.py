"""Load an attacked cell's model folder without the quantize stage's runtime (attacks sit on
the same floor as quantize, so they do not import it): a quantized folder's codes load
(relapse.models.codes) as the dequantized weights exactly on their grid, which plain Linear
modules compute with; the scheme's kernels
(LLM.int8) are the evaluation's business. A `lora_merge: adapter` cell gets its adapter on top."""

from __future__ import annotations

from pathlib import Path


def load_cell(folder: str | Path, device: str = "cpu", dtype: str = "float32",
              adapter: bool = True):
    from relapse.models.io import load_model, read_manifest

    folder = Path(folder)
    model = load_model(folder, device=device, dtype=dtype)
    has_adapter = read_manifest(folder, "quant_manifest.json").get("lora_merge") == "adapter" \
        and (folder / "adapter").is_dir()
    if has_adapter and not adapter:
        raise NotImplementedError(f"{folder}: a cell with a separate LoRA adapter "
                                  "(lora_merge: adapter) is not supported here")
    if has_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder / "adapter"))
    return model.eval()
