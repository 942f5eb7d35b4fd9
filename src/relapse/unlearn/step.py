"""One unlearning step: the context an objective sees (`StepContext`: the trained model, the
frozen reference, the run's autocast and seed), the reference's per-sequence log-probabilities
that NPO-style objectives compare against, and the accumulation of one optimizer step's loss
over its micro-batches (`accumulate_step`). The optimizer loop around it is
relapse.models.training's; the relearning attack drives the same step."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from relapse.models.modules import decoder_layers


@dataclass
class StepContext:
    """What an objective may use: the trained model and the frozen reference."""
    model: Any
    loss_variant: str
    reference: Any = None          # a frozen copy (params=full), or None
    is_lora: bool = False
    autocast: Any = contextlib.nullcontext
    seed: int = 0
    cache: dict = field(default_factory=dict)   # what an objective's setup computed at θ₀
    _steer: Any = field(default=None, repr=False)

    def _run(self, model, batch):
        with self.autocast():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def _reference_model(self):
        if self.is_lora:
            return self.model, _adapter_disabled(self.model)
        if self.reference is None:
            raise RuntimeError("this objective needs the reference model, but none was kept")
        return self.reference, contextlib.nullcontext()

    def forward(self, batch):
        return self._run(self.model, batch)

    def ref_logits(self, batch):
        import torch

        model, adapter_off = self._reference_model()
        with torch.no_grad(), adapter_off:
            return self._run(model, batch).logits.float()

    def hidden(self, batch, layer: int, reference: bool = False):
        """Output of decoder layer `layer` (0-based), captured with a forward hook."""
        model, adapter_off = self._reference_model() if reference else (self.model, contextlib.nullcontext())
        module = decoder_layers(model)[layer]
        captured = {}

        def hook(_module, _inputs, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output

        handle = module.register_forward_hook(hook)
        try:
            with adapter_off:
                self._run(model, batch)
        finally:
            handle.remove()
        return captured["h"]

    def steering_vector(self, dim: int):
        """RMU's fixed direction: uniform [0, 1) entries, normalised, drawn from the run's seed."""
        import torch

        if self._steer is None or self._steer.numel() != dim:
            u = torch.rand(dim, generator=torch.Generator().manual_seed(self.seed))
            self._steer = u / u.norm()
        return self._steer


@contextlib.contextmanager
def _adapter_disabled(model):
    """peft's `disable_adapter`, keeping every requires_grad flag: on exit peft marks all adapter
    weights trainable again, which would undo an RMU or SURE restriction."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with model.disable_adapter():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _ref_seq_logprobs(model, batches, autocast=contextlib.nullcontext) -> "torch.Tensor":
    """log π_ref(y|x) per forget sequence, under the same autocast as the policy's forward, so
    that the NPO log-ratio is exactly 0 at θ₀ (in bf16 autocast the two would otherwise differ)."""
    import torch

    from relapse.models.losses import sequence_logprob

    out = []
    with torch.no_grad():
        for batch in batches:
            with autocast():
                logits = model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
            out.append(sequence_logprob(logits, batch["labels"]))
    return torch.cat(out)


def _shares(batches, reduction: str, units=None) -> list[float]:
    """Each micro-batch's share of the units (tokens or sequences) its loss is a mean over;
    `units(batch)` counts them when the objective declares its own (registry.py)."""
    from relapse.models.losses import reduction_count

    counts = [units(b) if units else reduction_count(b, reduction) for b in batches]
    total = sum(counts)
    return [c / total if total else 1.0 / len(counts) for c in counts]


def accumulate_step(method, ctx, hp, forget_parts, retain_parts=None, guard=None,
                    step: int = 0) -> dict[str, float]:
    """Backpropagate one optimizer step's loss over its micro-batches; return its terms.

    Every term is a mean over its own units (`Objective.reduction`), so a micro-batch's term is
    weighted by its share of those units in the whole batch (forget and retain each by their
    own): the accumulated gradient is then the full batch's, however it is split. Weighting by
    sequence count would be exact only for per-sequence losses. A `_sam` or `_rs` method
    (smoothing.py) takes its forget gradient at perturbed weights; with ρ = 0 (or σ = 0) it is
    the plain step, taken here (as is every `_wa` step: it averages the saved weights)."""
    # a method with a dual variable (PDU) keeps the regularizer's current weight in the cache
    alpha = float(ctx.cache.get("alpha", hp.get("alpha", 1.0)))

    def units(objective):
        return objective.units and (lambda batch: objective.units(batch, hp))

    forget_w = _shares(forget_parts, method.forget.reduction_for(ctx.loss_variant),
                       units(method.forget))
    retain_w = None
    if method.regularizer is not None:
        retain_w = _shares(retain_parts, method.regularizer.reduction_for(ctx.loss_variant),
                           units(method.regularizer))
    from relapse.unlearn.smoothing import perturbs_the_step

    if perturbs_the_step(method, hp):
        from relapse.unlearn.smoothing import smoothed_step

        return smoothed_step(method, ctx, hp, forget_parts, retain_parts, forget_w, retain_w,
                             guard=guard, step=step)
    totals: dict[str, float] = {}
    for i, forget in enumerate(forget_parts):
        terms = {"forget": method.forget.fn(ctx, forget, hp)}
        weighted = forget_w[i] * terms["forget"]
        if method.regularizer is not None:
            terms["regularizer"] = method.regularizer.fn(ctx, retain_parts[i], hp)
            weighted = weighted + alpha * retain_w[i] * terms["regularizer"]
        if guard is not None:
            loss = terms["forget"] + alpha * terms.get("regularizer", 0.0)
            guard.check(step, {**terms, "loss": loss})
        weighted.backward()
        totals["forget"] = totals.get("forget", 0.0) + forget_w[i] * float(terms["forget"].detach())
        if "regularizer" in terms:
            totals["regularizer"] = (totals.get("regularizer", 0.0)
                                     + retain_w[i] * float(terms["regularizer"].detach()))
    totals["loss"] = totals["forget"] + alpha * totals.get("regularizer", 0.0)
    return totals
