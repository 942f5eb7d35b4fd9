from relapse.unlearn.hparams import number
from relapse.unlearn.registry import register_forget

# torch is imported inside the losses: config validation reads this registry without it.


@register_forget("undial", hparams={"beta": 10.0}, needs_reference=True, reduction="token",
                 rules={"beta": number(ge=0)})
def undial(ctx, batch, hp):
    """UNDIAL (Dong et al. 2024, arXiv 2402.10052): self-distillation toward the frozen model's
    next-token logits z with the forget token's logit lowered by β, q = softmax(z − β·e_y); the
    loss is the cross-entropy −Σ_v q_v log p_θ(v) at each forget token, averaged over them
    (KL(q ‖ p_θ) plus q's entropy, a constant: the same gradient). β: hp beta (open-unlearning's
    UNDIAL.yaml: 10). open-unlearning's compute_undial_loss averages over every position of
    the padded batch, prompt and padding included, and there, its label being −100, lowers the
    logit of vocabulary entry V−100 instead; relapse scores the labelled tokens only."""
    import torch

    from relapse.models.losses import _shift

    beta = float(hp["beta"])
    logits = ctx.forward(batch).logits
    ref, labels, mask = _shift(ctx.ref_logits(batch), batch["labels"])
    adjusted = ref.scatter_add(-1, labels.clamp(min=0).unsqueeze(-1),
                               torch.full_like(ref[..., :1], -beta))
    target = torch.softmax(adjusted, dim=-1)
    logp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
    per_token = -(target * logp).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)
