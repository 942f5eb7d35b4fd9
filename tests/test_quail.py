"""QUAIL's logit hinge (arXiv 2601.15538) against values and gradients computed by hand on a
2-position, 3-word toy."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from relapse.unlearn.objectives.quail import logit_hinge
from relapse.unlearn.registry import get_method

# One sequence of 3 tokens over 3 words: positions 0 and 1 predict tokens 2 and 1.
LABELS = torch.tensor([[0, 2, 1]])
REF = torch.tensor([[[0.0, 1.0, -1.0], [2.0, 0.0, 0.5], [9.0, 9.0, 9.0]]])


def _hand(logits, ref, labels, m):
    """Σ over scored positions of mean_v max(0, m − |z − z₀|), / positions; its gradient
    −sign(z − z₀)/(V·P) where the hinge is active."""
    z, z0 = logits[0, :-1].numpy().astype(np.float64), ref[0, :-1].numpy().astype(np.float64)
    scored = labels[0, 1:].numpy() != -100
    positions, vocab = int(scored.sum()), z.shape[-1]
    value, grad = 0.0, np.zeros_like(logits[0].numpy(), dtype=np.float64)
    for t in range(z.shape[0]):
        if not scored[t]:
            continue
        for v in range(vocab):
            gap = abs(z[t, v] - z0[t, v])
            if m - gap > 0:
                value += (m - gap) / (vocab * positions)
                grad[t, v] = -math.copysign(1.0, z[t, v] - z0[t, v]) / (vocab * positions)
    return value, grad


def _check(logits, labels, m):
    z = logits.clone().requires_grad_(True)
    value = logit_hinge(z, REF, labels, m)
    value.backward()
    expected, grad = _hand(logits, REF, labels, m)
    eps = torch.finfo(torch.float32).eps
    assert value.item() == pytest.approx(expected, abs=8 * eps * max(m, 1.0))
    assert np.allclose(z.grad[0].numpy(), grad, rtol=0, atol=8 * eps)
    return value.item(), z.grad


def test_hinge_is_zero_with_zero_gradient_when_every_gap_exceeds_the_margin():
    logits = REF + torch.tensor([[[0.6, -0.7, 0.9], [-1.0, 0.51, 2.0], [0.0, 0.0, 0.0]]])
    value, grad = _check(logits, LABELS, 0.5)
    assert value == 0.0 and not grad.any()


def test_hinge_value_and_gradient_by_hand_when_some_gaps_are_inside_the_margin():
    # position 0: gaps 0.1, 0.3 (inside m = 0.5) and 0.9; position 1: 0.2, 0.7, 0.05 (no gap
    # is exactly 0, where |·| has no derivative)
    logits = REF + torch.tensor([[[0.1, -0.3, 0.9], [-0.2, 0.7, 0.05], [5.0, 5.0, 5.0]]])
    value, _ = _check(logits, LABELS, 0.5)
    assert value == pytest.approx(((0.4 + 0.2) / 3 + (0.3 + 0.45) / 3) / 2, rel=1e-5)


def test_hinge_ignores_unlabelled_positions():
    logits = REF + torch.tensor([[[0.1, -0.3, 0.9], [-0.2, 0.7, 0.05], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 2, -100]])
    value, grad = _check(logits, labels, 0.5)
    assert value == pytest.approx((0.4 + 0.2) / 3, rel=1e-5)
    assert not grad[0, 1].any()


def test_quail_objective_is_ga_plus_weighted_hinge():
    logits = REF + torch.tensor([[[0.1, -0.3, 0.9], [-0.2, 0.7, 0.05], [0.0, 0.0, 0.0]]])
    ctx = SimpleNamespace(forward=lambda batch: SimpleNamespace(logits=logits),
                          ref_logits=lambda batch: REF, loss_variant="paper")
    quail = get_method("quail_gdr")
    assert quail.forget.needs_reference and quail.regularizer.name == "gdr"
    loss = quail.forget.fn(ctx, {"labels": LABELS}, {"margin": 0.5, "hinge_weight": 2.0})
    logp = torch.log_softmax(logits[0].double(), -1)
    nll = -(logp[0, 2] + logp[1, 1]) / 2
    hinge = ((0.4 + 0.2) / 3 + (0.3 + 0.45) / 3) / 2
    assert loss.item() == pytest.approx(float(-nll) + 2.0 * hinge, rel=1e-5)
