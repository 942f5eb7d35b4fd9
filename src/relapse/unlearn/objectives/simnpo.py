from relapse.unlearn.hparams import number
from relapse.unlearn.registry import register_forget

# torch is imported inside the losses: config validation reads this registry without it.


@register_forget("simnpo", hparams={"beta": 2.5, "delta": 0.0}, reduction="sequence",
                 rules={"beta": number(gt=0)})   # 2/β
def simple_npo(ctx, batch, hp):
    """SimNPO (Fan et al. 2024): reference-free, length-normalised NPO with margin δ:
    −(2/β)·E log σ(−(β/|y|)·log π_θ(y|x) − δ), |y| the number of scored tokens."""
    import torch.nn.functional as F

    from relapse.models.losses import sequence_logprob

    beta, delta = float(hp["beta"]), float(hp["delta"])
    logits = ctx.forward(batch).logits
    lengths = (batch["labels"][:, 1:] != -100).sum(-1).clamp(min=1)
    normalised = sequence_logprob(logits, batch["labels"]) / lengths
    return -(2.0 / beta) * F.logsigmoid(-beta * normalised - delta).mean()
