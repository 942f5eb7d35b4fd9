"""DPO on the forget set: prefer an "I don't know"-style answer y_w over the forget answer y_l
(pairs built by relapse.unlearn.preference: QA prompt, or a raw text's prefix, as x).

Both objectives need π_ref(y|x) of the two sequences, computed once at θ₀ under the policy's
autocast (as NPO's), and are means over sequences (pairs), so micro-batches accumulate exactly.
relapse has no alternate answers other than the shipped idk ones (AltPO's would be generated),
so both prefer idk answers: `dpo` is the paper's loss, `idkdpo` open-unlearning's (scaled by 2/β).

AltPO (Mekala et al. 2024, arXiv 2409.13474) is not here: its preferred answers are written by
the model when instructed ("write another answer that changes the facts", with examples) and
filtered, which needs an instruction-following chat model and a question; relapse's trained
targets are small models fine-tuned on the very facts to forget (asked, they give the forget
answer, so y_w = y_l and the loss has no gradient), and its default corpus is raw text.
"""
from relapse.unlearn.hparams import number
from relapse.unlearn.registry import register_forget

# torch is imported inside the losses: config validation reads this registry without it.
HPARAMS = {"beta": 0.1, "prompt_fraction": 0.5}
RULES = {"beta": number(gt=0), "prompt_fraction": number(ge=0, le=1)}


def _margin(ctx, batch, beta: float):
    """β·(log π_θ(y_w|x)/π_ref(y_w|x) − log π_θ(y_l|x)/π_ref(y_l|x)) per pair."""
    from relapse.models.losses import sequence_logprob
    from relapse.unlearn.preference import preferred_view

    rejected = sequence_logprob(ctx.forward(batch).logits, batch["labels"]) - batch["ref_seq_logp"]
    preferred = preferred_view(batch)
    chosen = (sequence_logprob(ctx.forward(preferred).logits, preferred["labels"])
              - batch["preferred_ref_seq_logp"])
    return beta * (chosen - rejected)


@register_forget("dpo", hparams=HPARAMS, needs_ref_seq_logp=True, needs_preferred=True,
                 reduction="sequence", rules=RULES)
def direct_preference(ctx, batch, hp):
    """DPO (Rafailov et al. 2023, eq. 7): −E log σ(β log π_θ(y_w|x)/π_ref(y_w|x) −
    β log π_θ(y_l|x)/π_ref(y_l|x)), y_w an idk answer, y_l the forget answer. β: hp beta;
    prompt_fraction: where a raw text is cut into x and y_l (relapse.unlearn.preference)."""
    import torch.nn.functional as F

    return -F.logsigmoid(_margin(ctx, batch, float(hp["beta"]))).mean()


@register_forget("idkdpo", hparams=HPARAMS, needs_ref_seq_logp=True, needs_preferred=True,
                 reduction="sequence", rules=RULES)
def idk_preference(ctx, batch, hp):
    """IdkDPO as open-unlearning runs it (its DPO trainer, compute_dpo_loss, with TOFU's idk
    answers as the alternate): DPO scaled by 2/β, the factor of NPO's loss,
    −(2/β)·E log σ(β log π_θ(y_w|x)/π_ref(y_w|x) − β log π_θ(y_l|x)/π_ref(y_l|x)), with
    relapse's own idk answers (relapse/data/idk.yaml). open-unlearning's class default is
    β = 1; here 0.1, NPO's."""
    import torch.nn.functional as F

    beta = float(hp["beta"])
    return -(2.0 / beta) * F.logsigmoid(_margin(ctx, batch, beta)).mean()
