from relapse.unlearn.hparams import number
from relapse.unlearn.registry import register_forget

# torch is imported inside the losses: config validation reads this registry without it.


@register_forget("wga", hparams={"beta": 1.0}, reduction="token", rules={"beta": number(ge=0)})
def weighted_gradient_ascent(ctx, batch, hp):
    """WGA (Wang et al. 2025, arXiv 2502.19301, "weighted gradient ascent"): gradient ascent whose every
    token's log-likelihood is weighted by its own probability to the power β, held constant:
    mean over forget tokens of w_t·log p_θ(y_t | x, y_<t), w_t = sg[p_θ(y_t | ·)]^β. The weight
    damps tokens already unlikely, where GA's inverse-confidence factor 1/p blows up. β = 1 is
    open-unlearning's default (configs/trainer/WGA.yaml); β = 0 is GA. The authors' code
    (tmlr-group/G-effect) and open-unlearning's (trainer/unlearn/wga.py) take this same token
    mean, so there is no code variant. (Equation numbers could not be checked here: the paper's
    full text was out of reach; the form is the one both codes compute.)"""
    from relapse.models.losses import token_logprobs

    logp, mask = token_logprobs(ctx.forward(batch).logits, batch["labels"])
    weight = logp.detach().exp().pow(float(hp["beta"]))
    return (weight * logp * mask).sum() / mask.sum().clamp(min=1)
