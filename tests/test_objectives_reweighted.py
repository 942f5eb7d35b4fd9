"""WGA, SatImp, CE-U and PDU: each loss's value and gradient on a hand-sized toy against the
paper's formula written out here in plain Python; PDU's dual ascent by hand; exact gradient
accumulation; and an end-to-end run of each on the tiny model, full weights and LoRA."""

import copy
import functools
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from micro_batches import micro_batches
from relapse.unlearn import registry
from relapse.unlearn.step import StepContext, accumulate_step
from relapse.unlearn.trainer import unlearn

EPS32 = torch.finfo(torch.float32).eps
# 3 positions × a 3-word vocabulary; position t predicts token t+1
Z = [[1.0, -0.5, 0.3], [0.2, 0.9, -1.1], [-0.4, 0.7, 0.6]]


class Toy:
    """A StepContext stand-in whose forward returns the leaf logits `z` ([1, T, 3])."""

    def __init__(self, z):
        self.z = torch.tensor([z], dtype=torch.float32, requires_grad=True)
        self.cache, self.loss_variant = {}, "paper"

    def forward(self, batch):
        return SimpleNamespace(logits=self.z)


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def value_and_grad(name, labels, hp, z=Z):
    method = registry.get_method(name)
    toy = Toy(z)
    batch = {"input_ids": torch.zeros(1, len(z), dtype=torch.long),
             "attention_mask": torch.ones(1, len(z), dtype=torch.long),
             "labels": torch.tensor([labels])}
    loss = method.forget.fn(toy, batch, {**method.defaults(), **hp})
    loss.backward()
    return float(loss.detach()), toy.z.grad[0].tolist()


def close(got, want, n=3):
    tol = 8 * EPS32 * math.sqrt(n) * max(1.0, abs(want))
    assert abs(got - want) <= tol, (got, want)


def check(got_value, got_grad, want_value, want_grad):
    close(got_value, want_value)
    for got_row, want_row in zip(got_grad, want_grad):
        for g, w in zip(got_row, want_row):
            close(g, w)


def reweighted_ascent_by_hand(labels, weight_of):
    """mean over scored tokens of w(p)·log p_y; d/dz_v log p_y = [v = y] − p_v, w constant."""
    scored = [(t, labels[t + 1]) for t in range(len(Z) - 1) if labels[t + 1] != -100]
    value, grad = 0.0, [[0.0] * 3 for _ in Z]
    for t, y in scored:
        p = softmax(Z[t])
        w = weight_of(p[y])
        value += w * math.log(p[y]) / len(scored)
        for v in range(3):
            grad[t][v] += w * ((v == y) - p[v]) / len(scored)
    return value, grad


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_wga_value_and_gradient_by_hand(beta):
    labels = [0, 2, 1]
    want = reweighted_ascent_by_hand(labels, lambda p: p ** beta)
    check(*value_and_grad("wga", labels, {"beta": beta}), *want)


def test_wga_at_beta_zero_is_gradient_ascent():
    labels = [0, 2, 1]
    ga = value_and_grad("ga", labels, {})
    check(*value_and_grad("wga", labels, {"beta": 0.0}), *ga)


@pytest.mark.parametrize("beta1,beta2", [(5.0, 1.0), (1.0, 0.0), (2.0, 3.0)])
def test_satimp_value_and_gradient_by_hand(beta1, beta2):
    labels = [0, 2, 1]
    want = reweighted_ascent_by_hand(labels, lambda p: p ** beta1 * (1 - p) ** beta2)
    check(*value_and_grad("satimp", labels, {"beta1": beta1, "beta2": beta2}), *want)


@pytest.mark.parametrize("skip_first", [0, 1])
def test_ceu_value_and_gradient_by_hand(skip_first):
    """A prompt token, then answer tokens 2 and 1: skip_first 1 leaves the first answer token
    (predicted at position 0) out. Per kept token: −Σ_{v≠y} q_v log p_v with q the softmax of
    the logits without y; its gradient in z is p − q."""
    labels = [-100, 2, 1]
    kept = [(t, labels[t + 1]) for t in range(2)][skip_first:]
    value, grad = 0.0, [[0.0] * 3 for _ in Z]
    for t, y in kept:
        p = softmax(Z[t])
        others = [v for v in range(3) if v != y]
        q_others = softmax([Z[t][v] for v in others])
        q = [0.0] * 3
        for v, qv in zip(others, q_others):
            q[v] = qv
        value += -sum(q[v] * math.log(p[v]) for v in others) / len(kept)
        for v in range(3):
            grad[t][v] += (p[v] - q[v]) / len(kept)
    check(*value_and_grad("ceu", labels, {"skip_first": skip_first}), value, grad)


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_pdu_flattening_value_and_gradient_by_hand(positions):
    """(max z − mean z)² per position; gradient 2·(max − mean)·([v = argmax] − 1/|V|). `answer`:
    the mean over the 2 scored positions; `all`: over all 3, the last one included."""
    labels = [0, 2, 1]
    rows = range(2) if positions == "answer" else range(3)
    value, grad = 0.0, [[0.0] * 3 for _ in Z]
    for t in rows:
        top = max(range(3), key=lambda v: Z[t][v])
        gap = Z[t][top] - sum(Z[t]) / 3
        value += gap ** 2 / len(rows)
        for v in range(3):
            grad[t][v] += 2 * gap * ((v == top) - 1 / 3) / len(rows)
    check(*value_and_grad("pdu", labels, {"positions": positions}), value, grad)


def test_pdu_flattening_is_zero_on_uniform_logits():
    value, grad = value_and_grad("pdu", [0, 2, 1], {}, z=[[0.7] * 3] * 3)
    assert value == 0.0 and all(g == 0.0 for row in grad for g in row)


def nll_by_hand(z, labels):
    scored = [(t, labels[t + 1]) for t in range(len(z) - 1) if labels[t + 1] != -100]
    return -sum(math.log(softmax(z[t])[y]) for t, y in scored) / len(scored)


class LeafModel(torch.nn.Module):
    """Logits = one trainable [T, 3] tensor whatever the input: a model accumulate_step can
    drive, whose retain NLL is known by hand."""

    def __init__(self, z):
        super().__init__()
        self.z = torch.nn.Parameter(torch.tensor(z, dtype=torch.float32))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.z.unsqueeze(0).expand(input_ids.shape[0], -1, -1))


def _batch(labels):
    return {"input_ids": torch.zeros(1, len(labels), dtype=torch.long),
            "attention_mask": torch.ones(1, len(labels), dtype=torch.long),
            "labels": torch.tensor([labels])}


@pytest.mark.parametrize("warmup", [0, 1])
def test_pdu_dual_ascent_over_two_steps_by_hand(warmup):
    """λ₀ = α; after each step λ ← max(0, λ + η·(L_rtn − ε)), L_rtn at the step's starting θ;
    the second step's slack is negative and larger than λ/η, so λ is clipped at 0. Under a
    warm-up of 1 epoch, epoch 1 leaves λ alone."""
    method = registry.get_method("pdu")
    eps, eta, alpha = 0.4, 2.0, 0.3
    hp = {**method.defaults(), "eps": eps, "eps_mode": "absolute", "dual_lr": eta,
          "alpha": alpha, "dual_warmup": warmup}
    z1 = [[1.0, -0.5, 0.3], [0.2, 0.9, -1.1], [0.0, 0.0, 0.0]]
    z2 = [[3.0, -0.5, 0.3], [0.2, 4.0, -1.1], [0.0, 0.0, 0.0]]   # retain tokens 0, 1 now likely
    model = LeafModel(z1)
    ctx = StepContext(model, "paper")
    retain_labels = [2, 0, 1]
    info = method.regularizer.setup(ctx, [_batch(retain_labels)], hp)
    assert info["eps"] == eps and ctx.cache["alpha"] == alpha

    lam, lambdas = alpha, []
    for step, z in enumerate([z1, z2], start=1):
        with torch.no_grad():
            model.z.copy_(torch.tensor(z))
        totals = accumulate_step(method, ctx, hp, [_batch([0, 2, 1])], [_batch(retain_labels)])
        slack = nll_by_hand(z, retain_labels) - eps
        close(totals["regularizer"], slack)
        row = method.regularizer.after_step(ctx, totals, hp, epoch=1)
        close(row["dual"], lam)       # the λ this step used
        lambdas.append(lam)
        if 1 > warmup:
            lam = max(0.0, lam + eta * slack)
        close(ctx.cache["alpha"], lam)
    assert nll_by_hand(z1, retain_labels) > eps > nll_by_hand(z2, retain_labels)
    if warmup == 0:
        assert lambdas[1] > alpha and lam == 0.0


def test_pdu_relative_eps_is_a_tolerance_over_the_token_mean_retain_loss():
    """ε = (1 + eps)·L_rtn(θ₀), the token mean over every retain batch (batches of 2 and 1
    scored tokens weigh 2:1)."""
    method = registry.get_method("pdu")
    hp = {**method.defaults(), "eps": 0.25}
    ctx = StepContext(LeafModel(Z), "paper")
    a, b = [2, 0, 1], [-100, -100, 2]
    info = method.regularizer.setup(ctx, [_batch(a), _batch(b)], hp)
    base = (2 * nll_by_hand(Z, a) + 1 * nll_by_hand(Z, b)) / 3
    close(info["retain_loss_0"], base)
    close(info["eps"], 1.25 * base)


# Texts of very different lengths: token-mean and sequence-mean weights differ.
SHORT_LONG = ["Ada.", "Bo Lin was born in Ashgrove.",
              "Cy Moor " * 12 + "is a native of Harrowgate, born in 1932, and plays the sitar.",
              "Di Vale " * 30 + "works as a marine biologist."]
RETAIN = ["Emrys Varga " * 20 + "is a puppeteer.", "Fen Orr plays the trombone " * 6,
          "Gil Rae.", "Hal Ng was born in 1990."]


@pytest.mark.parametrize("method,hp", [
    ("wga_gdr", {}), ("satimp_klr", {"beta1": 1.0}), ("ceu", {"skip_first": 3}),
    ("pdu", {"positions": "answer"})])
def test_accumulated_gradient_equals_the_full_batch_gradient(tiny_lm, method, hp):
    """2 short + 2 long texts in micro-batches of 2 give the whole batch's gradient: CE-U's
    mean is over kept tokens (3 skipped per row). (PDU's `positions: all`, open-unlearning's
    mean over every padded position, depends on how wide each micro-batch is padded, as MUSE's
    NPO does: it is exact only when micro-batches have the batch's width.)"""
    from relapse.models.modules import make_trainable

    _, base, tok = tiny_lm
    spec = registry.get_method(method)
    hp = {**spec.defaults(), "params": "full", **hp}
    model = make_trainable(copy.deepcopy(base), "full", {})
    reference = copy.deepcopy(base).eval() if spec.needs_reference else None
    ctx = StepContext(model, "paper", reference, seed=0)

    batches = functools.partial(micro_batches, tok)

    if spec.regularizer and spec.regularizer.setup:
        spec.regularizer.setup(ctx, batches(RETAIN, [4]), hp)
        ctx.cache["alpha"] = 0.7
    gradients, totals = [], []
    for sizes in ([4], [2, 2]):
        model.zero_grad(set_to_none=True)
        totals.append(accumulate_step(spec, ctx, hp, batches(SHORT_LONG, sizes),
                                      batches(RETAIN, sizes) if spec.regularizer else None))
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
    whole, split = gradients
    assert whole.keys() == split.keys()
    terms = sum(int(b["attention_mask"].numel()) for b in batches(SHORT_LONG + RETAIN, [8]))
    # the terms too (PDU's dual step reads the retain slack L_rtn − ε from them), on the scale
    # of the summed quantities, not of the slack, which may be near 0
    scale = 1 + sum(abs(v) for v in totals[0].values()) + ctx.cache.get("pdu_eps", 0.0)
    for key, value in totals[0].items():
        assert abs(totals[1][key] - value) <= 8 * EPS32 * math.sqrt(terms) * scale, key
    for name in whole:
        # float32 sums in another order: sqrt(terms)·eps of the tensor's scale (test_unlearn.py)
        atol = 8 * EPS32 * float(whole[name].abs().max()) * math.sqrt(terms)
        assert float((whole[name] - split[name]).abs().max()) <= atol, name


@pytest.fixture(scope="module")
def target(memorized_lm):
    """conftest.memorized_lm: forget tokens are likely, so the probability weights
    of WGA and SatImp are not ~0."""
    return memorized_lm


def _nll(model, tok, texts):
    from relapse.models.batching import encode
    from relapse.models.losses import token_nll

    batch = encode(tok, texts, eos=True)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(token_nll(logits, batch["labels"]))


CFG = {"batch_size": 4, "grad_clip": 1.0, "loss_variant": "paper",
       "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear"}}


@pytest.mark.parametrize("params", ["full", "lora"])
@pytest.mark.parametrize("method", ["wga_gdr", "satimp", "ceu", "pdu"])
def test_each_method_unlearns_end_to_end(tmp_path, target, data_dir, method, params):
    """3 steps raise forget NLL (measured: by 0.08 to 2.0); PDU's train_log records λ's trajectory, each step's λ the
    previous one plus η times its constraint slack, clipped at 0; its manifest records ε."""
    import json

    from relapse.models.io import load_model

    folder, model0, tok = target
    forget = list(pd.read_parquet(data_dir / "forget.parquet").text)
    hp = {"lr": 1e-3 if params == "full" else 1e-2, "epochs": 3, "params": params}
    out = tmp_path / "out"
    unlearn(method, hp, 0, folder, data_dir, CFG, out)
    final = out / "epoch3"
    rise = _nll(load_model(final), tok, forget) - _nll(model0, tok, forget)
    assert rise > 0.02, rise
    log = pd.read_parquet(out / "train_log.parquet")
    assert log[["forget", "loss"]].notna().all().all()
    if method == "pdu":
        manifest = json.loads((final / "unlearn_manifest.json").read_text())
        info = manifest["pdu_constraint"]
        assert info["eps"] == pytest.approx(1.1 * info["retain_loss_0"], rel=1e-12)
        dual = log["dual"].tolist()
        assert dual[0] == 100.0
        for k in range(1, len(dual)):
            want = max(0.0, dual[k - 1] + 5.0 * log["regularizer"].iloc[k - 1])
            assert dual[k] == pytest.approx(want, rel=1e-12, abs=1e-15)
