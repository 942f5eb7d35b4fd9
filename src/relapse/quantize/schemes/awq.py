from relapse.quantize.calibration import check_calibration
from relapse.quantize.registry import Quantizer, register_quantizer


@register_quantizer
class AWQ(Quantizer):
    """Activation-aware weight quantization (Lin et al.) through GPTQModel's AWQ with its torch
    backend: per-input-channel scales searched on calibration activations and folded into the
    preceding norm or Linear, then group-wise 4-bit RTN. Asymmetric (zero point) by default,
    as AWQ's reference implementation."""
    name = "awq"
    supported_bits = (4,)
    library = "gptqmodel"
    needs_data = True
    settings_defaults = {"group_size": 128, "symmetric": False, "calibration": {}}

    def validate(self, settings, bits):
        check_calibration(settings["calibration"], self.name)
        if settings["group_size"] not in (-1, 16, 32, 64, 128):
            raise ValueError(f"awq: group_size must be -1, 16, 32, 64 or 128 (the torch "
                             f"kernel's sizes), got {settings['group_size']!r}")

    def quantize(self, model, bits, settings, job):
        from relapse.quantize.gptqmodel_backend import gptqmodel_quantize

        settings = self.resolve(settings, bits)
        settings["calibration"] = check_calibration(settings["calibration"], self.name)
        return {**settings, "basis": "awq-scaled",
                **gptqmodel_quantize("awq", model, bits, settings, job)}
