from relapse.unlearn.hparams import number
from relapse.unlearn.registry import register_forget

# torch is imported inside the losses: config validation reads this registry without it.


@register_forget("npo", hparams={"beta": 0.1}, needs_ref_seq_logp=True, reduction="sequence",
                 rules={"beta": number(gt=0)})   # 2/β
def negative_preference(ctx, batch, hp):
    """NPO (Zhang et al. 2024): (2/β)·E log(1 + (π_θ(y|x)/π_ref(y|x))^β) on sequence
    log-likelihoods against the frozen reference, i.e. (2/β)·softplus(β·log-ratio).
    loss_variant muse: MUSE's code, −(2/β)·mean logsigmoid(β·(ref_logits − logits)) over every
    logit of every position, padding included (as MUSE computes it). Both are means over
    sequences; MUSE's also depends on the padded length, so only the paper's definition
    accumulates exactly over micro-batches of unequal width."""
    import torch.nn.functional as F

    from relapse.models.losses import sequence_logprob

    beta = float(hp["beta"])
    logits = ctx.forward(batch).logits
    if ctx.loss_variant == "muse":
        return -(2.0 / beta) * F.logsigmoid(beta * (ctx.ref_logits(batch) - logits)).mean()
    log_ratio = sequence_logprob(logits, batch["labels"]) - batch["ref_seq_logp"]
    return (2.0 / beta) * F.softplus(beta * log_ratio).mean()
