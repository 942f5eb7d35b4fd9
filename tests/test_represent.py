"""Representation diagnostics: CKA, sign-free PCA measures, masked pooling, per-sample Fisher
with exact layer matching; each checked against an independent computation."""

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


def test_cka_identity_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert R.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert R.linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert R.linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0, abs=1e-10)
    y = rng.normal(size=(60, 5))
    assert R.linear_cka(x, y) == pytest.approx(_cka_kernel(x, y), rel=1e-9)
    # Not invariant to a non-isotropic scaling: it is a different similarity, not a constant.
    assert R.linear_cka(x, x * np.arange(1, 9)) < 0.999


def test_cka_of_independent_features_is_near_zero():
    rng = np.random.default_rng(1)
    assert R.linear_cka(rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4))) < 0.02


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
    # Independent route: the unpadded text's per-layer outputs, averaged by hand (hidden_states
    # k+1 is the output of layer k, except the last one, which has the final norm applied).
    ids = torch.tensor([tok(short)["input_ids"]])
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    for k in range(len(alone) - 1):
        np.testing.assert_allclose(alone[k][0], hs[k + 1][0].double().mean(0).numpy(),
                                   rtol=1e-5, atol=1e-6)


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
    np.testing.assert_allclose(vs.cka, 1.0, atol=1e-9)
    np.testing.assert_allclose(vs.pca_similarity, 1.0, atol=1e-9)
    np.testing.assert_allclose(vs.pca_shift, 0.0, atol=1e-9)
    np.testing.assert_allclose(vs.pca_distance, 0.0, atol=1e-9)
    np.testing.assert_allclose(vs.fisher_log_ratio.dropna(), 0.0, atol=1e-9)
    assert (frame[frame.measure == "fisher"].value > 0).all()
    paths = R.layer_figure(back, tmp_path / "fig")
    assert all(p.stat().st_size > 0 for p in paths)
