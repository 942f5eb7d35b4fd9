"""Seeded percentile-bootstrap confidence intervals: of a mean, of any statistic of items, and
of a seed mean (or a ratio of two) over seeds and items; and the t-interval over seeds.

A percentile interval is the bootstrap distribution's quantiles as they are: it is never widened
to contain the point estimate, since for a skewed statistic (a ratio, an AUC near 1) the honest
interval can exclude it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

_NAN3 = (float("nan"), float("nan"), float("nan"))


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(scores, samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the percentile bootstrap; a constant sample gives a zero-width CI."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return _NAN3
    mean = float(x.mean())
    if samples <= 0 or x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    return (mean, *_percentiles(means, level))


def bootstrap_statistic(statistic: Callable[[np.ndarray], float], n: int,
                        strata: Sequence[int] | None = None, samples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
    """(value, low, high) for a statistic of n items: value = statistic(arange(n)); the CI is
    the percentile bootstrap of statistic(resampled indices), drawing with replacement within
    each stratum when `strata` is given (so that, e.g., an AUC always sees both classes). A
    single item or `samples` = 0 gives a zero-width interval."""
    if n == 0:
        return _NAN3
    value = float(statistic(np.arange(n)))
    if samples <= 0 or n == 1 or np.isnan(value):
        return value, value, value
    labels = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(np.concatenate([g[rng.integers(0, g.size, g.size)]
                                                for g in groups]))
                      for _ in range(samples)], dtype=float)
    return (value, *_percentiles(stats, level))


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """Row b: how often each of 0..n-1 was drawn in draws[b] (one bincount for all rows)."""
    rows = np.arange(len(draws))[:, None] * n
    return np.bincount((draws + rows).ravel(), minlength=len(draws) * n).reshape(len(draws), n)


def _resampled_means(scores: np.ndarray, item_counts: np.ndarray, rng) -> np.ndarray:
    """Per resample b: the mean of scores over resampled seeds and the items drawn
    `item_counts[b]` times. Counts instead of gathered copies keep memory at (samples x items)."""
    n_seeds, n_items = scores.shape
    if n_seeds == 1:        # nothing to resample, and no draw: one seed is the item bootstrap
        seed_counts = np.ones((len(item_counts), 1))
    else:
        seed_counts = _counts(rng.integers(0, n_seeds, size=(len(item_counts), n_seeds)),
                              n_seeds)
    return ((seed_counts @ scores) * item_counts).sum(axis=1) / (n_seeds * n_items)


def bootstrap_seeds_items(scores, reference=None, samples: int = 1000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, float]:
    """(value, low, high) of the mean of a seeds x items score matrix, or of its ratio to a
    `reference` matrix (its own seeds, the same items in the same column order).

    Each resample draws the items once, with replacement, and uses that draw for every seed and
    for the reference (the items are shared: the same questions were put to every model, so a
    ratio is paired); then, for the scores and the reference separately, it draws seeds with
    replacement. The seed draw carries the between-seed variance into the interval, which an
    average of per-seed intervals leaves out. With one seed and no reference this is
    `bootstrap_ci` of that seed's scores (the same draws; equal up to rounding). Value:
    mean(scores), or mean(scores) / mean(reference).
    A resample whose reference mean is 0 is left out of the percentiles."""
    x = np.atleast_2d(np.asarray(scores, dtype=float))
    ref = None if reference is None else np.atleast_2d(np.asarray(reference, dtype=float))
    if x.size == 0 or (ref is not None and (ref.size == 0 or ref.shape[1] != x.shape[1])):
        return _NAN3
    n_seeds, n_items = x.shape
    value = float(x.mean())
    if ref is not None:
        den = float(ref.mean())
        value = value / den if den != 0 else float("nan")
    if samples <= 0 or np.isnan(value) or (n_items == 1 and n_seeds == 1
                                           and (ref is None or len(ref) == 1)):
        return value, value, value
    rng = np.random.default_rng(seed)
    items = _counts(rng.integers(0, n_items, size=(samples, n_items)), n_items)
    stats = _resampled_means(x, items, rng)
    if ref is not None:
        den = _resampled_means(ref, items, rng)
        with np.errstate(divide="ignore", invalid="ignore"):
            stats = np.where(den != 0, stats / den, np.nan)
    return (value, *_percentiles(stats, level))


def paired_item_means(scores, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Resampled means of k models' scores on the same n items (a k x n matrix, column j: item j
    for every model): each resample draws the n items once, with replacement, and uses that draw
    for all k models, so any statistic of the k means (a difference, a ratio) is paired.
    Returns a (samples x k) array; `samples` = 0 gives an empty (0 x k) one."""
    x = np.atleast_2d(np.asarray(scores, dtype=float))
    k, n = x.shape
    if samples <= 0 or n == 0:
        return np.empty((0, k))
    rng = np.random.default_rng(seed)
    counts = _counts(rng.integers(0, n, size=(samples, n)), n)
    return counts @ x.T / n


def bootstrap_mean_ratio(members: Sequence, reference, samples: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """(value, low, high) of the mean over `members` (seeds x items matrices, one per method) of
    mean(member) / mean(reference): the "mean over methods" of knowledge retained.

    As bootstrap_seeds_items, each resample draws the items once and uses them for every member
    and the reference (all were asked the same questions); each member's seeds and the
    reference's are drawn on their own. Every member ratio of a resample shares the one
    reference draw, as the point estimate shares the one target. With one member this is
    bootstrap_seeds_items(member, reference) (the same draws, in the same order)."""
    xs = [np.atleast_2d(np.asarray(m, dtype=float)) for m in members]
    ref = np.atleast_2d(np.asarray(reference, dtype=float))
    if not xs or ref.size == 0 or any(x.size == 0 or x.shape[1] != ref.shape[1] for x in xs):
        return _NAN3
    den = float(ref.mean())
    value = float(np.mean([x.mean() for x in xs])) / den if den != 0 else float("nan")
    if samples <= 0 or np.isnan(value):
        return value, value, value
    n_items = ref.shape[1]
    rng = np.random.default_rng(seed)
    items = _counts(rng.integers(0, n_items, size=(samples, n_items)), n_items)
    nums = [_resampled_means(x, items, rng) for x in xs]
    dens = _resampled_means(ref, items, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = np.where(dens != 0, np.mean(nums, axis=0) / dens, np.nan)
    return (value, *_percentiles(stats, level))


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of Student's t-interval over independent replicates (seeds): mean ±
    t(level, n-1) · sd / √n. One value gives a zero-width interval: use an item bootstrap then."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return _NAN3
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half


def resampled_cell_means(matrices: Sequence, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Resampled means of k cells scored on the same items (each a seeds x items matrix, the
    same items in the same column order): each resample draws the items once, with
    replacement, and uses that draw for every cell (the same questions were put to every
    model, so any statistic of the k means is paired); each cell's seeds are drawn on their
    own, as in bootstrap_seeds_items. Returns a (samples x k) array; `samples` = 0, no cell or
    no item gives an empty (0 x k) one."""
    xs = [np.atleast_2d(np.asarray(m, dtype=float)) for m in matrices]
    if samples <= 0 or not xs or xs[0].shape[1] == 0:
        return np.empty((0, len(xs)))
    n_items = xs[0].shape[1]
    if any(x.shape[1] != n_items for x in xs):
        raise ValueError("resampled_cell_means: every cell needs the same items")
    rng = np.random.default_rng(seed)
    items = _counts(rng.integers(0, n_items, size=(samples, n_items)), n_items)
    return np.stack([_resampled_means(x, items, rng) for x in xs], axis=1)
