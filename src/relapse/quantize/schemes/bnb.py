from relapse.quantize.modules import MODULE_SETTINGS
from relapse.quantize.registry import Quantizer, register_quantizer


@register_quantizer
class BitsAndBytes(Quantizer):
    """bitsandbytes, what the seed paper's code ran: 4 bits as `fp4` (load_in_4bit's default) or
    `nf4`, absmax per block of `blocksize` weights, optionally with double quantization of the
    absmax; 8 bits as LLM.int8 (row-wise absmax int8). The weights are quantized and dequantized
    by bitsandbytes' own functions, so they are exactly the values its kernels compute with.

    LLM.int8 also quantizes activations (every input column without an outlier above
    `threshold` goes through an int8 matmul). With `int8_activations: true` (the default) the
    evaluation runs those bitsandbytes Linear8bitLt modules, as `load_in_8bit` does; false
    evaluates the int8 weights alone."""
    name = "bnb"
    supported_bits = (4, 8)
    library = "bitsandbytes"
    settings_defaults = {"quant_type": "fp4", "blocksize": 64, "double_quant": False,
                         "int8_activations": True, "threshold": 6.0, **MODULE_SETTINGS}

    def validate(self, settings, bits):
        if settings["quant_type"] not in ("fp4", "nf4"):
            raise ValueError(f"bnb: quant_type must be fp4 or nf4 (4 bits), "
                             f"got {settings['quant_type']!r}")
        if settings["blocksize"] not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise ValueError(f"bnb: blocksize must be a power of two from 32 to 4096, "
                             f"got {settings['blocksize']!r}")
        if not settings["threshold"] >= 0:
            raise ValueError(f"bnb: threshold must be >= 0, got {settings['threshold']!r}")

    def quantize(self, model, bits, settings, job):
        from relapse.quantize.bnb import bnb_4bit, bnb_int8, codebook_4bit
        from relapse.quantize.modules import quantize_weights

        settings = self.resolve(settings, bits)
        codebook = None
        if bits == 4:
            codebook = codebook_4bit(settings["quant_type"])

            def one(weight):
                return bnb_4bit(weight, settings["quant_type"], settings["blocksize"],
                                settings["double_quant"])
        else:
            one = bnb_int8
        names, _ = quantize_weights(model, settings, job, one, codebook=codebook)
        used = {**settings, "modules": len(names)}
        if bits == 8:
            used["format"] = "llm.int8"
            used["runtime"] = "bnb_int8" if settings["int8_activations"] else "weights"
            used["quantized_modules"] = names
        else:
            used["format"] = settings["quant_type"]
        return used
