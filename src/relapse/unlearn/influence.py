"""The influence-function update of a trained model for edited training instances.

The model was fit on n instances with an L2 term, θ* = argmin L(θ), L = (1/n) Σ ℓ_i(θ) + (λ/2)‖θ‖²
(relapse.models.lora_setting fits exactly this). Editing instances (removing them, or replacing
each by a corrected version) gives the edited objective, the one the gold is fit on,

    L'(θ) = (1/n') [Σ_kept ℓ_i + Σ_edited ℓ̃_j] + (λ/2)‖θ‖²,   n' its instance count

(n' = n for corrections; n − m after removing m). One Newton step on L' from θ*:

    Δθ = −(H'/n' + λI)⁻¹ b,   b = ∇L'(θ*) = (Σ∇ℓ̃(edited) − Σ∇ℓ(original)) / n' − ((n − n')/n') λθ*,

using ∇L(θ*) = 0 (so Σ_target ∇ℓ = −nλθ*), with H' = ∇² [Σ_kept ℓ + Σ_edited ℓ̃] at θ*. The
damping λ is the fit's λ, not a free knob: with the same λ in fit and update, the step is the
exact refit on a quadratic objective (tests/test_influence.py checks it against ridge
regression's closed form); an update damped with a λ the fit did not have is biased (on a ridge
problem fit without L2, ~50% off at λ = 1). With H of the original objective it is only first order.

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
                     tol: float, curvature: Callable | None = None, n_edited: int | None = None,
                     n_hessian: int | None = None, **solver_settings):
    """(Δθ flattened, the Solve) for the edit `original → edited` of a model fit on `n`
    instances with L2 weight `damping` = λ (module docstring); `hessian` sums ℓ over the
    edited training set, of `n_edited` instances (default n). Δθ is −x, x solving
    (H'/n' + λI) x = b. `n_hessian` (default n'): the instance count of the set `hessian` sums
    over, when that is not the edited set (the original set's H/n, a first-order stand-in). `curvature(v)`, when given, replaces the exact product ∇²(Σℓ)·v (e.g. a
    Gauss-Newton product, positive semi-definite where H is not). The Solve's `residual` is
    ‖(H'/n' + λI)x − b‖/‖b‖ recomputed from its x with the same products."""
    from relapse.unlearn.solvers import solve

    n_edited = n if n_edited is None else n_edited
    n_hessian = n_edited if n_hessian is None else n_hessian
    if n < 1 or n_edited < 1 or n_hessian < 1:
        raise ValueError(f"influence update: n {n!r}, n_edited {n_edited!r} and n_hessian "
                         f"{n_hessian!r} must be the numbers of training instances before and "
                         "after the edit and in the Hessian's set")
    if damping < 0:
        raise ValueError(f"influence update: damping {damping!r} must be ≥ 0")
    b = (summed_gradient(edited, params) - summed_gradient(original, params)) / n_edited
    if n_edited != n:
        # The L2 term keeps its weight when the data term's normaliser changes from 1/n to 1/n'.
        b = b - (n - n_edited) / n_edited * damping * flatten([p.detach() for p in params])

    def matvec(v):
        hv = curvature(v) if curvature is not None else hessian_vector_product(hessian, params, v)
        return hv / n_hessian + damping * v

    result = solve(matvec, b, solver, iterations, tol, **solver_settings)
    return -result.x, result
