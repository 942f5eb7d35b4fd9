"""Utility: perplexity on texts the unlearning should not touch (DESIGN §8), from the same
teacher-forced scoring engine as PrivLeak.

Rows `ppl` / {retain_eval, holdout} / perplexity: for the texts of the split, with n_i scored
tokens (BOS excluded) and NLL_i = -Σ_t log p(x_t | x_<t) for text i,

    perplexity = exp( Σ_i NLL_i / Σ_i n_i )

the exponential of the token-weighted mean NLL (so a long text counts by its tokens, as in a
corpus perplexity). The CI resamples texts. retain_eval holds people the target learned and the
unlearning never saw; holdout holds people no model saw. (KnowMem on retain, the other utility
number, comes from the knowmem metric.) Per text: NLL_i, n_i, NLL_i / n_i and its exponential.

Neither split is a MUSE metric (MUSE's utility is KnowMem on retain), and on MUSE-News they are
most of an evaluation's cost (4,821 articles, 3.9M tokens). `utility.max_items` caps each split
to a uniform sample without replacement drawn with a fixed seed, so that every cell of a run
scores the same texts and cells compare pairwise; the CI (texts resampled) is the sample's, and
the rows record the sample size (`n`) and the split's size (`split_items`).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from relapse.evaluate.registry import MetricResult, register_metric

SPLITS = ("retain_eval", "holdout")
SAMPLE_SEED = 0


def sample_texts(frame, max_items: int | None):
    """`max_items` rows of `frame` drawn uniformly without replacement (seed SAMPLE_SEED), in
    their split order; all of them when there are no more than that, or max_items is None."""
    if max_items is not None and max_items < 1:
        # 0 would read as "every item" to a truthiness test: a silently full evaluation
        raise ValueError(f"utility.max_items is {max_items}; it must be at least 1, or null")
    if max_items is None or len(frame) <= max_items:
        return frame
    keep = np.random.default_rng(SAMPLE_SEED).choice(len(frame), size=max_items, replace=False)
    return frame.iloc[np.sort(keep)]


def perplexity(nll_sums, n_tokens, idx=None) -> float:
    """exp(Σ NLL_i / Σ n_i) over the texts `idx` (all when None)."""
    nll, n = np.asarray(nll_sums, dtype=float), np.asarray(n_tokens, dtype=float)
    if idx is not None:
        nll, n = nll[idx], n[idx]
    return float(np.exp(nll.sum() / n.sum())) if n.sum() > 0 else float("nan")


@register_metric("utility")
def utility(ctx) -> list[MetricResult]:
    cfg = ctx.cfg.get("utility", {})
    results = []
    for split in SPLITS:
        full = ctx.split(split)
        data = sample_texts(full, cfg.get("max_items"))
        scored = ctx.scores(list(data.text))
        nll = np.array([s.nll_sum for s in scored])
        n = np.array([s.n_tokens for s in scored])
        mean_nll = nll / np.maximum(n, 1)
        samples = [{"item": int(i), "pid": int(pid), "nll_sum": float(a), "n_tokens": int(b),
                    "nll": float(c), "perplexity": float(np.exp(c))}
                   for i, pid, a, b, c in zip(data.index, data.pid, nll, n, mean_nll)]
        results.append(MetricResult("ppl", split, "perplexity", mean_nll.tolist(), 1.0, samples,
                                    statistic=partial(perplexity, nll, n),
                                    columns={"split_items": len(full)}))
    return results
