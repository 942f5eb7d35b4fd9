from relapse.unlearn.hparams import number
from relapse.unlearn.registry import register_forget

# torch is imported inside the losses: config validation reads this registry without it.


@register_forget("satimp", hparams={"beta1": 5.0, "beta2": 1.0}, reduction="token",
                 rules={"beta1": number(ge=0), "beta2": number(ge=0)})
def saturation_importance(ctx, batch, hp):
    """SatImp (Yang et al. 2025, arXiv 2505.11953, §5): gradient ascent on forget tokens with
    a constant (stop-gradient) weight that is the product of a saturation term p^β₁ (tokens
    already unlikely, i.e. already unlearned, weigh less) and an importance term (1 − p)^β₂:
    mean over forget tokens of sg[p_t^β₁ (1 − p_t)^β₂]·log p_θ(y_t | x, y_<t).
    β₁ = 5, β₂ = 1 as open-unlearning's configs/trainer/SatImp.yaml; its code
    (trainer/unlearn/satimp.py) and the authors' (tmlr-group/SatImp, loss `satimp`) take this
    same token mean, so there is no code variant. That config also scales the
    forget term by γ = 0.1 against the retain term's α = 1 (its class defaults swap the two: α =
    0.1, γ = 1); relapse has no forget weight: the same ratio is α = 10 at a tenth of the lr."""
    from relapse.models.losses import token_logprobs

    logp, mask = token_logprobs(ctx.forward(batch).logits, batch["labels"])
    p = logp.detach().exp()
    weight = p.pow(float(hp["beta1"])) * (1 - p).pow(float(hp["beta2"]))
    return (weight * logp * mask).sum() / mask.sum().clamp(min=1)
