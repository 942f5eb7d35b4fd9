from relapse.quantize.registry import Quantizer, register_quantizer


@register_quantizer
class FullPrecision(Quantizer):
    """The full-precision baseline (`none-w16`): weights unchanged."""
    name = "none"
    supported_bits = (16,)
    library = "none"
    is_identity = True

    def quantize(self, model, bits, settings, job):
        return {}
