"""The influence-function update of a trained model for edited training instances.

The model was fit on n instances, θ* = argmin (1/n) Σ ℓ_i(θ) (+ a regulariser that the damping
λ stands for). Editing instances (removing them, or replacing each by a corrected version)
changes the objective to (1/n) [Σ_kept ℓ_i + Σ_edited ℓ̃_j]. One Newton step on it from θ*:

    Δθ = −(H + λI)⁻¹ b,   b = (Σ∇ℓ̃(edited) − Σ∇ℓ(original)) / n,

where ∇(1/n)Σℓ(θ*) = 0 has been used, and H = (1/n) ∇² [Σ_kept ℓ + Σ_edited ℓ̃] at θ* is the
Hessian of the edited objective (without the regulariser, which λ replaces). On a quadratic
objective the step is the exact refit (tests/test_influence.py checks this against the closed
form of ridge regression); with H of the original objective it is only first order.

Losses are given as callables returning an iterable of scalar tensors whose sum is Σ ℓ over
the set (one scalar per micro-batch), so a set larger than memory streams through.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

Losses = Callable[[], Iterable["torch.Tensor"]]


def flatten(tensors: Sequence) -> "torch.Tensor":
    import torch

    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector, like: Sequence) -> list:
    out, at = [], 0
    for t in like:
        out.append(vector[at:at + t.numel()].view_as(t))
        at += t.numel()
    return out


def summed_gradient(losses: Losses, params: Sequence) -> "torch.Tensor":
    """∇ Σ ℓ over the set, flattened (zeros for an empty set: removal adds no instance)."""
    import torch

    total = [torch.zeros_like(p) for p in params]
    for loss in losses():
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total = [t + (g if g is not None else 0) for t, g in zip(total, grads)]
    return flatten(total).detach()


def hessian_vector_product(losses: Losses, params: Sequence, vector) -> "torch.Tensor":
    """∇²(Σ ℓ) · v by double backprop: the gradient of ⟨∇Σℓ, v⟩ (Pearlmutter's trick; exact,
    one extra backward pass per micro-batch)."""
    import torch

    v = unflatten(vector, params)
    total = [torch.zeros_like(p) for p in params]
    for loss in losses():
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        dot = sum((g * vi).sum() for g, vi in zip(grads, v) if g is not None)
        if not torch.is_tensor(dot) or not dot.requires_grad:
            continue    # this micro-batch does not depend on the parameters
        hv = torch.autograd.grad(dot, params, allow_unused=True)
        total = [t + (h if h is not None else 0) for t, h in zip(total, hv)]
    return flatten(total).detach()


def influence_update(params: Sequence, n: int, hessian: Losses, original: Losses,
                     edited: Losses, damping: float, solver: str, iterations: int,
                     tol: float, curvature: Callable | None = None, **solver_settings):
    """(Δθ flattened, the Solve) for the edit `original → edited` of a model fit on `n`
    instances; `hessian` sums ℓ over the edited training set. Δθ is −x, x solving
    (H + λI) x = b (module docstring). `curvature(v)`, when given, replaces the exact product
    ∇²(Σℓ)·v (e.g. a Gauss-Newton product, positive semi-definite where H is not)."""
    from relapse.unlearn.solvers import solve

    if n < 1:
        raise ValueError(f"influence update: n {n!r} must be the number of training instances")
    if damping < 0:
        raise ValueError(f"influence update: damping {damping!r} must be ≥ 0")
    b = (summed_gradient(edited, params) - summed_gradient(original, params)) / n

    def matvec(v):
        hv = curvature(v) if curvature is not None else hessian_vector_product(hessian, params, v)
        return hv / n + damping * v

    result = solve(matvec, b, solver, iterations, tol, **solver_settings)
    return -result.x, result
