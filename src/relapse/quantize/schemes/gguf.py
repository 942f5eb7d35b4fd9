from relapse.quantize.modules import MODULE_SETTINGS
from relapse.quantize.groups import uniform_group_index
from relapse.quantize.registry import Quantizer, register_quantizer


@register_quantizer
class GGUFBlocks(Quantizer):
    """llama.cpp's block formats (relapse.quantize.gguf), quantized and dequantized by the `gguf`
    package: what a model exported with `relapse export-gguf --type TYPE` runs in llama.cpp or
    ollama. Bits pick the type: 8 -> q8_0, 5 -> q5_0 (or q5_1), 4 -> q4_0 (or q4_1); `type`
    names one explicitly and must have the cell's bits."""
    name = "gguf"
    supported_bits = (4, 5, 8)
    library = "gguf"
    settings_defaults = {"type": None, **MODULE_SETTINGS}

    def validate(self, settings, bits):
        from relapse.quantize.gguf import GGUF_TYPES, describe_types

        kind = settings["type"]
        if kind is None:
            return
        if kind not in GGUF_TYPES:
            raise ValueError(f"gguf: type {kind!r} is unknown; allowed: {describe_types()}")
        if bits is not None and GGUF_TYPES[kind] != bits:
            raise ValueError(f"gguf: type {kind} has {GGUF_TYPES[kind]} bits, not {bits}; "
                             f"types: {describe_types()}")

    def gguf_type(self, settings, bits) -> str:
        from relapse.quantize.gguf import default_type

        return settings.get("type") or default_type(bits)

    def quantize(self, model, bits, settings, job):
        from relapse.quantize.gguf import BLOCK, fake_quantize
        from relapse.quantize.modules import quantize_weights

        settings = self.resolve(settings, bits)
        kind = self.gguf_type(settings, bits)

        def one(weight):
            values, step, codes = fake_quantize(weight, kind, with_codes=True)
            return values, step, uniform_group_index(weight.shape[1], BLOCK), codes

        names, count = quantize_weights(model, settings, job, one)
        return {**settings, "type": kind, "block_size": BLOCK, "modules": len(names),
                "weights_quantized": count}
