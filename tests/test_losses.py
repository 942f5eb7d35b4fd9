"""Each loss against a value computed by hand on a crafted 3-token toy, plus gradient signs."""

import math
from types import SimpleNamespace

import pytest
import torch

from relapse.models import losses
from relapse.unlearn.registry import get_method

# One sequence of 3 tokens over a vocabulary of 2; positions 0 and 1 predict tokens 1 and 2.
LABELS = torch.tensor([[0, 1, 0]])
LOGITS = torch.tensor([[[0.0, math.log(3.0)],      # p(token 1) = 3/4
                        [math.log(4.0), 0.0],      # p(token 0) = 4/5
                        [0.0, 0.0]]])              # unused (no next token)


def test_token_nll_by_hand():
    expected = -(math.log(3 / 4) + math.log(4 / 5)) / 2
    assert losses.token_nll(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_padding_is_ignored():
    labels = torch.tensor([[0, 1, -100]])
    assert losses.token_nll(LOGITS, labels).item() == pytest.approx(-math.log(3 / 4), rel=1e-6)
    assert losses.sequence_logprob(LOGITS, labels).item() == pytest.approx(math.log(3 / 4), rel=1e-6)


def test_sequence_logprob_by_hand():
    assert losses.sequence_logprob(LOGITS, LABELS).item() == pytest.approx(
        math.log(3 / 4) + math.log(4 / 5), rel=1e-6)


def test_kl_by_hand_nonnegative_and_zero_at_reference():
    ref = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # uniform
    # KL(u || p) at position 0: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75); position 1: p = (0.8, 0.2)
    k0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    k1 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert losses.kl_ref_to_model(ref, LOGITS, LABELS).item() == pytest.approx((k0 + k1) / 2, rel=1e-6)
    assert losses.kl_ref_to_model(LOGITS, LOGITS, LABELS).item() == pytest.approx(0.0, abs=1e-7)
    random = torch.randn(4, 5, 7)
    assert losses.kl_ref_to_model(torch.randn(4, 5, 7), random, torch.zeros(4, 5, dtype=torch.long)) >= 0


class _Toy:
    """A 'model' whose logits are a trainable tensor, so objectives can be differentiated."""

    def __init__(self, logits):
        self.logits = logits

    def forward(self, batch):
        return SimpleNamespace(logits=self.logits)


def _ctx(logits, ref_logits=None, variant="paper"):
    toy = _Toy(logits)
    return SimpleNamespace(forward=toy.forward, loss_variant=variant,
                           ref_logits=lambda batch: ref_logits)


def _batch(ref_seq_logp=0.0):
    return {"labels": LABELS, "attention_mask": torch.ones_like(LABELS),
            "ref_seq_logp": torch.tensor([ref_seq_logp])}


def test_ga_is_minus_nll_and_pushes_likelihood_down():
    logits = LOGITS.clone().requires_grad_(True)
    method = get_method("ga")
    loss = method.forget.fn(_ctx(logits), _batch(), method.defaults())
    assert loss.item() == pytest.approx(-losses.token_nll(LOGITS, LABELS).item(), rel=1e-6)
    loss.backward()
    # descending this loss lowers the logit of the observed token 1 at position 0
    assert logits.grad[0, 0, 1] > 0


def test_npo_by_hand_and_its_weight():
    beta = 0.1
    ref = math.log(0.5)  # reference sequence log-likelihood
    logits = LOGITS.clone().requires_grad_(True)
    method = get_method("npo")
    hp = {**method.defaults(), "beta": beta}
    loss = method.forget.fn(_ctx(logits), _batch(ref), hp)
    log_ratio = math.log(3 / 4) + math.log(4 / 5) - ref
    assert loss.item() == pytest.approx((2 / beta) * math.log(1 + math.exp(beta * log_ratio)), rel=1e-6)
    loss.backward()
    # NPO's gradient is GA's (the loss −NLL = log π_θ(y|x), summed) times 2·σ(β·log-ratio)
    ga_logits = LOGITS.clone().requires_grad_(True)
    losses.sequence_logprob(ga_logits, LABELS).sum().backward()
    weight = 2 / (1 + math.exp(-beta * log_ratio))
    assert torch.allclose(logits.grad, weight * ga_logits.grad, atol=1e-6)


def test_npo_muse_variant_is_logit_level():
    """MUSE's code: −(2/β)·mean over every logit of every position of log σ(β·(ref − logit)),
    computed here element by element with math.log/math.exp."""
    beta = 0.1
    ref_logits = torch.tensor([[[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]]])
    method = get_method("npo")
    loss = method.forget.fn(_ctx(LOGITS, ref_logits, "muse"), _batch(), {"beta": beta})
    terms = [math.log(1 / (1 + math.exp(-beta * (r - x))))
             for r, x in zip(ref_logits.flatten().tolist(), LOGITS.flatten().tolist())]
    assert len(terms) == 6          # the unused last position counts too, as in MUSE
    expected = -(2 / beta) * sum(terms) / len(terms)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_simnpo_by_hand():
    beta, delta = 2.5, 0.5
    method = get_method("simnpo")
    loss = method.forget.fn(_ctx(LOGITS), _batch(), {"beta": beta, "delta": delta})
    normalised = (math.log(3 / 4) + math.log(4 / 5)) / 2          # two scored tokens
    expected = -(2 / beta) * math.log(1 / (1 + math.exp(beta * normalised + delta)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_klr_muse_variant_is_kl_div_on_raw_logits():
    ref = torch.randn_like(LOGITS)
    klr = get_method("ga_klr").regularizer
    loss = klr.fn(_ctx(LOGITS, ref, "muse"), _batch(), {})
    # F.kl_div(input, target, log_target=True) sums exp(target) * (target - input), / batch
    expected = (ref.exp() * (ref - LOGITS)).sum() / LOGITS.shape[0]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(losses.kl_ref_to_model(ref, LOGITS, LABELS).item(), rel=1e-3)


def test_sure_variants_and_rmu_are_registered():
    from relapse.unlearn.registry import method_names

    names = set(method_names())
    assert {"ga_gdr_sure", "ga_klr_sure", "npo_gdr_sure", "npo_klr_sure", "simnpo", "rmu"} <= names
    sure = get_method("npo_gdr_sure")
    assert sure.saliency and sure.defaults()["gamma"] == 90.0
    rmu = get_method("rmu")
    assert rmu.trainable_layers({"layer": 3}, 4) == [1, 2, 3]
    with pytest.raises(ValueError):
        rmu.trainable_layers({"layer": 4}, 4)
    # WMDP's defaults: only the MLP down-projection, α = 1200 (its Zephyr setting)
    assert rmu.trainable_modules(rmu.defaults()) == ("down_proj",)
    assert rmu.trainable_modules({"modules": "all"}) is None
    with pytest.raises(ValueError, match="modules 'mlp'"):
        rmu.trainable_modules({"modules": "mlp"})
    assert rmu.defaults()["alpha"] == 1200 and rmu.defaults()["steer_mode"] == "norm"
    assert "rmu_steer" not in names and "ga_rmu_retain" not in names


def test_gdr_is_retain_nll_and_klr_is_kl():
    gdr = get_method("ga_gdr").regularizer
    klr = get_method("ga_klr").regularizer
    assert gdr.fn(_ctx(LOGITS), _batch(), {}).item() == pytest.approx(
        losses.token_nll(LOGITS, LABELS).item())
    ref = torch.zeros_like(LOGITS)
    assert klr.fn(_ctx(LOGITS, ref), _batch(), {}).item() == pytest.approx(
        losses.kl_ref_to_model(ref, LOGITS, LABELS).item())
    assert klr.needs_reference and not gdr.needs_reference


def test_method_names_compose_forget_and_regularizer():
    method = get_method("npo_gdr")
    assert method.forget.name == "npo" and method.regularizer.name == "gdr"
    assert {"lr", "epochs", "params", "beta", "alpha"} <= method.hparam_names()
    with pytest.raises(KeyError):
        get_method("npo_xyz")


def test_an_unknown_reduction_is_rejected_at_registration():
    from relapse.unlearn.registry import register_forget

    with pytest.raises(ValueError, match="reduction 'mean' is not one of token, position, sequence"):
        register_forget("bad_reduction", reduction="mean")
