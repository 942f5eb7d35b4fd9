"""Representation diagnostics (DESIGN §9): is forgotten knowledge hidden or erased?

Token-level metrics cannot tell the two apart (arXiv 2505.16831); the model's internal states
can. Per decoder layer, a model is compared with the target and with the retrain model on the
same texts (forget and retain):

- cka: linear CKA of the masked, mean-pooled hidden states (one vector per text: the mean over
  its real tokens, BOS excluded, never a lone position-0 token, never the padding). By default
  (attacks.represent.cka) the debiased estimator, on the unbiased HSIC of Song et al. (2012):
  the biased one reads ≈ 1/(1 + n/d) on independent noise (0.90 at 64 texts of width 576),
  the debiased one ≈ 0 ± √2/n. Rows carry the estimator (`cka_estimator`);
- pca_similarity: mean |cos| of the first k principal directions of the two state sets (k =
  attacks.represent.components, default 1: PC1, the seed paper's measure). A principal
  direction's sign is arbitrary (SVD may return either), so the cosine is taken in absolute
  value: the sign-aligned cosine;
- pca_shift_pc1, pca_shift_pc2: the seed paper's PCA shift, (μ_model − μ_ref)·v, the change of
  the mean state's coordinate along the reference's PC1 and PC2 (signed, under scikit-learn's
  sign convention for v; the seed toolkit plots ΔPC1 against the PC2 coordinate);
- pca_shift: ‖(μ_model − μ_ref)·V_ref‖, the shift of the mean state projected on the
  reference's first k components (sign-free: a norm; |pca_shift_pc1| at k = 1);
- pca_distance: the mean over texts of ‖(x_model − x_ref)·V_ref‖, the paired distance in the
  reference's principal subspace (first k components);
- fisher: the diagonal empirical Fisher on forget texts, E_i[g_i²] with g_i the gradient of
  text i's NLL alone (per-sample gradients, not the squared batch gradient), averaged over the
  parameters of each decoder layer; layers are matched by their exact index
  (`layers.1.` is layer 1, never 10–19, the released toolkit's substring bug). `fisher_log_ratio`
  is log(F_model / F_ref) per layer. Under a LoRA adapter (a relearned QLoRA cell) the Fisher
  is taken over the base weights, so the entries compared are the reference's.

An attacked model folder (attacks.represent.attacked) is compared like a cell, with the
un-attacked target and retrain at its quant; its rows carry the attack's key columns.

The seed toolkit's other bugs are fixed here too: CKA there used position 0 alone, and its means
included padding (and BOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from relapse.models.modules import layer_index

REPRESENT_DEFAULTS = {"samples": 64, "components": 1, "cka": "debiased", "fisher_samples": 32,
                      "batch_size": 16, "max_tokens": 128, "splits": ["forget", "retain"]}
SIMILARITIES = ("cka", "pca_similarity", "pca_shift_pc1", "pca_shift_pc2", "pca_shift",
                "pca_distance")


# ---------------------------------------------------------------------------------------------
# Pure numpy measures

def _centred_gram(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0)
    return x @ x.T


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """The unbiased HSIC estimator of Song et al. (2012) for n x n Gram matrices:
    [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)), K̃ and L̃ with
    their diagonals set to 0. Needs n ≥ 4."""
    n = len(k)
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 examples, got {n}")
    k = np.array(k, dtype=np.float64)
    l = np.array(l, dtype=np.float64)
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    k_sums, l_sums = k.sum(0), l.sum(0)
    return float(((k * l).sum() + k_sums.sum() * l_sums.sum() / ((n - 1) * (n - 2))
                  - 2.0 * (k_sums @ l_sums) / (n - 2)) / (n * (n - 3)))


def _cka_debiased(x: np.ndarray, y: np.ndarray) -> float:
    k, l = _centred_gram(x), _centred_gram(y)
    denom = hsic_unbiased(k, k) * hsic_unbiased(l, l)
    return hsic_unbiased(k, l) / np.sqrt(denom) if denom > 0 else float("nan")


def _cka_biased(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else float("nan")


# attacks.represent.cka. The biased estimator (Kornblith et al. 2019, eq. 3) is pulled toward 1
# when n is not much larger than the width d: two independent isotropic noise sets then both
# have centred Gram matrices close to d·H, so it reads ≈ 1/(1 + n/d) on pure noise (0.90 at
# n = 64, d = 576). The debiased one (the unbiased HSIC in place of the plug-in one, as in
# Nguyen, Raghu & Kornblith 2021) is centred at 0 there, with a spread of about √2/n.
CKA_ESTIMATORS = {"debiased": _cka_debiased, "biased": _cka_biased}


def linear_cka(x: np.ndarray, y: np.ndarray, estimator: str = "debiased") -> float:
    """Linear CKA between [n, d1] and [n, d2] feature matrices of the same n examples:
    HSIC(K, L) / √(HSIC(K, K)·HSIC(L, L)) with K = XᶜXᶜᵀ, L = YᶜYᶜᵀ (columns centred). `debiased`
    uses the unbiased HSIC (`hsic_unbiased`; may be slightly negative, nan when a
    self-similarity is not positive), `biased` the plug-in one, ‖YᶜᵀXᶜ‖²_F / (‖XᶜᵀXᶜ‖_F
    ‖YᶜᵀYᶜ‖_F)."""
    if estimator not in CKA_ESTIMATORS:
        raise ValueError(f"unknown CKA estimator {estimator!r}; "
                         f"allowed: {', '.join(CKA_ESTIMATORS)}")
    if np.shape(x)[0] != np.shape(y)[0]:
        raise ValueError(f"CKA needs the same examples: {np.shape(x)[0]} vs {np.shape(y)[0]} "
                         "rows")
    return float(CKA_ESTIMATORS[estimator](x, y))


def principal_components(x: np.ndarray, k: int) -> np.ndarray:
    """The first k principal directions of x's rows, as rows [k, d]. Signs are made
    deterministic, as scikit-learn's PCA (≥ 1.5) does: each direction's largest-magnitude entry
    positive. Only the signed shifts (`pca_shifts`) depend on them."""
    x = np.asarray(x, dtype=np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    comps = vt[:min(k, vt.shape[0])]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    return comps * np.where(signs == 0, 1.0, signs)[:, None]


def pca_similarity(comps_a: np.ndarray, comps_b: np.ndarray) -> float:
    """Mean over i of the sign-aligned cosine of component i of a and of b."""
    a = comps_a / np.linalg.norm(comps_a, axis=1, keepdims=True)
    b = comps_b / np.linalg.norm(comps_b, axis=1, keepdims=True)
    return float(np.abs((a * b).sum(1)).mean())


def pca_shifts(x_model: np.ndarray, x_ref: np.ndarray, comps_ref: np.ndarray) -> np.ndarray:
    """The shift of the mean state along each of the reference's components, signed:
    (μ_model − μ_ref)·v_i, i.e. the difference of the two states' mean projections on v_i (the
    seed toolkit's ΔPC1 and, on v₂, ΔPC2). The sign follows the component's sign convention
    (`principal_components`: scikit-learn's), so it is comparable between models measured
    against the same reference; its magnitude is convention-free."""
    return (np.asarray(x_model, dtype=np.float64).mean(0)
            - np.asarray(x_ref, dtype=np.float64).mean(0)) @ comps_ref.T


def pca_shift(x_model: np.ndarray, x_ref: np.ndarray, comps_ref: np.ndarray) -> float:
    """Norm of the shift of the mean state along the reference's components."""
    return float(np.linalg.norm(pca_shifts(x_model, x_ref, comps_ref)))


def pca_distance(x_model: np.ndarray, x_ref: np.ndarray, comps_ref: np.ndarray) -> float:
    """Mean over paired texts of the distance between their states in the reference's
    principal subspace."""
    return float(np.linalg.norm((x_model - x_ref) @ comps_ref.T, axis=1).mean())


def per_layer_mean(values: dict[str, np.ndarray], n_layers: int) -> list[float]:
    """Mean of every entry of the parameters of each decoder layer, layers matched exactly."""
    sums = np.zeros(n_layers)
    counts = np.zeros(n_layers)
    for name, value in values.items():
        layer = layer_index(name)
        if layer is not None and layer < n_layers:
            sums[layer] += float(np.asarray(value, dtype=np.float64).sum())
            counts[layer] += np.asarray(value).size
    return list(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))


# ---------------------------------------------------------------------------------------------
# Model passes

def pooling_weights(input_ids, attention_mask, bos_token_id: int | None):
    """[batch, seq] weights of the mean pool: the attention mask without the BOS the tokenizer
    put before each text (its first real position, wherever padding puts it; none when the
    tokenizer has no BOS or did not add it). BOS's state is the same for every text at the
    first layers, a constant that dilutes the text's own. A text that is BOS alone keeps it."""
    import torch

    weights = attention_mask.clone()
    if bos_token_id is not None:
        rows = torch.arange(len(weights))
        first = attention_mask.argmax(1)              # the first position whose mask is 1
        bos = (input_ids[rows, first] == bos_token_id) & (attention_mask[rows, first] == 1)
        weights[rows[bos], first[bos]] = 0
        alone = weights.sum(1) == 0
        weights[alone] = attention_mask[alone]
    return weights


def pooled_states(model, tokenizer, texts: Sequence[str], batch_size: int = 16,
                  max_tokens: int | None = None) -> list[np.ndarray]:
    """Per decoder layer, [n_texts, hidden]: each layer's output averaged over the text's own
    tokens (attention mask, BOS excluded: `pooling_weights`), captured by forward hooks on the
    decoder blocks."""
    import torch

    from relapse.models.batching import encode
    from relapse.models.modules import decoder_layers

    layers = decoder_layers(model)
    captured: dict[int, Any] = {}
    hooks = [layer.register_forward_hook(
        lambda _m, _i, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    out: list[list[np.ndarray]] = [[] for _ in layers]
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = encode(tokenizer, texts[start:start + batch_size], max_length=max_tokens)
                mask = batch["attention_mask"].to(device)
                model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
                weights = pooling_weights(batch["input_ids"], batch["attention_mask"],
                                          getattr(tokenizer, "bos_token_id", None))
                weights = weights.to(device).unsqueeze(-1).double()
                for i in range(len(layers)):
                    h = captured[i].double()
                    pooled = (h * weights).sum(1) / weights.sum(1)
                    out[i].append(pooled.cpu().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return [np.concatenate(chunks) for chunks in out]


def empirical_fisher(model, tokenizer, texts: Sequence[str],
                     max_tokens: int | None = None) -> list[float]:
    """Per decoder layer, the mean diagonal empirical Fisher E_i[(∇ NLL_i)²] over `texts`, each
    text's gradient taken alone (a per-sample gradient)."""
    import torch

    from relapse.models.batching import encode
    from relapse.models.modules import decoder_layers
    from relapse.models.losses import token_nll

    n_layers = len(decoder_layers(model))
    # The decoder layers' own weights (under a LoRA adapter, its base weights: the gradient of the
    # effective weight W + BA), so that a model with an adapter is matched entry for entry with
    # a reference without one.
    params = {n: p for n, p in model.named_parameters()
              if layer_index(n) is not None and "lora_" not in n}
    flags = {n: p.requires_grad for n, p in params.items()}
    device = next(model.parameters()).device
    squares = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        for text in texts:
            batch = encode(tokenizer, [text], max_length=max_tokens, eos=True)
            logits = model(input_ids=batch["input_ids"].to(device)).logits
            grads = torch.autograd.grad(token_nll(logits, batch["labels"].to(device)),
                                        list(params.values()), allow_unused=True)
            for name, g in zip(params, grads):
                if g is not None:
                    squares[name] += g.double() ** 2
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
    return per_layer_mean({n: (s / max(len(texts), 1)).cpu().numpy() for n, s in squares.items()},
                          n_layers)


# ---------------------------------------------------------------------------------------------
# The stage

def compare_states(states: list[np.ndarray], ref_states: list[np.ndarray], components: int,
                   cka: str = "debiased") -> list[dict[str, float]]:
    """Every similarity of `SIMILARITIES`, per layer, between a model's and a reference's
    pooled states on the same texts; k = `components` for the similarity, the shift's norm
    and the distance, always PC1 and PC2 for the signed shifts (nan where there is no PC2)."""
    rows = []
    for x, r in zip(states, ref_states):
        comps_x = principal_components(x, components)
        comps_r = principal_components(r, max(components, 2))
        k = min(len(comps_x), len(comps_r), components)
        shifts = pca_shifts(x, r, comps_r)
        rows.append({"cka": linear_cka(x, r, cka),
                     "pca_similarity": pca_similarity(comps_x[:k], comps_r[:k]),
                     "pca_shift_pc1": float(shifts[0]) if len(shifts) > 0 else float("nan"),
                     "pca_shift_pc2": float(shifts[1]) if len(shifts) > 1 else float("nan"),
                     "pca_shift": pca_shift(x, r, comps_r[:components]),
                     "pca_distance": pca_distance(x, r, comps_r[:components])})
    return rows


def _texts(data_dir: Path, split: str, n: int) -> list[str]:
    from relapse.data.prepare import has_split, load_split

    name = "retain_eval" if split == "retain" and has_split(data_dir, "retain_eval") \
        else split
    return list(load_split(data_dir, name).text)[:n]


def represent(model_dir: str | Path, references: dict[str, str | Path], data_dir: str | Path,
              keys: dict[str, Any], settings: dict, out: str | Path, device: str = "cpu",
              threads: int = 1, dtype: str = "float32"):
    """Compare one model folder with each reference folder (`{"target": …, "retrain": …}`) and
    write `out` (repr.parquet): one row per (reference, split, layer, measure)."""
    import math

    import pandas as pd

    from relapse.io import write_parquet
    from relapse.models.tokenizer import load_tokenizer
    from relapse.provenance import provenance
    from relapse.attacks.cells import load_cell
    from relapse.seeding import seed_everything

    cfg = {**REPRESENT_DEFAULTS, **settings}
    if cfg["cka"] not in CKA_ESTIMATORS:
        raise ValueError(f"attacks.represent.cka: unknown estimator {cfg['cka']!r}; "
                         f"allowed: {', '.join(CKA_ESTIMATORS)}")
    seed_everything(0, threads)
    data_dir = Path(data_dir)
    tokenizer = load_tokenizer(model_dir)
    texts = {s: _texts(data_dir, s, int(cfg["samples"])) for s in cfg["splits"]}
    fisher_texts = _texts(data_dir, "forget", int(cfg["fisher_samples"]))

    def measure(folder):
        # Plain Linear modules, whose weights are exactly the quantized values and which
        # backpropagate (the Fisher needs gradients).
        model = load_cell(folder, device=device, dtype=dtype)
        states = {s: pooled_states(model, tokenizer, t, int(cfg["batch_size"]),
                                   cfg["max_tokens"]) for s, t in texts.items()}
        fisher = empirical_fisher(model, tokenizer, fisher_texts, cfg["max_tokens"])
        del model
        return states, fisher

    states, fisher = measure(model_dir)
    rows = [{"reference": "none", "split": "forget", "layer": i, "measure": "fisher", "value": f}
            for i, f in enumerate(fisher)]
    for ref_name, ref_dir in references.items():
        ref_states, ref_fisher = measure(ref_dir)
        for split in texts:
            for i, sims in enumerate(compare_states(states[split], ref_states[split],
                                                    int(cfg["components"]), cfg["cka"])):
                rows += [{"reference": ref_name, "split": split, "layer": i, "measure": m,
                          "value": v} for m, v in sims.items()]
        rows += [{"reference": ref_name, "split": "forget", "layer": i,
                  "measure": "fisher_log_ratio",
                  "value": math.log(f / g) if f > 0 and g > 0 else float("nan")}
                 for i, (f, g) in enumerate(zip(fisher, ref_fisher))]
    frame = pd.DataFrame([{**keys, **row, "dtype": dtype, "cka_estimator": cfg["cka"]}
                          for row in rows])
    write_parquet(out, frame, provenance(cfg, keys=keys, references={k: str(v) for k, v in
                                                                    references.items()}))
    return frame


def layer_figure(frame, out_stem: str | Path) -> list[Path]:
    """Per-layer figure of one repr table: a panel per measure, a line per (reference, split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = list(dict.fromkeys(frame.measure))
    fig, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 2.8), squeeze=False)
    for ax, m in zip(axes[0], measures):
        sub = frame[frame.measure == m]
        for (ref, split), line in sub.groupby(["reference", "split"], sort=True):
            ax.plot(line.layer, line.value, marker="o",
                    label=split if ref == "none" else f"vs {ref}, {split}")
        ax.set_title(m)
        ax.set_xlabel("decoder layer")
        ax.legend(fontsize=6)
    fig.tight_layout()
    from relapse.io import atomic_file

    paths = []
    for ext in ("png", "svg"):
        path = Path(f"{out_stem}.{ext}")
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=ext)
        paths.append(path)
    plt.close(fig)
    return paths
