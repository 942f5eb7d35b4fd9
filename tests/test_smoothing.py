"""Smoothness-enhanced unlearning (relapse.unlearn.smoothing, arXiv 2502.05374): the SAM and
RS steps against computations written here with plain autograd, exact accumulation, bit-exact
restore of θ, ρ = 0 / σ = 0 as the plain step, and weight averaging against the plain run."""

import copy
import functools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from micro_batches import micro_batches
from relapse.unlearn import registry
from relapse.unlearn.trainer import unlearn

CFG = {"batch_size": 4, "grad_clip": 1.0, "loss_variant": "paper",
       "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear"}}
FORGET = ["Ada Moor was born in Ashgrove in 1932.", "Bo Lin " * 6 + "plays the sitar.",
          "Cy Vale works as a marine biologist.", "Di Orr."]
RETAIN = ["Emrys Varga is a puppeteer " * 3, "Fen Orr plays the trombone.", "Gil Rae.",
          "Hal Ng was born in 1990 in Harrowgate."]


def _mean_nll(model, batch):
    """Mean next-token NLL over the labelled positions, written out (not relapse.losses)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum() / mask.sum()


def _setup(tiny_lm, method, **hp):
    from relapse.models.modules import make_trainable
    from relapse.unlearn.step import StepContext

    _, base, tok = tiny_lm
    spec = registry.get_method(method)
    hp = {**spec.defaults(), "params": "full", **hp}
    model = make_trainable(copy.deepcopy(base), "full", {}).train()
    ctx = StepContext(model, "paper", None, seed=7)

    return spec, hp, model, ctx, functools.partial(micro_batches, tok)


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _grad_at(model, delta, loss_fn, batch):
    """∇ loss at θ + δ (δ per trainable tensor), on a copy: the model itself is left alone."""
    shifted = copy.deepcopy(model)
    params = [p for _, p in _trainable(shifted)]
    with torch.no_grad():
        for p, d in zip(params, delta):
            p.add_(d)
    return torch.autograd.grad(loss_fn(shifted, batch), params)


def _tolerance(grads, batches):
    """A few eps(float32) of the gradient's scale per √(summed terms): the order of float sums
    differs between the step and the computation here (as in test_unlearn's accumulation test)."""
    terms = sum(int(b["attention_mask"].sum()) for b in batches)
    scale = max(float(g.abs().max()) for g in grads)
    return 8 * torch.finfo(torch.float32).eps * scale * math.sqrt(terms)


@pytest.mark.parametrize("sizes", [[4], [2, 2], [1, 3]])
def test_sam_step_is_perturb_then_descend(tiny_lm, sizes):
    """ga_gdr_sam: ∇ = ∇ℓ_f(θ + ρ·g/‖g‖) + α·∇ℓ_r(θ), g = ∇ℓ_f(θ) of the whole batch, however the
    batch is split into micro-batches; θ is restored bit for bit; an SGD step then lands on
    θ − lr·∇."""
    from relapse.unlearn.step import accumulate_step

    rho, alpha, lr = 0.5, 0.7, 0.1
    spec, hp, model, ctx, batches = _setup(tiny_lm, "ga_gdr_sam", rho=rho, alpha=alpha)
    names, params = zip(*_trainable(model))
    theta = [p.detach().clone() for p in params]
    forget, retain = batches(FORGET, [4])[0], batches(RETAIN, [4])[0]

    def forget_loss(m, b):      # GA: −NLL
        return -_mean_nll(m, b)

    g = torch.autograd.grad(forget_loss(model, forget), params)
    norm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in g))
    eps = [rho * x / norm for x in g]
    g_perturbed = _grad_at(model, eps, forget_loss, forget)
    g_retain = torch.autograd.grad(_mean_nll(model, retain), params)
    expected = [a + alpha * b for a, b in zip(g_perturbed, g_retain)]
    plain = [a + alpha * b for a, b in zip(g, g_retain)]

    model.zero_grad(set_to_none=True)
    terms = accumulate_step(spec, ctx, hp, batches(FORGET, sizes), batches(RETAIN, sizes))
    assert all(torch.equal(p, t) for p, t in zip(params, theta)), "θ not restored exactly"
    tol = _tolerance(expected, [forget, retain])
    for name, p, e, q in zip(names, params, expected, plain):
        assert float((p.grad - e).abs().max()) <= tol, name
    # the perturbation matters here: SAM's gradient is far from the plain one
    assert max(float((e - q).abs().max()) for e, q in zip(expected, plain)) > 100 * tol
    with torch.no_grad():
        assert terms["forget"] == pytest.approx(float(forget_loss(model, forget)), rel=1e-5)

    torch.optim.SGD(params, lr=lr).step()
    for p, t, e in zip(params, theta, expected):
        step_tol = lr * tol + 4 * torch.finfo(torch.float32).eps * float(t.abs().max())
        assert float((p.detach() - (t - lr * e)).abs().max()) <= step_tol


def test_rs_step_averages_forget_gradients_at_seeded_gaussian_perturbations(tiny_lm):
    """ga_gdr_rs: ∇ = (1/n)Σ_k ∇ℓ_f(θ + σδ_k) + α∇ℓ_r(θ), δ_k standard normal drawn, tensor by
    tensor and sample by sample, from a generator seeded by SeedSequence([seed, step]) (the
    documented contract: a resumed run draws the same noise)."""
    from relapse.unlearn.step import accumulate_step

    sigma, alpha, n, step = 0.05, 0.7, 2, 3
    spec, hp, model, ctx, batches = _setup(tiny_lm, "ga_gdr_rs", sigma=sigma, samples=n,
                                           alpha=alpha)
    names, params = zip(*_trainable(model))
    forget, retain = batches(FORGET, [4])[0], batches(RETAIN, [4])[0]
    state = np.random.SeedSequence([7, step]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state) & (2**63 - 1))
    expected = [torch.zeros_like(p) for p in params]
    for _ in range(n):
        delta = [sigma * torch.randn(p.shape, generator=gen) for p in params]
        for acc, x in zip(expected, _grad_at(model, delta, lambda m, b: -_mean_nll(m, b), forget)):
            acc += x / n
    for acc, x in zip(expected, torch.autograd.grad(_mean_nll(model, retain), params)):
        acc += alpha * x

    model.zero_grad(set_to_none=True)
    accumulate_step(spec, ctx, hp, batches(FORGET, [2, 2]), batches(RETAIN, [2, 2]), step=step)
    tol = _tolerance(expected, [forget, retain])
    for name, p, e in zip(names, params, expected):
        assert float((p.grad - e).abs().max()) <= tol, name
    first = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    accumulate_step(spec, ctx, hp, batches(FORGET, [4]), batches(RETAIN, [4]), step=step + 1)
    assert any(not torch.allclose(a, p.grad) for a, p in zip(first, params)), \
        "another step must draw other noise"


def _weights(folder):
    """The checkpoint's weights as evaluation sees them (a LoRA one merged onto its base)."""
    from relapse.models.io import load_model

    return load_model(folder).state_dict()


@pytest.mark.parametrize("method, hp", [("ga_gdr_sam", {"rho": 0.0}),
                                        ("ga_gdr_rs", {"sigma": 0.0})])
def test_zero_radius_is_the_plain_method_bit_for_bit(tmp_path, tiny_lm, data_dir, method, hp):
    folder = tiny_lm[0]
    common = {"lr": 1e-3, "epochs": 1, "params": "full", "alpha": 1.0}
    unlearn(method, {**common, **hp}, 0, folder, data_dir, CFG, tmp_path / "smooth")
    unlearn("ga_gdr", common, 0, folder, data_dir, CFG, tmp_path / "plain")
    a, b = _weights(tmp_path / "smooth" / "epoch1"), _weights(tmp_path / "plain" / "epoch1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("params", ["full", "lora"])
@pytest.mark.parametrize("method, hp", [("npo_gdr_sam", {"alpha": 5, "rho": 0.05}),
                                        ("ga_gdr_rs", {"alpha": 5, "sigma": 0.01, "samples": 2}),
                                        ("ga_gdr_wa", {"alpha": 5, "wa_start": 1,
                                                       "wa_interval": 1}),
                                        ("quail_gdr", {"alpha": 5, "margin": 0.5})])
def test_defense_runs_end_to_end(tmp_path, tiny_lm, data_dir, method, hp, params):
    """Each defense trains on the tiny model under both parameterisations and writes a complete
    checkpoint and a finite log; RS's noise is seeded (the same seed, the same weights). That
    they unlearn is test_unlearn's test_every_method_raises_forget_nll_and_regularizers_hold_retain
    (on a trained target)."""
    folder = tiny_lm[0]
    run = {"lr": 1e-3 if params == "full" else 1e-2, "epochs": 2, "params": params, **hp}
    unlearn(method, run, 0, folder, data_dir, CFG, tmp_path / "a")
    out = tmp_path / "a" / "epoch2"
    assert (out / "unlearn_manifest.json").exists()
    log = pd.read_parquet(tmp_path / "a" / "train_log.parquet")
    assert {"forget", "regularizer", "loss"} <= set(log.columns) and len(log) > 0
    assert np.isfinite(log["loss"]).all()
    if method.endswith("_rs"):
        unlearn(method, run, 0, folder, data_dir, CFG, tmp_path / "b")
        a, b = _weights(out), _weights(tmp_path / "b" / "epoch2")   # LoRA: merged weights
        assert all(torch.equal(a[k], b[k]) for k in a), "the noise is not seeded"


def test_weight_averaging_saves_the_mean_of_the_snapshot_steps(tmp_path, tiny_lm, data_dir):
    """ga_gdr_wa trains as ga_gdr (4 forget rows, batch 4: one step per epoch) and saves the mean
    of the weights after steps wa_start, wa_start + wa_interval, ...: with start 1, interval 2,
    epoch 1 and 2 save W₁, epochs 3 and 4 save (W₁ + W₃)/2, W_s the plain run's weights after
    step s. With wa_start past the last step it saves the plain weights bit for bit."""
    folder = tiny_lm[0]
    common = {"lr": 1e-2, "epochs": 4, "params": "full", "alpha": 1.0}
    epochs = [1, 2, 3, 4]
    unlearn("ga_gdr", common, 0, folder, data_dir, CFG, tmp_path / "plain", save_epochs=epochs)
    unlearn("ga_gdr_wa", {**common, "wa_start": 1, "wa_interval": 2}, 0, folder, data_dir, CFG,
            tmp_path / "wa", save_epochs=epochs)
    unlearn("ga_gdr_wa", {**common, "wa_start": 5}, 0, folder, data_dir, CFG, tmp_path / "late")
    plain = {e: _weights(tmp_path / "plain" / f"epoch{e}") for e in epochs}
    wa = {e: _weights(tmp_path / "wa" / f"epoch{e}") for e in epochs}
    eps = torch.finfo(torch.float32).eps
    for k in plain[1]:
        assert torch.equal(wa[1][k], plain[1][k]) and torch.equal(wa[2][k], plain[1][k]), k
        mean = (plain[1][k].double() + plain[3][k].double()) / 2
        for e in (3, 4):
            tol = 2 * eps * float(mean.abs().max())
            assert float((wa[e][k].double() - mean).abs().max()) <= tol, (k, e)
    moved = [k for k in plain[1] if not torch.equal(plain[1][k], plain[3][k])]
    assert moved and any(not torch.equal(wa[4][k], plain[4][k]) for k in moved)
    late = _weights(tmp_path / "late" / "epoch4")
    assert all(torch.equal(late[k], plain[4][k]) for k in late)


def test_smoothed_variants_are_registered_with_their_hparams():
    names = set(registry.method_names())
    assert {"npo_gdr_sam", "ga_klr_rs", "npo_wa", "simnpo_sam", "quail_gdr", "quail_gdr_sam"} <= names
    assert registry.get_method("npo_gdr_wa").defaults()["wa_start"] == 100
    assert registry.get_method("npo_gdr_sam").defaults()["rho"] == 0.01
    rs = registry.get_method("ga_gdr_rs").defaults()
    assert rs["sigma"] == 0.1 and rs["samples"] == 3
    assert "rho" not in registry.get_method("npo_gdr").defaults()
    assert "rmu_sam" not in names and "npo_gdr_sure_sam" not in names
