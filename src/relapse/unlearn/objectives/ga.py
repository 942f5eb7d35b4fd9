from relapse.unlearn.registry import register_forget

# torch is imported inside the losses: config validation reads this registry without it.


@register_forget("ga", reduction="token")
def gradient_ascent(ctx, batch, hp):
    """GA: −NLL(forget), the mean over forget tokens."""
    from relapse.models.losses import token_nll

    return -token_nll(ctx.forward(batch).logits, batch["labels"])
