from relapse.unlearn.registry import register_regularizer

# torch is imported inside the losses: config validation reads this registry without it.


@register_regularizer("klr", needs_reference=True,
                      reduction={"paper": "token", "muse": "sequence"})
def kl_on_retain(ctx, batch, hp):
    """KLR: KL(p_ref ‖ p_θ) over the vocabulary on retain tokens, averaged per token.
    loss_variant muse: MUSE's code, F.kl_div(logits, ref_logits, batchmean, log_target=True) on
    raw logits: neither argument is a log-distribution, so it is not a KL; it sums over every
    position, padding included, and divides by the number of sequences."""
    import torch

    from relapse.models.losses import kl_ref_to_model

    logits = ctx.forward(batch).logits
    ref_logits = ctx.ref_logits(batch)
    if ctx.loss_variant == "muse":
        return torch.nn.functional.kl_div(logits, ref_logits, reduction="batchmean", log_target=True)
    return kl_ref_to_model(ref_logits, logits, batch["labels"])
