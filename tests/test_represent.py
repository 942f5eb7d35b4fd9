"""Representation diagnostics: CKA, sign-free PCA measures, masked pooling, per-sample Fisher
with exact layer matching; each checked against an independent computation."""

import itertools

import numpy as np
import pandas as pd
import pytest

from relapse.attacks import represent as R


def _cka_kernel(x, y):
    """CKA through centred Gram matrices and HSIC (the kernel form, not the feature form)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("estimator", ["debiased", "biased"])
def test_cka_identity_and_invariances(estimator):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    y = rng.normal(size=(60, 5)) + 0.5 * x[:, :5]
    cka = lambda a, b: R.linear_cka(a, b, estimator)
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    # Orthogonal transforms, isotropic scaling and translation leave it unchanged.
    assert cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert cka(x, 7.5 * x + 3.0) == pytest.approx(1.0, abs=1e-10)
    assert cka(x @ q, 0.2 * y - 4.0) == pytest.approx(cka(x, y), rel=1e-10)
    assert cka(x, y) == pytest.approx(cka(y, x), rel=1e-12)
    # Not invariant to a non-isotropic scaling: it is a different similarity, not a constant.
    assert cka(x, x * np.arange(1, 9)) < 0.999


def test_biased_cka_is_the_kernel_form():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(60, 5))
    assert R.linear_cka(x, y, "biased") == pytest.approx(_cka_kernel(x, y), rel=1e-9)


def _hsic_u_statistic(k, l):
    """HSIC as the U-statistic over ordered 4-tuples of distinct examples (Gretton et al. 2008;
    Song et al. 2012 prove their closed form equals it): the mean over (i, j, q, r) of
    k_ij l_ij + k_ij l_qr − 2 k_ij l_iq, the symmetrisation over the 4! orders being implied
    by summing over every order. Returns the value and the mean |term| (its rounding scale)."""
    n = len(k)
    total, scale, count = 0.0, 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        term = k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2.0 * k[i, j] * l[i, q]
        total += term
        scale += abs(term)
        count += 1
    return total / count, scale / count, count


def test_debiased_cka_is_the_unbiased_hsic_u_statistic():
    rng = np.random.default_rng(4)
    n = 8
    x = rng.normal(size=(n, 5))
    y = x @ rng.normal(size=(5, 3)) + rng.normal(size=(n, 3))
    k, l = [(a - a.mean(0)) @ (a - a.mean(0)).T for a in (x, y)]
    eps = np.finfo(np.float64).eps
    hsic = {}
    for name, (a, b) in {"kl": (k, l), "kk": (k, k), "ll": (l, l)}.items():
        value, scale, count = _hsic_u_statistic(a, b)
        # Rounding of a sum of `count` terms: at most count·eps·(mean |term|).
        assert R.hsic_unbiased(a, b) == pytest.approx(value, abs=count * eps * scale)
        hsic[name] = value
    expected = hsic["kl"] / np.sqrt(hsic["kk"] * hsic["ll"])
    assert abs(expected) > 0.1                          # a real relation, not a rounding test
    assert R.linear_cka(x, y) == pytest.approx(expected, rel=1e-9)
    assert R.linear_cka(x, y) == R.linear_cka(x, y, "debiased")
    # The estimators differ: the biased one is not merely rescaled.
    assert abs(R.linear_cka(x, y, "biased") - expected) > 1e-3


def test_cka_on_independent_noise():
    """Why the default is the debiased estimator: 64 texts, hidden size 576 (SmolLM2-135M's).
    Under independence n·HSIC_u tends to Σ_ab λ_a μ_b (χ²_ab − 1) (a degenerate U-statistic;
    λ, μ the covariance spectra), variance 2·d1·d2 for isotropic features, while the
    self-HSICs estimate ‖Σ‖²_F = d: the debiased CKA is ≈ 0 with sd √2/n = 0.022 at any d
    (simulated: 0.022–0.024 for d = 32…2048), so 0.1 is a 4-sigma bound. The biased one reads
    ≈ 1/(1 + n/d) = 0.90: both centred Gram matrices are ≈ d times the centring matrix."""
    n, d = 64, 576
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        assert abs(R.linear_cka(x, y)) < 0.1
        assert R.linear_cka(x, y, "biased") > 0.8
    rng = np.random.default_rng(1)
    for estimator in R.CKA_ESTIMATORS:                  # many texts, few features: both ≈ 0
        assert abs(R.linear_cka(rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4)),
                                estimator)) < 0.02


def test_cka_rejects_what_it_cannot_estimate():
    x = np.random.default_rng(0).normal(size=(3, 4))
    with pytest.raises(ValueError, match="at least 4"):
        R.linear_cka(x, x)
    assert R.linear_cka(x, x, "biased") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="allowed: debiased, biased"):
        R.linear_cka(x, x, "unbiased")
    with pytest.raises(ValueError, match="same examples"):
        R.linear_cka(x, x[:2], "biased")


def test_principal_components_match_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 6)) * np.array([5, 4, 3, 2, 1, 0.5])
    ours = R.principal_components(x, 3)
    theirs = PCA(n_components=3).fit(x).components_
    np.testing.assert_allclose(np.abs((ours * theirs).sum(1)), 1.0, atol=1e-9)


def test_pca_measures_ignore_component_signs():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 6)) * np.array([4, 3, 2, 1, 1, 1])
    b = a + 0.3 * rng.normal(size=a.shape) + 0.5
    ca, cb = R.principal_components(a, 3), R.principal_components(b, 3)
    flipped = cb.copy()
    flipped[1] *= -1
    assert R.pca_similarity(ca, flipped) == pytest.approx(R.pca_similarity(ca, cb), abs=1e-12)
    assert R.pca_shift(b, a, flipped) == pytest.approx(R.pca_shift(b, a, cb), abs=1e-12)
    assert R.pca_distance(b, a, flipped) == pytest.approx(R.pca_distance(b, a, cb), abs=1e-12)
    assert R.pca_similarity(ca, ca) == pytest.approx(1.0)
    assert R.pca_similarity(np.eye(4)[:2], np.eye(4)[2:]) == pytest.approx(0.0)
    # Shift: a translation by t moves the mean projection by exactly t's projection.
    t = rng.normal(size=6)
    assert R.pca_shift(a + t, a, ca) == pytest.approx(np.linalg.norm(ca @ t), rel=1e-9)
    assert R.pca_distance(a + t, a, ca) == pytest.approx(np.linalg.norm(ca @ t), rel=1e-9)


def test_pca_measures_on_known_components():
    """Reference states with PC1 = e1 (variance 4.5) and PC2 = e2 (variance 2); the model's are
    the same states rotated by θ in the (e1, e3) plane and translated by t. Its PC1 is then
    (cos θ, 0, sin θ): the PC1 similarity is |cos θ|; the mean moves by exactly t, so the
    shifts along the reference's PC1 and PC2 are t₁ and t₂, and t₃ is invisible to both."""
    ref = np.array([[3.0, 0, 0], [-3, 0, 0], [0, 2, 0], [0, -2, 0]] * 3)
    theta = 0.4
    rot = np.array([[np.cos(theta), 0, -np.sin(theta)], [0, 1, 0],
                    [np.sin(theta), 0, np.cos(theta)]])
    t = np.array([0.5, -0.25, 1.0])
    model = ref @ rot.T + t
    np.testing.assert_allclose(np.abs(R.principal_components(ref, 2)), np.eye(3)[:2],
                               atol=1e-12)
    assert R.REPRESENT_DEFAULTS["components"] == 1
    row = R.compare_states([model], [ref], R.REPRESENT_DEFAULTS["components"])[0]
    assert row["pca_similarity"] == pytest.approx(np.cos(theta), rel=1e-12)
    # Sign convention (the largest entry of each component positive): v1 = +e1, v2 = +e2.
    assert row["pca_shift_pc1"] == pytest.approx(0.5, rel=1e-12)
    assert row["pca_shift_pc2"] == pytest.approx(-0.25, rel=1e-12)
    assert row["pca_shift"] == pytest.approx(0.5, rel=1e-12)     # |ΔPC1| at k = 1
    # Paired distance along PC1: each state's e1 coordinate moves by x₁(cos θ − 1) − x₃ sin θ
    # + t₁ (x₃ = 0 here).
    along = np.abs(ref[:, 0] * (np.cos(theta) - 1) + t[0])
    assert row["pca_distance"] == pytest.approx(along.mean(), rel=1e-12)
    two = R.compare_states([model], [ref], 2)[0]
    assert two["pca_similarity"] == pytest.approx((np.cos(theta) + 1) / 2, rel=1e-12)
    assert two["pca_shift"] == pytest.approx(np.hypot(0.5, 0.25), rel=1e-12)
    assert two["pca_shift_pc1"] == row["pca_shift_pc1"]
    # The signed shifts flip with the sign convention; their magnitudes do not.
    assert R.pca_shifts(model, ref, -np.eye(3)[:2]) == pytest.approx([-0.5, 0.25])


def test_layer_matching_is_exact():
    assert R.layer_index("model.layers.1.mlp.up_proj.weight") == 1
    assert R.layer_index("base_model.model.model.layers.12.self_attn.q_proj.weight") == 12
    assert R.layer_index("model.embed_tokens.weight") is None
    assert R.layer_index("model.sublayers.3.weight") is None
    values = {f"model.layers.{i}.mlp.weight": np.full((2, 2), float(i)) for i in range(20)}
    means = R.per_layer_mean(values, 20)
    assert means[1] == 1.0 and means[10] == 10.0
    assert means == [float(i) for i in range(20)]


@pytest.fixture(scope="module")
def tiny(tiny_lm):
    _, model, tok = tiny_lm
    return model, tok


def test_padding_never_changes_a_pooled_state(tiny):
    import torch

    model, tok = tiny
    short, long = "Ann Lee was born in Oslo.", "Bo Kim " * 12 + "was a chemist in Lima in 1950."
    alone = R.pooled_states(model, tok, [short])
    batched = R.pooled_states(model, tok, [short, long])
    for a, b in zip(alone, batched):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)

def _mean_without_bos(model, ids, bos_id):
    """Per layer, the mean of one unpadded text's outputs over its positions, BOS dropped by
    hand (hidden_states k+1 is the output of layer k, except the last one, which has the final
    norm applied)."""
    import torch

    keep = [i for i, t in enumerate(ids) if not (i == 0 and t == bos_id)]
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    return [hs[k + 1][0, keep].double().mean(0).numpy() for k in range(len(hs) - 2)]


def test_pooled_states_are_the_mean_over_text_tokens_without_bos(tiny):
    """Fails on the old pooling, which averaged BOS in (up to 2.9e-3 off on this model)."""
    model, tok = tiny
    texts = ["Ann Lee was born in Oslo.", "Bo Kim " * 12 + "was a chemist in Lima in 1950."]
    pooled = R.pooled_states(model, tok, texts)              # the first text is padded
    for i, text in enumerate(texts):
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
        for k, want in enumerate(_mean_without_bos(model, ids, tok.bos_token_id)):
            np.testing.assert_allclose(pooled[k][i], want, rtol=1e-5, atol=1e-6)


class _NoBos:
    """The project's tokenizer without BOS (as a GPT-2-style one): nothing is dropped."""

    def __init__(self, tok):
        self.tok, self.pad_token_id, self.bos_token_id = tok, tok.pad_token_id, None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.tok(text, add_special_tokens=False)["input_ids"]}


def test_pooled_states_without_bos_keep_every_token(tiny):
    model, tok = tiny
    texts = ["Ann Lee was born in Oslo.", "Bo Kim was a chemist in Lima in 1950."]
    pooled = R.pooled_states(model, _NoBos(tok), texts)
    for i, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for k, want in enumerate(_mean_without_bos(model, ids, None)):
            np.testing.assert_allclose(pooled[k][i], want, rtol=1e-5, atol=1e-6)


def test_pooling_weights_find_bos_under_either_padding():
    import torch

    bos, pad = 1, 0
    ids = torch.tensor([[bos, 5, 6, pad], [pad, pad, bos, 7], [5, 6, 7, 8], [pad, pad, pad, bos]])
    mask = (ids != pad).long()
    mask[3] = torch.tensor([0, 0, 0, 1])
    w = R.pooling_weights(ids, mask, bos)
    assert w.tolist() == [[0, 1, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    assert R.pooling_weights(ids, mask, None).tolist() == mask.tolist()


def test_fisher_is_the_mean_of_per_sample_squared_gradients(tiny):
    import copy

    import torch

    model, tok = tiny
    model = copy.deepcopy(model)
    texts = ["Ann Lee was born in Oslo.", "Bo Kim was a chemist.", "Cy Ng lives in Lima."]
    ours = R.empirical_fisher(model, tok, texts)
    sums: dict[int, list] = {}
    for text in texts:
        model.zero_grad()
        ids = torch.tensor([tok(text)["input_ids"] + [tok.eos_token_id]])
        model(input_ids=ids, labels=ids).loss.backward()
        for name, p in model.named_parameters():
            parts = name.split(".")
            if parts[:2] == ["model", "layers"]:
                sums.setdefault(int(parts[2]), {}).setdefault(name, 0)
                sums[int(parts[2])][name] = sums[int(parts[2])][name] + p.grad.double() ** 2
    expected = [float(sum(g.sum() for g in sums[k].values())
                      / sum(g.numel() for g in sums[k].values()) / len(texts))
                for k in sorted(sums)]
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_represent_against_itself(tiny_lm, tmp_path):
    from relapse.data.prepare import build_splits

    folder, _, _ = tiny_lm
    splits, _ = build_splits({"people": 20, "seed": 0})
    data = tmp_path / "data"
    data.mkdir()
    for name in ("forget", "retain"):
        splits[name].to_parquet(data / f"{name}.parquet", index=False)
    keys = {"bench": "b", "method": "m", "hp": "default", "seed": 0, "quant": "none-w16"}
    out = tmp_path / "repr.parquet"
    frame = R.represent(folder, {"target": folder}, data, keys,
                        {"samples": 12, "fisher_samples": 3, "components": 2}, out)
    assert out.exists()
    back = pd.read_parquet(out)
    assert set(back.split) == {"forget", "retain"} and set(back.layer) == {0, 1}
    vs = back[back.reference == "target"].pivot_table(index=["split", "layer"], columns="measure",
                                                      values="value")
    assert set(R.SIMILARITIES) <= set(vs.columns)
    assert set(back.cka_estimator) == {"debiased"}
    np.testing.assert_allclose(vs.cka, 1.0, atol=1e-9)
    np.testing.assert_allclose(vs.pca_similarity, 1.0, atol=1e-9)
    for shift in ("pca_shift", "pca_shift_pc1", "pca_shift_pc2"):
        np.testing.assert_allclose(vs[shift], 0.0, atol=1e-9)
    np.testing.assert_allclose(vs.pca_distance, 0.0, atol=1e-9)
    np.testing.assert_allclose(vs.fisher_log_ratio.dropna(), 0.0, atol=1e-9)
    assert (frame[frame.measure == "fisher"].value > 0).all()
    paths = R.layer_figure(back, tmp_path / "fig")
    assert all(p.stat().st_size > 0 for p in paths)
    biased = R.represent(folder, {"target": folder}, data, keys,
                         {"samples": 12, "fisher_samples": 1, "cka": "biased"},
                         tmp_path / "biased.parquet")
    assert set(biased.cka_estimator) == {"biased"}
    with pytest.raises(ValueError, match="attacks.represent.cka.*allowed: debiased, biased"):
        R.represent(folder, {"target": folder}, data, keys, {"cka": "kernel"},
                    tmp_path / "bad.parquet")


def test_config_names_the_cka_estimators(default_config):
    import copy

    from relapse.config import ConfigError, validate

    assert default_config["attacks"]["represent"]["cka"] == "debiased"
    assert default_config["attacks"]["represent"]["components"] == 1
    cfg = copy.deepcopy(default_config)
    cfg["attacks"]["represent"]["cka"] = "kernel"
    with pytest.raises(ConfigError, match="cka: 'kernel' is not allowed; allowed: debiased, "
                                          "biased"):
        validate(cfg)
