"""ROUGE-L through the `rouge-score` package. Each benchmark's metrics keep their own settings:
MUSE's (KnowMem, VerbMem) do not stem (`rouge_l`, muse_bench's eval); TOFU's stem
(`rouge_l_stemmed`: `use_stemmer=True`, as TOFU's and open-unlearning's evaluation)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=2)
def _scorer(stem: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)


def rouge_l(reference: str, prediction: str) -> tuple[float, float]:
    """(F1, recall) of ROUGE-L between a ground truth and a generation, in [0, 1]; no stemming
    (MUSE)."""
    score = _scorer(False).score(reference, prediction)["rougeL"]
    return score.fmeasure, score.recall


def rouge_l_stemmed(reference: str, prediction: str) -> tuple[float, float]:
    """(F1, recall) of ROUGE-L with Porter stemming (TOFU: "runs" matches "running")."""
    score = _scorer(True).score(reference, prediction)["rougeL"]
    return score.fmeasure, score.recall
