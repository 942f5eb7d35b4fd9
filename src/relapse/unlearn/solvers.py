"""Iterative solvers for A x = b when only products v ↦ A v are available (A = H + λI, H a
Hessian reached by double backprop; it is never formed).

Every solver logs the relative residual ‖A x − b‖ / ‖b‖ of its current x at every iteration
(iteration 0 is x = 0, residual 1), and ends with a status: `converged` (residual ≤ tol),
`max_iterations`, `diverged` (LiSSA or Adam with a step too large: the residual grew past
`DIVERGED` or stopped being finite) or `negative_curvature` (CG met vᵀAv ≤ 0: A is not positive
definite, so more damping is needed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

# A residual this many times ‖b‖ means the iteration is running away, not converging slowly.
DIVERGED = 1e3


@dataclass
class Solve:
    x: "torch.Tensor"
    status: str
    residual: float
    log: list[dict] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.status == "converged"


class _Log:
    def __init__(self, b_norm: float):
        self.b_norm = b_norm
        self.rows: list[dict] = []
        self.start = time.perf_counter()

    def add(self, iteration: int, residual_vec) -> float:
        rel = float(residual_vec.norm()) / self.b_norm
        self.rows.append({"iteration": iteration, "residual": rel,
                          "seconds": time.perf_counter() - self.start})
        return rel


def _trivial(b) -> Solve | None:
    import torch

    if float(b.norm()) == 0.0:
        return Solve(torch.zeros_like(b), "converged", 0.0,
                     [{"iteration": 0, "residual": 0.0, "seconds": 0.0}])
    return None


def _running_away(rel: float) -> bool:
    return not math.isfinite(rel) or rel > DIVERGED


def _verdict(rel: float, tol: float, k: int, iterations: int) -> str | None:
    """Why an iterative solve stops at iteration k (None: go on)."""
    if rel <= tol:
        return "converged"
    if _running_away(rel):
        return "diverged"
    return "max_iterations" if k == iterations else None


def conjugate_gradient(matvec: Callable, b, iterations: int, tol: float) -> Solve:
    """CG from x = 0 (A symmetric positive definite). The logged residual is CG's recursive one,
    equal to ‖b − A x‖ in exact arithmetic; `solve` checks the final one directly."""
    done = _trivial(b)
    if done:
        return done
    log = _Log(float(b.norm()))
    x = b.new_zeros(b.shape)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    rel = log.add(0, r)
    status = "max_iterations"
    for k in range(1, iterations + 1):
        ap = matvec(p)
        curvature = float(p @ ap)
        if not curvature > 0:
            status = "negative_curvature"
            break
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rel = log.add(k, r)
        if rel <= tol:
            status = "converged"
            break
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return Solve(x, status, rel, log.rows)


def lissa(matvec: Callable, b, iterations: int, tol: float, scale: float) -> Solve:
    """LiSSA (Agarwal et al. 2017) as used for influence functions: y ← b + (I − A/s) y, x = y/s,
    the Neumann series of (A/s)⁻¹. Its residual obeys r ← (I − A/s) r, so it converges exactly
    when every eigenvalue of A lies in (0, 2s): `scale` must exceed half of A's largest
    eigenvalue, or the residual grows and the solve reports `diverged`."""
    if not scale > 0:
        raise ValueError(f"lissa: scale {scale!r} must be positive")
    done = _trivial(b)
    if done:
        return done
    log = _Log(float(b.norm()))
    y = b.new_zeros(b.shape)
    status, rel = "max_iterations", 1.0
    for k in range(iterations + 1):
        ay = matvec(y) if k else b.new_zeros(b.shape)
        residual = ay / scale - b              # A x − b for x = y / s
        rel = log.add(k, residual)
        verdict = _verdict(rel, tol, k, iterations)
        if verdict:
            status = verdict
            break
        y = y - residual                       # = b + y − A y / s
    return Solve(y / scale, status, rel, log.rows)


def adam_quadratic(matvec: Callable, b, iterations: int, tol: float, lr: float,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Solve:
    """LLMEraser's solver: Adam on q(x) = ½ xᵀA x − bᵀx from x = 0. ∇q = A x − b is the residual,
    so logging it costs nothing; the released code never looked at it."""
    if not lr > 0:
        raise ValueError(f"adam: lr {lr!r} must be positive")
    done = _trivial(b)
    if done:
        return done
    log = _Log(float(b.norm()))
    x = b.new_zeros(b.shape)
    m = b.new_zeros(b.shape)
    v = b.new_zeros(b.shape)
    status, rel = "max_iterations", 1.0
    for k in range(iterations + 1):
        grad = (matvec(x) if k else x) - b
        rel = log.add(k, grad)
        verdict = _verdict(rel, tol, k, iterations)
        if verdict:
            status = verdict
            break
        m = betas[0] * m + (1 - betas[0]) * grad
        v = betas[1] * v + (1 - betas[1]) * grad * grad
        m_hat = m / (1 - betas[0] ** (k + 1))
        v_hat = v / (1 - betas[1] ** (k + 1))
        x = x - lr * m_hat / (v_hat.sqrt() + eps)
    return Solve(x, status, rel, log.rows)


SOLVERS = {"cg": conjugate_gradient, "lissa": lissa, "adam": adam_quadratic}


def solve(matvec: Callable, b, solver: str, iterations: int, tol: float, **settings) -> Solve:
    """Run one solver; settings: `scale` (lissa), `lr` (adam). The returned residual is
    ‖A x − b‖/‖b‖ recomputed from the final x with `matvec` (one more product), whatever the
    status, so a solver's own bookkeeping (CG's recursive residual, the last logged row) cannot
    report convergence it did not reach. The log keeps the iterates' values."""
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} is unknown; allowed: {', '.join(SOLVERS)}")
    if iterations < 1:
        raise ValueError(f"solver iterations {iterations!r} must be at least 1")
    if not tol > 0:
        raise ValueError(f"solver tol {tol!r} must be positive")
    wanted = {"cg": (), "lissa": ("scale",), "adam": ("lr",)}[solver]
    missing = [k for k in wanted if k not in settings]
    if missing:
        raise ValueError(f"solver {solver}: missing setting(s) {', '.join(missing)}")
    out = SOLVERS[solver](matvec, b, iterations, tol, **{k: settings[k] for k in wanted})
    b_norm = float(b.norm())
    if b_norm > 0:
        finite = bool(out.x.isfinite().all())
        out.residual = float((matvec(out.x) - b).norm()) / b_norm if finite else math.inf
        if out.status == "converged" and out.residual > tol:
            out.status = "max_iterations"   # recursive residual drifted below the true one
    return out
