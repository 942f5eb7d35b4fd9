"""The one optimizer loop of the package: reference fitting (reference.py), LoRA-setting fits
(lora_setting.py), unlearning (relapse.unlearn.trainer) and the relearning attack
(relapse.attacks.kinds.relearn) all step through `TrainingLoop`.

One step, always in this order: `zero_grad(set_to_none=True)`; the caller's step function (its
forwards and backwards; it returns the step's loss terms, and may check them with the loop's
non-finite guard, `loop.check`, before its backward); gradient-norm clipping (when `grad_clip`
is set); `optimizer.step()`; `scheduler.step()` (when there is one); the step count; then the
caller's `after_step` hook (per-step logging, checkpoints at a step). Batches are drawn lazily
from the caller's iterable, so its random draws happen step by step, as they always did.

`epochs` runs passes over per-epoch batches with an end-of-epoch hook (checkpoints, evaluation)
that stops the run early by returning True.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable


class TrainingLoop:
    """AdamW-style stepping over the model's trainable tensors, with the non-finite guard."""

    def __init__(self, model, trainable, optimizer, scheduler=None, grad_clip=None,
                 guard: bool = True) -> None:
        from relapse.models.guard import LossGuard

        self.model = model
        self.trainable = trainable
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_clip = grad_clip          # None: no clipping (the value is passed as given)
        self.guard = LossGuard() if guard else None
        self.step = 0                       # optimizer steps taken so far
        self.start = time.time()

    def check(self, terms: dict) -> None:
        """Fail on a non-finite loss term of the current step (no-op without a guard)."""
        if self.guard is not None:
            self.guard.check(self.step, terms)

    def seconds(self) -> float:
        return time.time() - self.start

    def run(self, batches: Iterable, step_fn: Callable[[Any, "TrainingLoop"], Any],
            after_step: Callable[[Any, Any, Any], None] | None = None) -> None:
        """One optimizer step per batch: `step_fn(batch, loop)` backpropagates and returns the
        step's terms; `after_step(batch, terms, grad_norm)` runs once the step is taken
        (`loop.step` then counts it; grad_norm is None without clipping)."""
        import torch

        self.model.train()
        for batch in batches:
            self.optimizer.zero_grad(set_to_none=True)
            terms = step_fn(batch, self)
            grad_norm = None
            if self.grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.step += 1
            if after_step is not None:
                after_step(batch, terms, grad_norm)

    def epochs(self, epochs: Iterable, batches: Callable[[Any], Iterable],
               step_fn: Callable[[Any, "TrainingLoop"], Any],
               after_step: Callable[[Any, Any, Any, Any], None] | None = None,
               end_epoch: Callable[[Any], bool | None] | None = None) -> None:
        """`run` over `batches(epoch)` for each epoch; `after_step(epoch, batch, terms,
        grad_norm)`; `end_epoch(epoch)` after each epoch, a True return stops early."""
        for epoch in epochs:
            hook = None if after_step is None else (
                lambda batch, terms, norm, epoch=epoch: after_step(epoch, batch, terms, norm))
            self.run(batches(epoch), step_fn, hook)
            if end_epoch is not None and end_epoch(epoch):
                break
