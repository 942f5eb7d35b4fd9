from relapse.quantize.modules import MODULE_SETTINGS
from relapse.quantize.groups import uniform_group_index
from relapse.quantize.registry import Quantizer, register_quantizer


@register_quantizer
class RoundToNearest(Quantizer):
    """Integer RTN (relapse.quantize.rtn), per channel (group_size -1) or per group of input
    columns, symmetric or asymmetric: the scheme of the seed paper's theory, exact and fast."""
    name = "rtn"
    supported_bits = (2, 3, 4, 5, 6, 7, 8)
    settings_defaults = {"group_size": 64, "symmetric": False, **MODULE_SETTINGS}

    def validate(self, settings, bits):
        g = settings["group_size"]
        if not isinstance(g, int) or (g < 1 and g != -1):
            raise ValueError(f"rtn: group_size must be a positive integer or -1 (per channel), "
                             f"got {g!r}")

    def quantize(self, model, bits, settings, job):
        from relapse.models.codes import rtn_codes as stored_codes
        from relapse.quantize.groups import group_width
        from relapse.quantize.modules import quantize_weights
        from relapse.quantize.rtn import rtn_codes, rtn_dequantize

        settings = self.resolve(settings, bits)
        group, symmetric = settings["group_size"], settings["symmetric"]

        def one(weight):
            codes, scale, zero = rtn_codes(weight, bits, group, symmetric)
            return (rtn_dequantize(codes, scale, zero, weight.shape), scale.squeeze(-1),
                    uniform_group_index(weight.shape[1], group),
                    stored_codes(codes, scale, zero, bits, group_width(weight.shape[1], group),
                                 symmetric, weight.shape))

        names, count = quantize_weights(model, settings, job, one)
        return {**settings, "modules": len(names), "weights_quantized": count}
