from relapse.models.losses import token_nll
from relapse.unlearn.registry import register_forget


@register_forget("ga", reduction="token")
def gradient_ascent(ctx, batch, hp):
    """GA: −NLL(forget), the mean over forget tokens."""
    return -token_nll(ctx.forward(batch).logits, batch["labels"])
