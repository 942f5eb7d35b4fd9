import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from relapse.unlearn import registry
from relapse.models.guard import NonFiniteLoss
from relapse.unlearn.trainer import unlearn

CFG = {"batch_size": 4, "grad_clip": 1.0, "loss_variant": "paper",
       "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear"}}


@pytest.fixture(scope="module")
def target_lm(memorized_lm):
    """conftest.memorized_lm: a target that has something to unlearn."""
    return memorized_lm


@pytest.fixture(scope="module")
def four_layer_lm(tmp_path_factory, tiny_lm):
    """A 4-layer tiny Llama, so that RMU's layers ℓ−2..ℓ leave a layer out."""
    from relapse.models.io import save_model
    from relapse.models.tiny import tiny_llama

    _, _, tok = tiny_lm
    torch.manual_seed(1)
    model = tiny_llama({"hidden": 32, "layers": 4, "heads": 2, "intermediate": 64}, tok).eval()
    folder = tmp_path_factory.mktemp("four_layer_lm")
    tok.save_pretrained(str(folder))
    save_model(model, folder)
    return folder, model, tok


def _run(tmp_path, tiny_lm, data_dir, method="npo_gdr", name="out", cfg=None, save_epochs=None,
         **hp):
    """Train a run and return its final checkpoint folder."""
    folder, _, _ = tiny_lm
    hp = {"lr": 1e-3, "epochs": 2, "params": "full", **hp}
    out = tmp_path / name
    unlearn(method, hp, 0, folder, data_dir, cfg or CFG, out, save_epochs=save_epochs)
    return out / f"epoch{hp['epochs']}"


def test_same_seed_gives_bitwise_identical_weights(tmp_path, tiny_lm, data_dir):
    a = load_file(str(_run(tmp_path, tiny_lm, data_dir, name="a") / "model.safetensors"))
    b = load_file(str(_run(tmp_path, tiny_lm, data_dir, name="b") / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_full_params_change_only_decoder_linear_weights(tmp_path, tiny_lm, data_dir):
    folder, _, _ = tiny_lm
    before = load_file(str(folder / "model.safetensors"))
    after = load_file(str(_run(tmp_path, tiny_lm, data_dir, method="ga_klr") / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was trained"
    assert all(".layers." in k and k.endswith("proj.weight") for k in changed), changed
    assert not any("embed" in k or "norm" in k or "lm_head" in k for k in changed)


def test_train_log_has_every_term(tmp_path, tiny_lm, data_dir):
    out = _run(tmp_path, tiny_lm, data_dir)
    log = pd.read_parquet(out.parent / "train_log.parquet")
    assert {"step", "epoch", "forget", "regularizer", "loss", "lr", "grad_norm", "seconds",
            "tokens"} <= set(log.columns)
    assert log.step.tolist() == list(range(1, len(log) + 1))
    assert log.epoch.max() == 2
    # npo_gdr: loss = forget + alpha * regularizer (alpha defaults to 1)
    assert (log.loss - (log.forget + log.regularizer)).abs().max() < 1e-5


def test_lora_adapter_merges_to_the_same_logits(tmp_path, tiny_lm, data_dir):
    from peft import PeftModel

    from relapse.models.io import load_model

    folder, _, tok = tiny_lm
    out = _run(tmp_path, tiny_lm, data_dir, method="ga_gdr", params="lora", lr=1e-2)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists()     # the adapter and a pointer to its base
    merged = load_model(out)
    adapter = PeftModel.from_pretrained(load_model(folder), str(out / "adapter")).eval()
    ids = tok("Alden Ashdown was born in", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = merged(ids).logits, adapter(ids).logits
        base = load_model(folder)(ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, base, atol=1e-4), "the adapter changed nothing"


def test_nan_loss_fails_with_diagnostic_and_writes_nothing(tmp_path, tiny_lm, data_dir):
    @registry.register_forget("nan_probe")
    def nan_probe(ctx, batch, hp):
        return ctx.forward(batch).logits.mean() * float("nan")

    try:
        with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 0: forget=nan"):
            _run(tmp_path, tiny_lm, data_dir, method="nan_probe_gdr", name="nan")
    finally:
        registry._FORGET.pop("nan_probe")
    assert not (tmp_path / "nan").exists()
    assert not list(tmp_path.glob(".nan.tmp-*"))


def _weights(folder):
    """A checkpoint's weights: its file, or a LoRA checkpoint's merged over its base."""
    if (folder / "model.safetensors").exists():
        return load_file(str(folder / "model.safetensors"))
    from relapse.models.io import load_model

    return load_model(folder).state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _nll(model, tok, texts):
    from relapse.models.batching import encode
    from relapse.models.losses import token_nll

    batch = encode(tok, texts, eos=True)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(token_nll(logits, batch["labels"]))


# α for the regularized methods: NPO's forget gradient is a sum over a sequence's tokens, so it
# needs a larger α than GA's token mean to hold retain NLL (forget and retain biographies share
# their templates, so every forget step also raises retain NLL).
UNLEARN_HP = {"ga": {}, "ga_gdr": {"alpha": 5}, "ga_klr": {"alpha": 5}, "npo": {},
              "npo_gdr": {"alpha": 20}, "npo_klr": {"alpha": 20}, "simnpo": {},
              "npo_gdr_sure": {"alpha": 20, "gamma": 50},
              # the defenses (smoothing.py, objectives/quail.py)
              # (RS's default σ = 0.1 is the code's Zephyr-7B setting: noise too large here)
              "npo_gdr_sam": {"alpha": 20, "rho": 0.01},
              "ga_gdr_rs": {"alpha": 5, "sigma": 0.01, "samples": 2},
              "quail_gdr": {"alpha": 5}}


@pytest.mark.parametrize("params", ["full", "lora"])
@pytest.mark.parametrize("method", sorted(UNLEARN_HP))
def test_every_method_raises_forget_nll_and_regularizers_hold_retain(
        tmp_path, target_lm, data_dir, method, params):
    """Measured (5 steps; forget/retain NLL rise): unregularized methods raise retain NLL by
    about 0.67x the forget rise (shared templates); with these α the regularized ones by at most
    0.37x. A sign-flipped forget loss lowers forget NLL; a sign-flipped regularizer raises retain."""
    from relapse.models.io import load_model

    folder, target, tok = target_lm
    forget = list(pd.read_parquet(data_dir / "forget.parquet").text)
    retain = list(pd.read_parquet(data_dir / "retain.parquet").text)
    out = _run(tmp_path, target_lm, data_dir, method=method, params=params, epochs=5,
               lr=1e-3 if params == "full" else 1e-2, **UNLEARN_HP[method])
    assert (out / "tokenizer.json").exists() and (out / "unlearn_manifest.json").exists()
    model = load_model(out)
    forget_rise = _nll(model, tok, forget) - _nll(target, tok, forget)
    retain_rise = _nll(model, tok, retain) - _nll(target, tok, retain)
    assert forget_rise > 0.02, f"forget NLL did not rise: {forget_rise:+.3f}"
    if registry.get_method(method).regularizer is not None:
        assert retain_rise < 0.5 * forget_rise, (forget_rise, retain_rise)


def _layer_mse(hidden, target, mask):
    per_token = (hidden - target).pow(2).mean(-1)
    return float((per_token * mask).sum() / mask.sum())


@pytest.mark.parametrize("params", ["full", "lora"])
def test_rmu_moves_forget_activations_toward_the_steering_target(tmp_path, target_lm, data_dir,
                                                                  params):
    """α = 1 here: forget and retain biographies share their templates, so at WMDP's α = 1200
    the retain term pins layer ℓ and the forget activations barely move (measured: 0.6715 →
    0.6719 in 5 steps)."""
    import json

    from relapse.models.batching import encode
    from relapse.models.io import load_model
    from relapse.unlearn.step import StepContext

    folder, target, tok = target_lm
    out = _run(tmp_path, target_lm, data_dir, method="rmu", params=params, epochs=5,
               lr=1e-2 if params == "full" else 3e-2, layer=1, alpha=1)
    c = json.loads((out / "unlearn_manifest.json").read_text())["rmu_steer"]["c"]
    forget = encode(tok, list(pd.read_parquet(data_dir / "forget.parquet").text), eos=True)
    mask = forget["attention_mask"].float()

    def distance(model):
        ctx = StepContext(model, "paper", seed=0)
        with torch.no_grad():
            h = ctx.hidden(forget, 1)
        return _layer_mse(h, c * ctx.steering_vector(h.shape[-1]), mask)

    before, after = distance(target), distance(load_model(out))
    assert after < 0.85 * before, (before, after)   # measured: 0.67 → 0.48 (full), 0.26 (lora)


@pytest.mark.parametrize("params", ["full", "lora"])
def test_rmu_updates_only_the_down_proj_of_layers_l_minus_2_to_l(tmp_path, four_layer_lm,
                                                                 data_dir, params):
    """WMDP's RMU updates `param_ids=[6]` of layers ℓ−2..ℓ: the MLP down-projection. With LoRA
    only those modules' adapters train, so merging leaves every other weight bit-identical."""
    folder, _, _ = four_layer_lm
    out = _run(tmp_path, four_layer_lm, data_dir, method="rmu", params=params, epochs=1, lr=1e-2,
               layer=3, alpha=1)
    before, after = _weights(folder), _weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2, 3)}
    if params == "lora":
        adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        moved = {k for k, v in adapter.items() if "lora_B" in k and v.abs().sum() > 0}
        assert moved and all(".mlp.down_proj." in k for k in moved), moved
        assert {int(k.split(".layers.")[1].split(".")[0]) for k in moved} == {1, 2, 3}


def test_rmu_steering_coefficient_is_steer_times_the_activation_norm(tmp_path, four_layer_lm,
                                                                     data_dir):
    import json

    from relapse.models.batching import encode

    folder, model, tok = four_layer_lm
    forget = encode(tok, list(pd.read_parquet(data_dir / "forget.parquet").text), eos=True)
    with torch.no_grad():
        # hidden_states[0] is the embedding output, so [ℓ + 1] is decoder layer ℓ's output
        h = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"],
                  output_hidden_states=True).hidden_states[3]
    mask = forget["attention_mask"].bool()
    norm = float(h.norm(dim=-1)[mask].mean())
    out = _run(tmp_path, four_layer_lm, data_dir, method="rmu", name="norm", epochs=1, layer=2,
               steer=3.0)
    rmu = json.loads((out / "unlearn_manifest.json").read_text())["rmu_steer"]
    assert rmu["activation_norm"] == pytest.approx(norm, rel=1e-5)
    assert rmu["c"] == pytest.approx(3.0 * norm, rel=1e-5)
    out = _run(tmp_path, four_layer_lm, data_dir, method="rmu", name="raw", epochs=1, layer=2,
               steer=6.5, steer_mode="raw")
    assert json.loads((out / "unlearn_manifest.json").read_text())["rmu_steer"]["c"] == 6.5
    with pytest.raises(ValueError, match="steer_mode 'unit'"):
        _run(tmp_path, four_layer_lm, data_dir, method="rmu", name="bad", epochs=1, layer=2,
             steer_mode="unit")


def test_epoch_checkpoints_equal_shorter_runs(tmp_path, tiny_lm, data_dir):
    long = _run(tmp_path, tiny_lm, data_dir, name="long", epochs=3, save_epochs=[1, 3])
    short = _run(tmp_path, tiny_lm, data_dir, name="short", epochs=1)
    assert _same(_weights(long.parent / "epoch1"), _weights(short))
    assert not (long.parent / "epoch2").exists()
    # saving a LoRA run's intermediate checkpoint leaves training unchanged
    lora_long = _run(tmp_path, tiny_lm, data_dir, name="ll", params="lora", epochs=2, save_epochs=[1, 2])
    lora_short = _run(tmp_path, tiny_lm, data_dir, name="ls", params="lora", epochs=2)
    assert _same(_weights(lora_long), _weights(lora_short))


def test_select_epoch_links_a_checkpoint(tmp_path, tiny_lm, data_dir):
    from relapse.unlearn.checkpoints import select_epoch

    run = _run(tmp_path, tiny_lm, data_dir, name="run", epochs=2, save_epochs=[1, 2]).parent
    select_epoch(run, 1, tmp_path / "unlearned")
    assert _same(_weights(tmp_path / "unlearned"), _weights(run / "epoch1"))
    log = pd.read_parquet(tmp_path / "unlearned" / "train_log.parquet")
    assert log.epoch.max() == 1
    with pytest.raises(FileNotFoundError):
        select_epoch(run, 5, tmp_path / "x")


@pytest.mark.parametrize("params", ["full", "lora"])
def test_sure_mask_leaves_unselected_modules_bit_identical(tmp_path, tiny_lm, data_dir, params):
    import json

    folder, _, _ = tiny_lm
    out = _run(tmp_path, tiny_lm, data_dir, method="npo_gdr_sure", lr=1e-2, gamma=75,
               params=params)
    sure = json.loads((out / "unlearn_manifest.json").read_text())["sure"]
    selected = set(sure["selected"])
    assert 0 < len(selected) < len(sure["saliency"])
    assert all(sure["saliency"][m] >= sure["threshold"] for m in selected)
    before, after = _weights(folder), _weights(out)
    for key in before:
        module = key.rsplit(".", 1)[0]
        if module in selected:
            assert not torch.equal(before[key], after[key]), f"selected {module} did not move"
        else:
            assert torch.equal(before[key], after[key]), f"masked {key} changed"


def test_sure_under_lora_selects_by_the_base_weight_gradient(tmp_path, tiny_lm, data_dir):
    """SURE's saliency is ‖∇_W L_forget‖ on each module's weight W, with LoRA too (the gradient
    of zero-initialised adapter factors is another quantity)."""
    import json

    import numpy as np

    from relapse.models.batching import encode
    from relapse.models.io import load_model
    from relapse.models.modules import decoder_linear_names

    folder, _, tok = tiny_lm
    out = _run(tmp_path, tiny_lm, data_dir, method="ga_sure", params="lora", epochs=1, gamma=60)
    sure = json.loads((out / "unlearn_manifest.json").read_text())["sure"]

    model = load_model(folder)
    batch = encode(tok, list(pd.read_parquet(data_dir / "forget.parquet").text), eos=True)
    names = decoder_linear_names(model)
    nll = model(**batch).loss     # Hugging Face's shifted mean token NLL; GA is its negative
    grads = torch.autograd.grad(nll, [model.get_submodule(n).weight for n in names])
    saliency = {n: float(g.norm()) for n, g in zip(names, grads)}
    threshold = np.percentile(list(saliency.values()), 60)
    expected = {n for n, v in saliency.items() if v >= threshold}

    def plain(name):   # the manifest names modules as in the plain model; compare either way
        return name.removeprefix("base_model.model.")

    recorded = {plain(n): v for n, v in sure["saliency"].items()}
    assert set(recorded) == set(names)
    assert all(recorded[n] == pytest.approx(v, rel=1e-4) for n, v in saliency.items())
    assert {plain(n) for n in sure["selected"]} == expected


@pytest.mark.parametrize("method", ["npo", "ga_gdr"])
def test_gradient_accumulation_matches_the_full_batch(tmp_path, tiny_lm, data_dir, method):
    full = _run(tmp_path, tiny_lm, data_dir, method=method, name="full", epochs=1)
    accum = _run(tmp_path, tiny_lm, data_dir, method=method, name="acc", epochs=1,
                 cfg={**CFG, "micro_batch_size": 2})
    a, b = _weights(full), _weights(accum)
    w0 = load_file(str(tiny_lm[0] / "model.safetensors"))
    delta_full = torch.cat([(a[k] - w0[k]).flatten() for k in a])
    delta_acc = torch.cat([(b[k] - w0[k]).flatten() for k in a])
    rel = float((delta_acc - delta_full).norm() / delta_full.norm())
    # Adam divides each gradient by its own running scale, so an element whose gradient is at
    # float32 rounding level (here: a few of 10^5) can step either way by up to lr per step:
    # elementwise, the two runs may differ by ~1e-6 on any CPU (measured 2.1e-6 for ga_gdr,
    # 2.6e-8 for npo). Such elements carry a vanishing share of the update's norm (measured
    # 1.5e-5 and 3.3e-7 of it), while a micro-batch weighted wrongly changes every element's
    # gradient, so the update, by a sizeable share of its norm (the same epoch in batches of 2
    # instead of 4: 1.0 of it for both methods): the bound sits between.
    assert rel < 1e-3, rel


# Texts of very different lengths, so that token-mean and sequence-mean weights differ.
SHORT_LONG = ["Ada.", "Bo Lin was born in Ashgrove.",
              "Cy Moor " * 12 + "is a native of Harrowgate, born in 1932, and plays the sitar.",
              "Di Vale " * 30 + "works as a marine biologist."]
RETAIN_SHORT_LONG = ["Emrys Varga " * 20 + "is a puppeteer.", "Fen Orr plays the trombone " * 6,
                     "Gil Rae.", "Hal Ng was born in 1990."]


@pytest.mark.parametrize("method", ["ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "simnpo", "rmu"])
def test_accumulated_gradient_equals_the_full_batch_gradient(target_lm, method):
    """Every loss family (token means: GA, GDR, KLR, RMU; sequence means: NPO, SimNPO), split
    into micro-batches of 2 short and 2 long texts, gives the gradient of the whole batch."""
    import copy

    from micro_batches import micro_batches
    from relapse.models.modules import make_trainable
    from relapse.unlearn.step import StepContext, _ref_seq_logprobs, accumulate_step

    _, base, tok = target_lm
    spec = registry.get_method(method)
    # SimNPO's weight σ(β·log π/|y| + δ) vanishes on these unseen texts at β = 2.5 (3e-7)
    hp = {**spec.defaults(), "layer": 1, "params": "full", "beta": 0.1}
    model = make_trainable(copy.deepcopy(base), "full", {})
    reference = copy.deepcopy(base).eval() if spec.needs_reference else None
    ctx = StepContext(model, "paper", reference, seed=0)

    def with_reference(batch):
        if spec.forget.needs_ref_seq_logp:
            batch["ref_seq_logp"] = _ref_seq_logprobs(base, [batch]) - 0.5   # ratio ≠ 1

    def batches(texts, sizes):
        return micro_batches(tok, texts, sizes, with_reference)

    if spec.forget.setup is not None:
        spec.forget.setup(ctx, batches(SHORT_LONG, [4]), hp)
    if method == "rmu":
        with torch.no_grad():   # move off θ₀, where the retain term's gradient is 0
            ctx.model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    gradients = []
    for sizes in ([4], [2, 2]):
        model.zero_grad(set_to_none=True)
        accumulate_step(spec, ctx, hp, batches(SHORT_LONG, sizes),
                        batches(RETAIN_SHORT_LONG, sizes) if spec.regularizer else None)
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
    whole, split = gradients
    assert whole.keys() == split.keys()
    assert max(float(g.abs().max()) for g in whole.values()) > 1e-3
    # The two differ only in the order of float32 sums. Every gradient entry sums one term per
    # token of the batch (forget and retain), so their rounding differs by about
    # sqrt(terms) · eps(float32) of the tensor's scale (a random walk of roundings; issue 25
    # measured 3.4 eps · max|g| on an AMD EPYC, where rtol=1e-5 failed; here at most 13 eps ·
    # max|g|, with sqrt(terms) = 20); k = 8 leaves room for the kernels' own blocking. A real
    # accumulation bug (a micro-batch's mean taken over its own tokens or sequences instead of
    # the batch's) moves the gradient by a fraction of its scale: with these short and long
    # texts, orders of magnitude above this bound (8 · 20 · eps = 1.9e-5 of the scale).
    terms = sum(int(b["attention_mask"].sum()) for b in batches(SHORT_LONG, [4]))
    if spec.regularizer:
        terms += sum(int(b["attention_mask"].sum()) for b in batches(RETAIN_SHORT_LONG, [4]))
    eps = torch.finfo(torch.float32).eps
    for name in whole:
        atol = 8 * eps * float(whole[name].abs().max()) * math.sqrt(terms)
        diff = float((whole[name] - split[name]).abs().max())
        assert diff <= atol, (name, diff, atol)


def test_npo_reference_logprobs_use_the_policy_autocast(tiny_lm):
    """At θ₀ the NPO log-ratio is exactly 0 when the reference log-probs run under the same
    autocast as the policy's forward (CPU bf16 autocast stands in for CUDA's)."""
    import copy

    from relapse.models.batching import encode
    from relapse.models.losses import sequence_logprob
    from relapse.unlearn.step import StepContext, _ref_seq_logprobs

    _, base, tok = tiny_lm
    model = copy.deepcopy(base)
    batch = encode(tok, SHORT_LONG, eos=True)

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    ref = _ref_seq_logprobs(model, [batch], bf16)
    ctx = StepContext(model, "paper", autocast=bf16)
    with torch.no_grad():
        policy = sequence_logprob(ctx.forward(batch).logits, batch["labels"])
    assert torch.equal(policy - ref, torch.zeros_like(ref))
    # the stand-in matters: without autocast the reference differs from the bf16 policy
    assert not torch.equal(policy, _ref_seq_logprobs(model, [batch]))
