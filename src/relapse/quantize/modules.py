"""Which weights a scheme quantizes: the decoder Linear layers always; the output head and the
input embeddings only when asked (`lm_head: true`, `embeddings: true`). bitsandbytes' and
GPTQModel's defaults leave both in full precision, and so do we."""

from __future__ import annotations

MODULE_SETTINGS = {"lm_head": False, "embeddings": False}


def quantized_module_names(model, settings: dict) -> list[str]:
    from relapse.unlearn.params import decoder_linear_names

    names = decoder_linear_names(model)
    by_module = {module: name for name, module in model.named_modules()}
    if settings.get("lm_head"):
        names.append(by_module[model.get_output_embeddings()])
    if settings.get("embeddings"):
        names.append(by_module[model.get_input_embeddings()])
    return names
