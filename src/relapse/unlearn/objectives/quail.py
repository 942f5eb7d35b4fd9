from relapse.unlearn.hparams import number
from relapse.unlearn.registry import register_forget

# torch is imported inside the losses: config validation reads this registry without it.


def logit_hinge(logits, ref_logits, labels, margin: float):
    """QUAIL's margin term: mean over labelled positions of the mean over the vocabulary of
    max(0, m − |z_θ − z_ref|), z the logits at a position, m the margin. Zero once every logit
    is at least m away from the original model's."""
    import torch

    from relapse.models.losses import _shift

    ref_logits, _, mask = _shift(ref_logits, labels)
    gap = (logits[:, :-1, :].float() - ref_logits.float()).abs()
    per_token = torch.relu(margin - gap).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@register_forget("quail", hparams={"margin": 0.5, "hinge_weight": 1.0}, needs_reference=True,
                 reduction="token", rules={"margin": number(gt=0), "hinge_weight": number(ge=0)})
def quantization_aware(ctx, batch, hp):
    """QUAIL (Mishra & Mehreen 2026, arXiv 2601.15538): gradient ascent on the forget set plus a
    logit-space hinge that pushes every forget logit at least a margin m away from the original
    model's, m meant as half a 4-bit quantization step, so that rounding the weights cannot bring
    the forgotten outputs back: −NLL(forget) + λ·mean max(0, m − |z_θ − z_ref|), the mean over
    labelled forget positions and the vocabulary (`logit_hinge`); λ = `hinge_weight`, m =
    `margin` in logit units. The paper's method is GA+GDR with this term: `quail_gdr`. Only the
    abstract was reachable here; this is the formula it states (per-logit gap, hinge at m)."""
    from relapse.models.losses import token_nll

    logits = ctx.forward(batch).logits
    hinge = logit_hinge(logits, ctx.ref_logits(batch), batch["labels"], float(hp["margin"]))
    return -token_nll(logits, batch["labels"]) + float(hp["hinge_weight"]) * hinge
