from relapse.unlearn.hparams import integer
from relapse.unlearn.registry import register_forget

# torch is imported inside the losses: config validation reads this registry without it.


def _kept_labels(labels, skip: int):
    """`labels` with the first `skip` labelled tokens of each row also set to -100."""
    labelled = labels != -100
    first = (labelled.long().cumsum(-1) <= skip) & labelled
    return labels.masked_fill(first, -100)


def _kept_count(batch, hp) -> int:
    """The tokens CE-U's mean is over: scored next-token positions less each row's skipped."""
    return int((_kept_labels(batch["labels"], int(hp["skip_first"]))[:, 1:] != -100).sum())


@register_forget("ceu", hparams={"skip_first": 1}, reduction="token", units=_kept_count,
                 rules={"skip_first": integer(ge=0)})
def cross_entropy_unlearning(ctx, batch, hp):
    """CE-U (Yang et al. 2025, arXiv 2503.01224): at each forget token, the cross-entropy from
    the model's own next-token distribution with the true token removed, q = softmax(z) with
    z_y set to −∞ and held constant, to the model's p = softmax(z):
    −Σ_{v≠y} q_v log p_v, a mean over forget tokens. Its gradient in z is p − q: the true
    token's logit is pushed down by p_y and every other logit pulled toward its share of the
    rest, so it does not diverge as GA does. `skip_first` (default 1): the first labelled tokens
    of each row are left out of the loss, as the paper's training settings do (a footnote) and
    open-unlearning's `ignore_first_n_answer_tokens: 1` (trainer/unlearn/ceu.py); on raw text
    the first labelled token is never a target, so 1 changes nothing there. The mean is over
    the kept tokens (units=_kept_count), so accumulation stays exact."""
    import torch

    labels = _kept_labels(batch["labels"], int(hp["skip_first"]))
    logits = ctx.forward(batch).logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(logits, dim=-1)
    removed = logits.detach().scatter(-1, targets.clamp(min=0).unsqueeze(-1), float("-inf"))
    q = torch.softmax(removed, dim=-1)
    # q is 0 at y, where log p is finite: no 0·inf
    per_token = -(q * logp).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)
