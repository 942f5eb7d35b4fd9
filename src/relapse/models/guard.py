"""Fail loudly on a non-finite loss: a NaN run must never produce an output that looks complete."""

from __future__ import annotations

import math


class NonFiniteLoss(FloatingPointError):
    pass


class LossGuard:
    """Remembers the last finite value of each loss term, to report next to the failing ones."""

    def __init__(self) -> None:
        self.last_finite: dict[str, float] = {}

    def check(self, step: int, terms: dict) -> None:
        values = {k: float(v.detach()) if hasattr(v, "detach") else float(v)
                  for k, v in terms.items()}
        if all(math.isfinite(v) for v in values.values()):
            self.last_finite.update(values)
            return
        last = ", ".join(f"{k}={v:.6g}" for k, v in self.last_finite.items()) or "none"
        raise NonFiniteLoss(
            f"non-finite loss at step {step}: "
            + ", ".join(f"{k}={v}" for k, v in values.items())
            + f"; last finite: {last}. Lower the lr or check the data; no output was written.")
