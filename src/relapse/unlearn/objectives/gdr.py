from relapse.unlearn.registry import register_regularizer

# torch is imported inside the losses: config validation reads this registry without it.


@register_regularizer("gdr", reduction="token")
def gradient_descent_on_retain(ctx, batch, hp):
    """GDR: NLL(retain); the method adds α times this."""
    from relapse.models.losses import token_nll

    return token_nll(ctx.forward(batch).logits, batch["labels"])
