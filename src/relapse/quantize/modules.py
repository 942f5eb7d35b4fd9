"""Which weights a scheme quantizes: the decoder Linear layers always; the output head and the
input embeddings only when asked (`lm_head: true`, `embeddings: true`). bitsandbytes' and
GPTQModel's defaults leave both in full precision, and so do we."""

from __future__ import annotations

MODULE_SETTINGS = {"lm_head": False, "embeddings": False}


def quantized_module_names(model, settings: dict) -> list[str]:
    from relapse.models.modules import decoder_linear_names

    names = decoder_linear_names(model)
    by_module = {module: name for name, module in model.named_modules()}
    if settings.get("lm_head"):
        names.append(by_module[model.get_output_embeddings()])
    if settings.get("embeddings"):
        names.append(by_module[model.get_input_embeddings()])
    return names


def quantize_weights(model, settings: dict, job, quantize_one, codebook=None
                     ) -> tuple[list[str], int]:
    """Replace every selected weight W by quantize_one(W) -> (dequantized, step, group_index,
    codes), recording the step for the diagnostics and the codes (relapse.models.codes) the
    folder stores. With a `codebook` (a non-uniform scheme's table on [-1, 1]), quantize_one
    returns the block absmax in place of the step. Returns the module names and the weight
    count."""
    import torch

    job.codebook = codebook
    names = quantized_module_names(model, settings)
    count = 0
    with torch.no_grad():
        for name in names:
            weight = model.get_submodule(name).weight
            dequantized, step, group_index, codes = quantize_one(weight)
            weight.copy_(dequantized)
            job.record_step(name, step, group_index)
            job.record_codes(name, codes)
            count += weight.numel()
    return names, count
