"""PDU (Entesari et al. 2025, arXiv 2506.05314, "Constrained Entropic Unlearning"): unlearning
as the constrained problem  min_θ L_fgt(θ)  subject to  L_rtn(θ) ≤ ε,  solved by primal-dual
steps on its Lagrangian L_fgt(θ) + λ·(L_rtn(θ) − ε):

- primal: one optimizer step on θ with λ held at its current value;
- dual: then λ ← max(0, λ + η·(L_rtn − ε)), L_rtn the retain loss of that step's batch at the
  θ the step started from (as open-unlearning's trainer/unlearn/pdu.py, `dual_update_upon:
  step`), once `dual_warmup` epochs are done. λ rises while the constraint is broken, decays to
  0 while it holds.

L_fgt is the paper's logit-margin flattening loss, (max_v z_v − mean_v z_v)², which is 0 exactly
when the next-token distribution is uniform; L_rtn is NLL on retain tokens. The paper's natural
constraint level is ε = (1 + `eps`)·L_rtn(θ₀) (`eps_mode: relative`, the default: a tolerance
`eps` over the target's own retain loss, measured once at θ₀ over the whole retain set);
`eps_mode: absolute` takes ε = `eps` as open-unlearning's `retain_loss_eps` does (it has no
default there; the authors' run.sh, community/methods/PDU in their fork, sets 0.3 on TOFU and
their README says to pick it "appropriately larger" than the target's retain loss, which the
relative mode does; the tolerance 0.1 is relapse's choice). `alpha` is λ's start and `dual_lr` η:
100 and 5, the authors' TOFU settings (the flattening loss is a square of logit gaps, so λ
starts large; their MUSE runs use 50 and 1). `dual_warmup` is 0 (open-unlearning's class
default; the authors' runs hold λ for 5 of 10-30 epochs, which relapse's 5-epoch default would
never leave). `dual_lr: 0` keeps λ = α, the plain scalarised loss. open-unlearning's per-epoch
dual update (a pass over the retain set at each epoch's end) is not offered.

λ lives in ctx.cache["alpha"], which accumulate_step uses as the regularizer's weight; the
regularizer returns L_rtn − ε, so a step's `regularizer` total is exactly the constraint's slack
the dual step needs, accumulated over micro-batches like any token mean. Each step's train_log
row records the λ it used (`dual`); the manifest records L_rtn(θ₀) and ε.
"""

from relapse.unlearn.hparams import choice, integer, number
from relapse.unlearn.registry import register_forget, register_method, register_regularizer

EPS_MODES = ("relative", "absolute")
POSITIONS = ("answer", "all")
# torch is imported inside the losses: config validation reads this registry without it.


def _all_positions(batch, hp) -> int:
    if hp["positions"] == "all":
        return int(batch["input_ids"].numel())
    return int((batch["labels"][:, 1:] != -100).sum())


@register_forget("pdu_flatten", hparams={"positions": "answer"}, composable=False,
                 reduction="token", units=_all_positions,
                 rules={"positions": choice(*POSITIONS)})
def logit_margin_flattening(ctx, batch, hp):
    """PDU's forget loss: (max_v z_v − (1/|V|)·Σ_v z_v)² per position, z the next-token logits;
    a mean over forget tokens (`positions: answer`, the positions the paper's forget set
    scores). `positions: all`: open-unlearning's code, a mean over every position of the padded
    batch, prompt, padding and the last position (which predicts nothing) included; padding
    makes it depend on each micro-batch's width, so it accumulates exactly only when every
    micro-batch is padded as wide as the whole batch (as MUSE's NPO variant)."""
    logits = ctx.forward(batch).logits.float()
    margin = (logits.max(dim=-1).values - logits.mean(dim=-1)).pow(2)
    if hp["positions"] == "all":
        return margin.mean()
    mask = batch["labels"][:, 1:] != -100
    return (margin[:, :-1] * mask).sum() / mask.sum().clamp(min=1)


def constraint_level(ctx, retain_batches, hp) -> dict:
    """ε, and λ's start, at θ₀ (module docstring)."""
    mode = hp["eps_mode"]
    if mode not in EPS_MODES:
        raise ValueError(f"pdu: eps_mode {mode!r} is not one of {', '.join(EPS_MODES)}")
    import torch

    from relapse.models.losses import token_nll

    out = {"eps_mode": mode}
    if mode == "relative":
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in retain_batches:
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(token_nll(ctx.forward(batch).logits, batch["labels"])) * n
                count += n
        out["retain_loss_0"] = total / max(count, 1)
        out["eps"] = (1 + float(hp["eps"])) * out["retain_loss_0"]
    else:
        out["eps"] = float(hp["eps"])
    ctx.cache["pdu_eps"] = out["eps"]
    ctx.cache["alpha"] = float(hp["alpha"])
    return out


def dual_ascent(ctx, totals, hp, epoch) -> dict:
    """λ ← max(0, λ + η·slack) after the step (module docstring); returns the λ the step used."""
    used = ctx.cache["alpha"]
    if epoch > int(hp["dual_warmup"]):
        ctx.cache["alpha"] = max(0.0, used + float(hp["dual_lr"]) * totals["regularizer"])
    return {"dual": used}


@register_regularizer("pdu_constraint",
                      hparams={"alpha": 100.0, "eps": 0.1, "eps_mode": "relative", "dual_lr": 5.0,
                               "dual_warmup": 0},
                      composable=False, reduction="token", setup=constraint_level,
                      after_step=dual_ascent,
                      rules={"eps": number(ge=0), "eps_mode": choice(*EPS_MODES),
                             "dual_lr": number(ge=0), "dual_warmup": integer(ge=0)})
def retain_constraint(ctx, batch, hp):
    """L_rtn − ε: NLL on retain tokens less the constraint level; weighted by λ."""
    if "pdu_eps" not in ctx.cache:
        raise RuntimeError("pdu: the constraint level was not set up before training")
    from relapse.models.losses import token_nll

    return token_nll(ctx.forward(batch).logits, batch["labels"]) - ctx.cache["pdu_eps"]


register_method("pdu", forget="pdu_flatten", regularizer="pdu_constraint")
