"""MIA scores, AUC and PrivLeak on crafted numbers; the teacher-forced scoring engine against an
unbatched forward; PrivLeak and perplexity through evaluate_model."""

import math
import zlib

import numpy as np
import pandas as pd
import pytest

from relapse.evaluate import mia
from relapse.stats import bootstrap_statistic

TEXTS = ["Alden Ashdown was born in Veloria in 1934.", "Brisa",
         "Question: Where was Alden Ashdown born?\nAnswer: Veloria\n\n",
         "Ivo Oakes plays the cello, and works as a cartographer in Port Elmira.", "Wren Dray",
         "He studied at the Academy of Norhaven and later taught there for many years."]


# --- scores on crafted log-probs ---------------------------------------------------------------

def test_mink_is_minus_the_mean_of_the_lowest_k_percent():
    lp = [-0.1, -2.0, -0.5, -3.0, -1.0]
    assert mia.mink_score(lp, 40) == pytest.approx(2.5)        # 2 of 5: -3, -2
    assert mia.mink_score(lp, 20) == pytest.approx(3.0)        # 1 of 5
    assert mia.mink_score(lp, 10) == pytest.approx(3.0)        # floor(0.5) -> at least one
    assert mia.mink_score(lp, 100) == pytest.approx(6.6 / 5)   # every token: the loss
    ten = [-i / 10 for i in range(10)]                         # -0.0 .. -0.9
    assert mia.mink_score(ten, 20) == pytest.approx((0.9 + 0.8) / 2)
    assert mia.mink_score(ten, 40) == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4)


def test_minkpp_normalizes_each_token_then_takes_the_lowest():
    lp, mu, sigma = [-1.0, -2.0, -3.0], [-1.5, -1.0, -1.0], [0.5, 2.0, 1.0]
    np.testing.assert_allclose(mia.minkpp_z(lp, mu, sigma), [1.0, -0.5, -2.0])
    assert mia.minkpp_score(lp, mu, sigma, 40) == pytest.approx(2.0)         # 1 of 3
    assert mia.minkpp_score(lp, mu, sigma, 100) == pytest.approx(-(1 - 0.5 - 2) / 3)
    # a point-mass position (sigma 0) contributes 0, not inf or NaN
    assert mia.minkpp_z([-1.0], [-1.0], [0.0]).tolist() == [0.0]


def test_loss_and_zlib_scores():
    assert mia.loss_score([-1.0, -3.0]) == pytest.approx(2.0)
    text = "Alden Ashdown was born in Veloria."
    assert mia.zlib_score([-1.0, -3.0], text) == pytest.approx(
        2.0 / len(zlib.compress(text.encode("utf-8"))))


def test_vocabulary_mean_and_sigma_of_a_known_distribution():
    import torch

    from relapse.evaluate.scoring import _position_stats

    p = torch.tensor([[0.5, 0.25, 0.25]])
    picked, mu, sigma = _position_stats(p.log(), torch.tensor([1]))
    ln2 = math.log(2)
    # mu = 0.5(-ln2) + 0.5(-2 ln2); E[(log p)^2] = 0.5 ln2^2 + 0.5 (2 ln2)^2 = 2.5 ln2^2
    assert picked.item() == pytest.approx(-2 * ln2)
    assert mu.item() == pytest.approx(-1.5 * ln2)
    assert sigma.item() == pytest.approx(math.sqrt(2.5 - 1.5 ** 2) * ln2)


# --- AUC and PrivLeak ---------------------------------------------------------------------------

def test_auc_is_mann_whitney_with_ties_counted_half():
    # positives 0.9, 0.4 vs negatives 0.4, 0.1: pairs 1 + 1 + 0.5 + 1 of 4
    assert mia.roc_auc([0.9, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert mia.average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.integers(0, 2, 60)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) \
        / (pos.size * neg.size)
    assert mia.roc_auc(scores, labels) == pytest.approx(brute)
    assert math.isnan(mia.roc_auc([0.1, 0.2], [1, 1]))


def test_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores, labels = rng.normal(size=80).round(1), rng.integers(0, 2, 80)
    assert mia.roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))


def test_auc_orientation_memorised_forget_set_gives_zero():
    """Forget texts the model knows by heart have high log-probs, so low Min-K% scores; with
    forget labelled 1, the AUC is about 0 (MUSE), and about 0.5 for a model that saw neither."""
    rng = np.random.default_rng(0)
    known = [rng.uniform(-0.2, 0.0, 30) for _ in range(10)]       # memorised forget texts
    unseen = [rng.uniform(-6.0, -0.5, 30) for _ in range(10)]     # holdout texts
    labels = [1] * 10 + [0] * 10
    target = [mia.mink_score(lp, 40) for lp in known + unseen]
    assert mia.roc_auc(target, labels) == 0.0
    retrain = [mia.mink_score(lp, 40) for lp in unseen + [rng.uniform(-6, -0.5, 30)
                                                          for _ in range(10)]]
    assert 0.2 < mia.roc_auc(retrain, labels) < 0.8


def test_privleak_sign():
    assert mia.privleak(0.05, 0.5) == pytest.approx(-90.0)    # under-unlearned: forget still known
    assert mia.privleak(0.8, 0.5) == pytest.approx(60.0)      # over-unlearned
    assert mia.privleak(0.5, 0.5) == 0.0
    assert math.isnan(mia.privleak(0.3, 0.0))


def test_bootstrap_statistic_resamples_within_strata():
    labels = np.array([1] * 5 + [0] * 15)
    scores = np.random.default_rng(0).normal(size=20)
    seen = []

    def auc(idx):
        seen.append(int(labels[idx].sum()))
        return mia.roc_auc(scores[idx], labels[idx])

    value, low, high = bootstrap_statistic(auc, 20, labels, samples=200, seed=0)
    assert value == pytest.approx(mia.roc_auc(scores, labels))
    assert low <= value <= high and low < high
    assert set(seen) == {5}                                  # every resample keeps 5 members
    assert bootstrap_statistic(auc, 20, labels, 200, 0) == (value, low, high)   # seeded
    const = bootstrap_statistic(lambda idx: 0.7, 20, None, 200, 0)
    assert const == (0.7, 0.7, 0.7)


# --- the scoring engine -------------------------------------------------------------------------

def _unbatched(model, tok, text):
    """log p of each token after the first, mu and sigma (raw second-moment formula), from a
    forward pass on the text alone."""
    import torch

    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = ((p * logp ** 2).sum(-1) - mu ** 2).sqrt()
    return logp.gather(-1, ids[0, 1:, None])[:, 0].numpy(), mu.numpy(), sigma.numpy()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_engine_equals_an_unbatched_forward_per_text(tiny_lm, batch_size):
    from relapse.evaluate.scoring import score_texts

    _, model, tok = tiny_lm
    scored = score_texts(model, tok, TEXTS, batch_size=batch_size)
    assert len({len(tok(t)["input_ids"]) for t in TEXTS}) > 1        # padding really happens
    for text, s in zip(TEXTS, scored):
        lp, mu, sigma = _unbatched(model, tok, text)
        assert s.n_tokens == len(tok(text)["input_ids"]) - 1          # BOS is not scored
        np.testing.assert_allclose(s.logprobs, lp, atol=1e-5)
        np.testing.assert_allclose(s.mu, mu, atol=1e-5)
        np.testing.assert_allclose(s.sigma, sigma, atol=1e-4)


class CountingModel:
    """Wraps a model and counts forward calls and the rows (texts) they carry."""

    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0

    def parameters(self):
        return self.model.parameters()

    def __call__(self, input_ids, **kwargs):
        self.calls += 1
        self.rows += input_ids.shape[0]
        return self.model(input_ids=input_ids, **kwargs)


def test_one_forward_pass_per_scored_text(tiny_lm, tmp_path):
    from relapse.data.prepare import prepare
    from relapse.evaluate.registry import get_metric
    from relapse.evaluate.scoring import score_texts
    from relapse.evaluate.stage import EvalContext

    _, model, tok = tiny_lm
    counting = CountingModel(model)
    score_texts(counting, tok, TEXTS, batch_size=4)
    assert (counting.calls, counting.rows) == (2, len(TEXTS))

    # Through the metrics: PrivLeak's holdout texts are also utility's holdout texts, and are
    # forwarded once.
    prepare("t", {"kind": "synthetic", "people": 20, "seed": 0}, tmp_path / "data")
    counting = CountingModel(model)
    ctx = EvalContext(counting, tok, tmp_path / "data", {"scoring": {"batch_size": 3}}, 8)
    get_metric("privleak")(ctx)
    get_metric("utility")(ctx)
    texts = set()
    for split in ("privleak_forget", "privleak_holdout", "retain_eval", "holdout"):
        texts |= set(ctx.split(split).text)
    assert counting.rows == len(texts)
    assert len(set(ctx.split("holdout").text) & set(ctx.split("privleak_holdout").text)) > 0


# --- through evaluate_model ---------------------------------------------------------------------

KEYS = {"bench": "t", "method": "npo", "hp": "lr=1", "params": "none", "seed": 0,
        "quant": "none-w16", "quant_scheme": "none", "bits": 16}
CFG = {"metrics": ["privleak", "utility"], "bootstrap": {"samples": 100},
       "scoring": {"batch_size": 4}, "privleak": {"k": 40, "mink": [10, 40], "minkpp": [40]}}


def _row(frame, metric):
    rows = frame[frame.metric == metric]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def _retrain_table(path, quant, scheme, auc):
    """A retrain metrics table holding only what PrivLeak reads: its Min-K% 40 AUC."""
    pd.DataFrame([{**KEYS, "method": "retrain", "hp": "default", "quant": quant,
                   "quant_scheme": scheme, "bits": 16 if scheme == "none" else 4,
                   "metric": "mia_mink40", "split": "forget_vs_holdout", "stat": "auc",
                   "value": auc}]).to_parquet(path)
    return path


QUANTIZED = {**KEYS, "quant": "rtn-w4", "quant_scheme": "rtn", "bits": 4}


def _sklearn_auc(samples, metric="mia_mink40"):
    """The forget-vs-holdout AUC of the per-text scores, by scikit-learn (not mia.roc_auc)."""
    metrics = pytest.importorskip("sklearn.metrics")
    s = samples[samples.metric == metric]
    return metrics.roc_auc_score(s.member, s.score)


def test_privleak_against_each_reference(tiny_lm, data_dir, tmp_path):
    """reference [full, matched] on a 4-bit model: metric privleak divides by the full-precision
    retrain's AUC (0.4), metric privleak_matched by the 4-bit retrain's (0.25); each row names its
    reference, the retrain quant and the AUC it used."""
    from relapse.evaluate.stage import evaluate_model

    full = _retrain_table(tmp_path / "full.parquet", "none-w16", "none", 0.4)
    matched = _retrain_table(tmp_path / "matched.parquet", "rtn-w4", "rtn", 0.25)
    cfg = {**CFG, "privleak": {**CFG["privleak"], "reference": ["full", "matched"]}}
    m = evaluate_model(tiny_lm[0], data_dir, QUANTIZED, cfg, tmp_path / "m.parquet",
                       tmp_path / "s.parquet", retrain_metrics=matched,
                       full_retrain_metrics=full)
    auc = _sklearn_auc(pd.read_parquet(tmp_path / "s.parquet"))
    assert _row(m, "mia_mink40").value == pytest.approx(auc)
    leaks = m[m.metric.str.startswith("privleak")].set_index("metric")
    assert sorted(leaks.index) == ["privleak", "privleak_matched"]
    assert leaks.loc["privleak", "value"] == pytest.approx((auc - 0.4) / 0.4 * 100)
    assert leaks.loc["privleak_matched", "value"] == pytest.approx((auc - 0.25) / 0.25 * 100)
    assert leaks.reference.to_dict() == {"privleak": "full", "privleak_matched": "matched"}
    assert leaks.reference_quant.to_dict() == {"privleak": "none-w16",
                                               "privleak_matched": "rtn-w4"}
    assert leaks.reference_auc.to_dict() == {"privleak": 0.4, "privleak_matched": 0.25}
    assert (leaks.split == "forget").all() and (leaks.stat == "privleak").all()
    assert (leaks.n == _row(m, "mia_mink40").n).all()
    assert ((leaks.ci_low <= leaks.value) & (leaks.value <= leaks.ci_high)).all()
    assert {"mia_loss", "mia_zlib", "mia_mink10", "mia_minkpp40"} <= set(m.metric)

    # Listed the other way round, matched is the primary: metric privleak is then matched's.
    cfg["privleak"]["reference"] = ["matched", "full"]
    m = evaluate_model(tiny_lm[0], data_dir, QUANTIZED, cfg, tmp_path / "m.parquet",
                       tmp_path / "s.parquet", retrain_metrics=matched,
                       full_retrain_metrics=full)
    leaks = m[m.metric.str.startswith("privleak")].set_index("metric")
    assert leaks.reference.to_dict() == {"privleak": "matched", "privleak_full": "full"}
    assert leaks.loc["privleak", "value"] == pytest.approx((auc - 0.25) / 0.25 * 100)

    # each AUC row is the AUC of the per-text scores in samples.parquet
    samples = pd.read_parquet(tmp_path / "s.parquet")
    for metric in ("mia_loss", "mia_zlib", "mia_mink10", "mia_mink40", "mia_minkpp40"):
        assert len(samples[samples.metric == metric]) == _row(m, metric).n
        assert _row(m, metric).value == pytest.approx(_sklearn_auc(samples, metric))


def test_the_default_reference_is_the_full_precision_retrain(tiny_lm, data_dir, tmp_path):
    """MUSE's definition: with no reference configured, a matched table alone gives no PrivLeak
    row, and the full-precision retrain's AUC is what metric privleak divides by."""
    from relapse.evaluate.stage import evaluate_model

    matched = _retrain_table(tmp_path / "matched.parquet", "rtn-w4", "rtn", 0.25)
    m = evaluate_model(tiny_lm[0], data_dir, QUANTIZED, CFG, tmp_path / "m.parquet",
                       tmp_path / "s.parquet", retrain_metrics=matched)
    assert "privleak" not in set(m.metric) and "mia_mink40" in set(m.metric)
    full = _retrain_table(tmp_path / "full.parquet", "none-w16", "none", 0.4)
    m = evaluate_model(tiny_lm[0], data_dir, QUANTIZED, CFG, tmp_path / "m.parquet",
                       tmp_path / "s.parquet", full_retrain_metrics=full)
    leak = _row(m, "privleak")
    assert (leak.stat, leak.reference) == ("privleak", "full")
    auc = _sklearn_auc(pd.read_parquet(tmp_path / "s.parquet"))
    assert leak.value == pytest.approx((auc - 0.4) / 0.4 * 100)


def test_retrain_privleak_is_zero_only_against_itself(tiny_lm, data_dir, tmp_path):
    """The retrain model is its own matched reference (PrivLeak 0 at every quant) and its own
    full reference only at full precision: at 4 bits it is compared with the full-precision
    retrain, and its PrivLeak is (AUC_4bit - AUC_full) / AUC_full, not 0."""
    from relapse.evaluate.stage import evaluate_model

    cfg = {**CFG, "privleak": {**CFG["privleak"], "reference": ["full", "matched"]}}
    retrain_fp = {**KEYS, "method": "retrain", "hp": "default"}
    m = evaluate_model(tiny_lm[0], data_dir, retrain_fp, cfg, tmp_path / "m.parquet",
                       tmp_path / "s.parquet")
    leaks = m[m.metric.str.startswith("privleak")].set_index("metric")
    assert leaks.value.to_dict() == {"privleak": 0.0, "privleak_matched": 0.0}
    assert (leaks.reference_quant == "none-w16").all()

    full = _retrain_table(tmp_path / "full.parquet", "none-w16", "none", 0.4)
    retrain_q = {**QUANTIZED, "method": "retrain", "hp": "default"}
    m = evaluate_model(tiny_lm[0], data_dir, retrain_q, cfg, tmp_path / "m.parquet",
                       tmp_path / "s.parquet", full_retrain_metrics=full)
    auc = _sklearn_auc(pd.read_parquet(tmp_path / "s.parquet"))
    leaks = m[m.metric.str.startswith("privleak")].set_index("metric")
    assert leaks.loc["privleak", "value"] == pytest.approx((auc - 0.4) / 0.4 * 100)
    assert leaks.loc["privleak", "value"] != 0.0
    assert leaks.loc["privleak_matched", "value"] == 0.0
    assert leaks.loc["privleak_matched", "reference_auc"] == pytest.approx(auc)


def test_retrain_metrics_of_another_cell_are_refused(tiny_lm, data_dir, tmp_path):
    from relapse.evaluate.stage import evaluate_model

    other_quant = _retrain_table(tmp_path / "r4.parquet", "rtn-w4", "rtn", 0.4)
    with pytest.raises(ValueError, match="same quant"):
        evaluate_model(tiny_lm[0], data_dir, KEYS, CFG, tmp_path / "m.parquet",
                       tmp_path / "s.parquet", retrain_metrics=other_quant)
    # the full reference must be the full-precision retrain, whatever this model's quant
    with pytest.raises(ValueError, match="full-precision retrain"):
        evaluate_model(tiny_lm[0], data_dir, QUANTIZED, CFG, tmp_path / "m.parquet",
                       tmp_path / "s.parquet", full_retrain_metrics=other_quant)
    other_bench = tmp_path / "b.parquet"
    pd.read_parquet(_retrain_table(other_bench, "none-w16", "none", 0.4)).assign(
        bench="other").to_parquet(other_bench)
    with pytest.raises(ValueError, match="same bench"):
        evaluate_model(tiny_lm[0], data_dir, QUANTIZED, CFG, tmp_path / "m.parquet",
                       tmp_path / "s.parquet", full_retrain_metrics=other_bench)


def test_reference_names_and_the_full_precision_cell():
    from relapse.evaluate.metrics.privleak import (full_precision_quant, privleak_metric,
                                                   reference_names)

    assert reference_names({}) == ["full"]
    assert reference_names({"reference": "matched"}) == ["matched"]
    assert reference_names({"reference": ["matched", "full"]}) == ["matched", "full"]
    with pytest.raises(ValueError, match="evaluation.privleak.reference: 'retrain'"):
        reference_names({"reference": "retrain"})
    assert [privleak_metric(n, ["matched", "full"]) for n in ("matched", "full")] == \
        ["privleak", "privleak_full"]
    quants = {"rtn-w4": {"scheme": "rtn"}, "fp-w16": {"scheme": "none"}}
    assert full_precision_quant(quants) == "fp-w16"
    assert full_precision_quant({"rtn-w4": {"scheme": "rtn"}}) is None


def test_perplexity_is_exp_of_the_token_weighted_mean_nll(tiny_lm, data_dir, tmp_path):
    from relapse.data.prepare import load_split
    from relapse.evaluate.stage import evaluate_model

    folder, model, tok = tiny_lm
    m = evaluate_model(folder, data_dir, KEYS, {**CFG, "metrics": ["utility"]},
                       tmp_path / "m.parquet", tmp_path / "s.parquet")
    for split in ("retain_eval", "holdout"):
        nll, count = 0.0, 0
        for text in load_split(data_dir, split).text:
            lp, _, _ = _unbatched(model, tok, text)
            nll, count = nll - lp.sum(), count + lp.size
        row = m[(m.metric == "ppl") & (m.split == split)].iloc[0]
        assert row.stat == "perplexity"
        assert row.value == pytest.approx(math.exp(nll / count), rel=1e-5)
        assert row.ci_low <= row.value <= row.ci_high and row.ci_low < row.ci_high


def test_summary_table_shows_privleak_and_perplexity_when_computed():
    from relapse.report.tables import summary_table

    rows = []
    for method, leak, ppl in (("target", -95.0, 1.2), ("retrain", 0.0, 1.5)):
        base = {"bench": "b", "method": method, "hp": "default", "quant": "none-w16"}
        for metric, split, stat, value in (("knowmem", "forget", "rougeL_f1", 50.0),
                                           ("privleak", "forget", "privleak", leak),
                                           # a second reference never blends into PrivLeak
                                           ("privleak_matched", "forget", "privleak", leak + 50),
                                           ("ppl", "retain_eval", "perplexity", ppl),
                                           ("mia_loss", "forget_vs_holdout", "auc", 0.1)):
            rows.append({**base, "metric": metric, "split": split, "stat": stat, "value": value})
    table = summary_table(pd.DataFrame(rows)).set_index("method")
    assert table.loc["target", "none-w16 PrivLeak"] == -95.0
    assert table.loc["retrain", "none-w16 PPL_r"] == 1.5
    assert table.loc["target", "none-w16 KnowMem_f"] == 50.0
    older = summary_table(pd.DataFrame(rows[:1]))
    assert not any("PrivLeak" in c for c in older.columns)


def test_engine_upcasts_bf16_logits(tiny_lm):
    """A bf16 model (what CUDA runs) scores in float32 after the logits: finite, close to fp32."""
    import copy

    import torch

    from relapse.evaluate.scoring import score_texts

    _, model, tok = tiny_lm
    half = copy.deepcopy(model).to(torch.bfloat16)
    full = score_texts(model, tok, TEXTS[:3], batch_size=2)
    low = score_texts(half, tok, TEXTS[:3], batch_size=2)
    for a, b in zip(full, low):
        assert b.logprobs.dtype == np.float64 and np.isfinite(b.sigma).all()
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=0.1)


def test_main_caption_names_the_privleak_reference():
    from relapse.report.captions import main_caption

    def caption(reference):
        return main_caption({"evaluation": {"privleak": {"reference": reference}}})

    assert "PrivLeak (Min-K% AUC relative to the full-precision retrain model" in caption("full")
    assert "relative to the retrain model at the same quant" in caption("matched")
    both = caption(["full", "matched"])
    assert "full-precision retrain" in both and "metric privleak_matched" in both
    assert "relative to the full-precision retrain" in main_caption({})   # MUSE's by default
