from relapse.models.losses import token_nll
from relapse.unlearn.registry import register_regularizer


@register_regularizer("gdr", reduction="token")
def gradient_descent_on_retain(ctx, batch, hp):
    """GDR: NLL(retain); the method adds α times this."""
    return token_nll(ctx.forward(batch).logits, batch["labels"])
