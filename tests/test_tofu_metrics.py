"""TOFU's metrics (relapse.evaluate.metrics.tofu) against hand numbers, and on a tiny model."""

import math

import numpy as np
import pytest

from relapse.evaluate.metrics import tofu


def test_truth_ratio_on_hand_numbers():
    # per-token P(base) = 1/2, P(perturbed) = 1/4 and 1/8: R = 0.5 / sqrt(1/4 * 1/8) = 2 * sqrt 2
    r = tofu.truth_ratio_stat([math.log(2)], [[math.log(4), math.log(8)]])
    assert r[0] == pytest.approx(2 * math.sqrt(2))
    assert tofu.truth_ratio_scores(r, "retain")[0] == pytest.approx(1 - 1 / (2 * math.sqrt(2)))
    assert tofu.truth_ratio_scores(r, "forget")[0] == pytest.approx(1 / (2 * math.sqrt(2)))
    # a model preferring the wrong answers scores 0 on utility splits, not negative
    assert tofu.truth_ratio_scores([0.5], "world_facts")[0] == 0.0
    assert tofu.truth_ratio_scores([0.5], "forget")[0] == 0.5


def test_probability_normalized_only_on_utility_sets():
    answer, perturbed = [math.log(2)], [[math.log(4), math.log(4)]]  # 1/2 vs 1/4 + 1/4
    assert tofu.probability_scores(answer, perturbed, "forget")[0] == pytest.approx(0.5)
    assert tofu.probability_scores(answer, perturbed, "real_authors")[0] == pytest.approx(0.5)
    assert tofu.probability_scores([math.log(4)], perturbed, "world_facts")[0] == \
        pytest.approx(0.25 / 0.75)


def test_forget_quality_hand_numbers():
    same = [0.2, 0.5, 0.9, 1.3]
    assert tofu.forget_quality(same, same) == (1.0, 0.0)
    # fully separated samples of 5 and 5: D = 1, exact two-sided p = 2 / C(10, 5)
    p, d = tofu.forget_quality([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert d == 1.0 and p == pytest.approx(2 / math.comb(10, 5))
    # D by hand: ECDFs of {1,2,3} and {2,3,4} differ by at most 1/3
    assert tofu.forget_quality([1, 2, 3], [2, 3, 4])[1] == pytest.approx(1 / 3)


def test_model_utility_is_the_harmonic_mean():
    assert tofu.model_utility([0.5, 1.0, 0.25]) == pytest.approx(3 / 7)
    assert tofu.model_utility([0.5, 0.0, 0.9]) == 0.0


def test_answer_losses_match_the_models_own_loss(tiny_lm):
    import torch

    from relapse.models.batching import prompt_ids

    _, model, tok = tiny_lm
    prompts = ["Question: Where was Ada born?\nAnswer: ", "Question: Who?\nAnswer: "]
    answers = ["Paris", "A very long answer with many more words in it"]
    batched = tofu.answer_losses(model, tok, prompts, answers, batch_size=2)
    for (p, a), got in zip(zip(prompts, answers), batched):
        # TOFU's labels: the answer's tokens and EOS
        ids = torch.tensor([tok(p + a)["input_ids"] + [tok.eos_token_id]])
        labels = ids.clone()
        labels[0, :len(prompt_ids(tok, p))] = -100
        with torch.no_grad():
            want = model(input_ids=ids, labels=labels).loss.item()  # HF's mean over answer tokens
        assert got == pytest.approx(want, abs=1e-5)


def test_tofu_metric_on_a_prepared_snapshot(tmp_path, tiny_lm):
    from hub_snapshots import tofu_snapshot
    from relapse.data.prepare import prepare
    from relapse.evaluate.stage import EvalContext

    source = tofu_snapshot(tmp_path / "TOFU")
    prepare("tofu", {"kind": "tofu", "forget": "forget10", "source": str(source)}, tmp_path / "d")
    _, model, tok = tiny_lm
    cfg = {"tofu": {"max_items": 6, "max_new_tokens": 4}, "scoring": {"batch_size": 8}}
    ctx = EvalContext(model, tok, tmp_path / "d", cfg, 8, self_references=frozenset({"full"}))
    results = {(r.metric, r.split): r for r in tofu.tofu(ctx)}
    for split in tofu.SPLITS:
        for metric in ("tofu_prob", "tofu_rouge", "tofu_truth_ratio"):
            assert len(results[(metric, split)].scores) == 6
    # the retain model against itself: forget quality 1
    fq = results[("tofu_forget_quality", "forget")]
    assert fq.scores == [1.0] and fq.columns["fq_reference"] == "full"
    nine = [np.mean(results[(m, s)].scores) for s in tofu.UTILITY_SPLITS
            for m in ("tofu_prob", "tofu_rouge", "tofu_truth_ratio")]
    assert results[("tofu_model_utility", "utility")].scores[0] == \
        pytest.approx(tofu.model_utility(nine))
    assert "tofu" in __import__("relapse.evaluate.registry", fromlist=["x"]).metric_names()


def test_forget_quality_reads_the_retain_models_samples(tmp_path):
    import pandas as pd

    from relapse.evaluate.stage import EvalContext

    retain_ratios = [0.5, 0.8, 1.1, 1.4, 2.0]
    folder = tmp_path / "retrain" / "none-w16"
    folder.mkdir(parents=True)
    pd.DataFrame({"metric": ["tofu_truth_ratio"] * 5 + ["knowmem"], "split": ["forget"] * 6,
                  "item": [4, 3, 2, 1, 0, 0], "ratio": retain_ratios[::-1] + [9.0]}) \
        .to_parquet(folder / "samples.parquet")
    metrics = pd.DataFrame({"metric": ["tofu_truth_ratio"]})
    metrics.attrs["path"] = str(folder / "metrics.parquet")
    ctx = EvalContext(None, None, tmp_path, {}, 1, references={"full": metrics})
    ref, name = tofu._reference_ratios(ctx)
    assert name == "full" and list(ref) == retain_ratios
    # a cell whose R all sit above the retain model's: D = 1, p = 2 / C(10, 5)
    assert tofu.forget_quality([3, 4, 5, 6, 7], ref)[0] == pytest.approx(2 / 252)


def test_metric_tofu_needs_a_tofu_corpus(default_config):
    from relapse.config import ConfigError, validate

    cfg = {**default_config, "evaluation": {**default_config["evaluation"],
                                            "metrics": ["knowmem", "tofu"]}}
    with pytest.raises(ConfigError, match="'tofu' needs corpus kind tofu, but "
                                          "benchmarks.synthbio.corpus.kind is 'synthetic'"):
        validate(cfg)
