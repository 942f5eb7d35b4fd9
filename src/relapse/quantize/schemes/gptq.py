from relapse.quantize.calibration import check_calibration
from relapse.quantize.registry import Quantizer, register_quantizer


@register_quantizer
class GPTQ(Quantizer):
    """GPTQ (Frantar et al.) through GPTQModel (relapse.quantize.gptqmodel_backend): second-order
    error compensation over calibration activations, per group of input columns, optionally in
    act-order (`desc_act`). Decoder Linear layers; lm_head and embeddings stay full precision."""
    name = "gptq"
    supported_bits = (8, 4, 3)
    library = "gptqmodel"
    needs_data = True
    settings_defaults = {"group_size": 128, "desc_act": False, "symmetric": True,
                         "damp_percent": 0.05, "calibration": {}}

    def validate(self, settings, bits):
        check_calibration(settings["calibration"], self.name)
        if settings["group_size"] not in (-1, 16, 32, 64, 128, 256, 512, 1024):
            raise ValueError(f"gptq: group_size must be -1 or a power of two from 16 to 1024, "
                             f"got {settings['group_size']!r}")

    def quantize(self, model, bits, settings, job):
        from relapse.quantize.gptqmodel_backend import gptqmodel_quantize

        settings = self.resolve(settings, bits)
        settings["calibration"] = check_calibration(settings["calibration"], self.name)
        return {**settings, **gptqmodel_quantize("gptq", model, bits, settings, job)}
