"""Smoothness-enhanced unlearning (Fan et al., ICML 2025, arXiv 2502.05374, "Towards LLM
Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization Perspective and
Beyond"): the forget loss is minimised over a neighbourhood of θ, so that the unlearned model sits
where a few relearning steps do not climb back up. Each composed method `m` has the variants
`m_sam` and `m_rs` (registry.py); the smoothing acts on the forget term only, the regularizer's
gradient is taken at θ, as the paper's robust objective min_θ max_{‖δ‖≤ρ} ℓ_f(θ + δ) + γ·ℓ_r(θ)
writes it and as its code (OPTML-Group/Unlearn-Smooth, SAMTrainer/RSTrainer) computes it:

  sam  ∇ = ∇ℓ_f(θ + ε) + α∇ℓ_r(θ),  ε = ρ·g/‖g‖₂,  g = ∇ℓ_f(θ)   (one ascent step, the SAM
       approximation of the inner max; ‖g‖ over every trainable tensor together)
  rs   ∇ = (1/n)·Σ_k ∇ℓ_f(θ + δ_k) + α∇ℓ_r(θ),  δ_k ~ N(0, σ²I)   (randomized smoothing; the
       code's n = 3 samples; the noise is drawn from the run's seed and the step number)

Only the trainable tensors are perturbed (the LoRA adapters under `params: lora`, as the code's
`requires_grad` list). Every gradient is accumulated over the step's micro-batches with the same
shares as the plain step (step.py), so a perturbation is that of the whole batch's gradient
however the batch is split. After a perturbed forward the weights are restored by copying the
saved θ back (not by subtracting ε, which is not exact in floating point).

  wa   weight averaging: the weights saved are the running mean of the trainable tensors taken
       after every `wa_interval`-th optimizer step from step `wa_start` on (the code's
       WeightAveragingCallback: start 100, interval 5); training itself continues from the
       raw weights. A checkpoint at an earlier epoch is the mean of the snapshots taken up to it
       (what a run stopped there would save); before the first snapshot, the raw weights.

Not implemented: the paper's gradient penalty and curvature regularization (their exact forms are
not in the released code, and the method section was not reachable here; both need double
backpropagation through the model).
"""

from __future__ import annotations

from relapse.unlearn.hparams import integer, number

# The variants, with their hyperparameters' defaults and rules (registry.Method merges them).
# ρ = 0.01: the code's MUSE script (`sam_rho`; its WMDP configs use 0.1); σ = 0.1: its only RS
# config (WMDP, Zephyr-7B, `sam_rho` read as the noise std); n = 3: RSTrainer's fixed count.
SMOOTHINGS = {
    "sam": {"hparams": {"rho": 0.01}, "rules": {"rho": number(ge=0)}},
    "rs": {"hparams": {"sigma": 0.1, "samples": 3},
           "rules": {"sigma": number(ge=0), "samples": integer(ge=1)}},
    "wa": {"hparams": {"wa_start": 100, "wa_interval": 5},
           "rules": {"wa_start": integer(ge=1), "wa_interval": integer(ge=1)}},
}


def perturbs_the_step(method, hp) -> bool:
    """Whether the step differs from the plain one: SAM with ρ > 0, RS with σ > 0."""
    smoothing = getattr(method, "smoothing", None)
    return (smoothing == "sam" and float(hp["rho"]) > 0) or \
        (smoothing == "rs" and float(hp["sigma"]) > 0)


class WeightAverage:
    """The running mean of the trainable tensors at steps wa_start, wa_start + k·wa_interval..."""

    def __init__(self, params, hp) -> None:
        self.params = list(params)
        self.start, self.interval = int(hp["wa_start"]), int(hp["wa_interval"])
        self.mean = None
        self.count = 0

    def after_step(self, step: int) -> None:
        """`step`: optimizer steps taken so far (1 after the first)."""
        import torch

        if step < self.start or (step - self.start) % self.interval:
            return
        with torch.no_grad():
            if self.mean is None:
                self.mean = [p.detach().clone() for p in self.params]
            else:
                for m, p in zip(self.mean, self.params):
                    m.mul_(self.count / (self.count + 1)).add_(p.detach(), alpha=1 / (self.count + 1))
        self.count += 1

    def swapped_in(self):
        """A context in which the trainable tensors hold the mean (for saving a checkpoint)."""
        import contextlib

        import torch

        @contextlib.contextmanager
        def swap():
            if self.mean is None:
                yield
                return
            raw = [p.detach().clone() for p in self.params]
            with torch.no_grad():
                for p, m in zip(self.params, self.mean):
                    p.copy_(m)
            try:
                yield
            finally:
                with torch.no_grad():
                    for p, r in zip(self.params, raw):
                        p.copy_(r)
        return swap()


def _forget_gradients(method, ctx, hp, forget_parts, weights, params):
    """Σ_i w_i·∇ℓ_f(part i) on `params` at the current weights, and the loss Σ_i w_i·ℓ_f."""
    import torch

    grads = [torch.zeros_like(p) for p in params]
    total = 0.0
    for w, part in zip(weights, forget_parts):
        loss = method.forget.fn(ctx, part, hp)
        parts_grads = torch.autograd.grad(w * loss, params, allow_unused=True)
        for acc, g in zip(grads, parts_grads):
            if g is not None:
                acc += g
        total += w * float(loss.detach())
    return grads, total


def _noise_generator(seed: int, step: int):
    """A generator for step `step` of a run seeded `seed`: the same draws on a resumed run."""
    import numpy as np
    import torch

    state = np.random.SeedSequence([int(seed), int(step)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def smoothed_step(method, ctx, hp, forget_parts, retain_parts, forget_w, retain_w, guard=None,
                  step: int = 0) -> dict[str, float]:
    """One optimizer step's gradient for a `_sam` or `_rs` method, left in each trainable
    tensor's `.grad` (added to what is there, as backward would); return the step's terms."""
    import torch

    params = [p for p in ctx.model.parameters() if p.requires_grad]
    alpha = float(ctx.cache.get("alpha", hp.get("alpha", 1.0)))   # PDU-style dual weight
    saved = [p.detach().clone() for p in params]
    terms: dict[str, float] = {}

    def restore():
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)

    if method.smoothing == "sam":
        g, terms["forget"] = _forget_gradients(method, ctx, hp, forget_parts, forget_w, params)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g]))
        scale = float(hp["rho"]) / float(norm) if float(norm) > 0 else 0.0
        try:
            with torch.no_grad():
                for p, x in zip(params, g):
                    p.add_(x, alpha=scale)
            forget_grad, terms["forget_perturbed"] = _forget_gradients(
                method, ctx, hp, forget_parts, forget_w, params)
        finally:
            restore()
    elif method.smoothing == "rs":
        n = int(hp["samples"])
        sigma = float(hp["sigma"])
        generator = _noise_generator(ctx.seed, step)
        forget_grad = [torch.zeros_like(p) for p in params]
        losses = []
        try:
            for _ in range(n):
                noise = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
                         for p in params]
                with torch.no_grad():
                    for p, s, d in zip(params, saved, noise):
                        p.copy_(s + sigma * d)
                g, loss = _forget_gradients(method, ctx, hp, forget_parts, forget_w, params)
                for acc, x in zip(forget_grad, g):
                    acc += x / n
                losses.append(loss)
        finally:
            restore()
        terms["forget"] = sum(losses) / n
    else:
        raise ValueError(f"unknown smoothing {method.smoothing!r}")
    if guard is not None:
        guard.check(step, terms)
    with torch.no_grad():
        for p, x in zip(params, forget_grad):
            p.grad = x.clone() if p.grad is None else p.grad + x
    if method.regularizer is not None:
        reg_total = 0.0
        for w, part in zip(retain_w, retain_parts):
            reg = method.regularizer.fn(ctx, part, hp)
            if guard is not None:
                guard.check(step, {"regularizer": reg})
            (alpha * w * reg).backward()
            reg_total += w * float(reg.detach())
        terms["regularizer"] = reg_total
    terms["loss"] = terms["forget"] + alpha * terms.get("regularizer", 0.0)
    return terms
