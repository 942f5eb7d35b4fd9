import numpy as np
import pytest
from scipy import stats as sps

from relapse.stats import (bootstrap_ci, bootstrap_seeds_items, bootstrap_statistic,
                                    t_interval)


def _percentile_ci(stats, level=0.95):
    return tuple(np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100]))


def _by_hand_mean_ci(x, samples, seed, level=0.95):
    """The textbook percentile bootstrap of a mean, one resample at a time; numpy's generator
    drawing a (samples, n) block of indices, as the implementation documents."""
    draws = np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))
    return _percentile_ci([sum(x[i] for i in row) / len(row) for row in draws], level)


def test_ci_is_the_percentile_bootstrap_and_is_seeded():
    x = np.random.default_rng(0).random(50)
    mean, low, high = bootstrap_ci(x, 500, seed=1)
    assert mean == pytest.approx(x.mean())
    assert (low, high) == pytest.approx(_by_hand_mean_ci(x, 500, 1), rel=1e-12)
    assert bootstrap_ci(x, 500, seed=1) == (mean, low, high)


def test_a_skewed_mean_keeps_an_interval_that_excludes_it():
    """Ten log-normal items (sigma 2): the bootstrap means are right-skewed, so their central
    10% lies below the sample mean. The old code raised `high` to the mean."""
    x = np.exp(2 * np.random.default_rng(5).normal(size=10))
    mean, low, high = bootstrap_ci(x, 2000, seed=0, level=0.1)
    assert (low, high) == pytest.approx(_by_hand_mean_ci(x, 2000, 0, level=0.1), rel=1e-12)
    assert high < mean


def test_a_statistic_interval_is_not_widened_to_its_value():
    """The share of distinct items: 1 on the sample itself, about 1 - 1/e = 0.63 in every
    resample, so the percentile interval lies far below the value (old code: high = 1)."""
    n = 30

    def distinct(idx):
        return len(np.unique(idx)) / n

    value, low, high = bootstrap_statistic(distinct, n, samples=500, seed=0)
    rng = np.random.default_rng(0)
    by_hand = [len(set(rng.integers(0, n, n).tolist())) / n for _ in range(500)]
    assert value == 1.0
    assert (low, high) == pytest.approx(_percentile_ci(by_hand), rel=1e-12)
    assert high < 0.8


def test_degenerate_sample_gives_zero_width():
    mean, low, high = bootstrap_ci([0.7] * 20, 200)
    assert low == mean == high == pytest.approx(0.7)


def test_one_seed_is_the_item_bootstrap():
    x = np.random.default_rng(2).random(40)
    assert bootstrap_seeds_items(x[None, :], samples=300, seed=4) == pytest.approx(
        bootstrap_ci(x, 300, seed=4), rel=1e-12)


def test_seeds_and_items_bootstrap_of_a_paired_ratio_by_hand():
    """Resample b: one item draw shared by every seed of both models, then the seeds of the
    scores, then those of the reference; ratio of the two grand means. Computed here with plain
    loops over the drawn indices."""
    rng = np.random.default_rng(8)
    scores = rng.random((3, 12)) + np.array([[0.0], [0.2], [0.5]])
    reference = rng.random((2, 12)) + 1.0
    value, low, high = bootstrap_seeds_items(scores, reference, samples=400, seed=9)
    assert value == pytest.approx(scores.mean() / reference.mean())

    draw = np.random.default_rng(9)
    items = draw.integers(0, 12, size=(400, 12))
    seeds = draw.integers(0, 3, size=(400, 3))
    ref_seeds = draw.integers(0, 2, size=(400, 2))
    ratios = []
    for b in range(400):
        num = [scores[s, i] for s in seeds[b] for i in items[b]]
        den = [reference[s, i] for s in ref_seeds[b] for i in items[b]]
        ratios.append((sum(num) / len(num)) / (sum(den) / len(den)))
    assert (low, high) == pytest.approx(_percentile_ci(ratios), rel=1e-9)
    # pairing: a model scoring exactly half the reference on every item has a zero-width ratio
    # interval, however much the items differ
    half = bootstrap_seeds_items(reference[:1] / 2, reference[:1], samples=200, seed=0)
    assert half == pytest.approx((0.5, 0.5, 0.5))


def test_the_seed_mean_interval_carries_the_between_seed_variance():
    """Five seeds far apart, items nearly constant: the interval is the seed bootstrap's, about
    ±1.96 · sd0(seed means) / √5 (sd with ddof 0, the bootstrap's plug-in), while the average of
    the per-seed item intervals (the old report) is almost zero-width."""
    rng = np.random.default_rng(0)
    offsets = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    scores = offsets[:, None] + rng.normal(0, 0.01, size=(5, 200))
    value, low, high = bootstrap_seeds_items(scores, samples=4000, seed=1)
    se = scores.mean(axis=1).std(ddof=0) / np.sqrt(5)
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.15)
    old = np.mean([bootstrap_ci(row, 1000, 0)[2] - bootstrap_ci(row, 1000, 0)[1]
                   for row in scores])
    assert old < 0.01 < 10 < high - low


def test_t_interval_over_seeds():
    x = np.array([31.0, 35.0, 44.0])
    mean, low, high = t_interval(x)
    want = sps.t.interval(0.95, 2, loc=x.mean(), scale=sps.sem(x))
    assert mean == pytest.approx(x.mean()) and (low, high) == pytest.approx(want)
    assert t_interval([5.0]) == (5.0, 5.0, 5.0)


def test_mean_of_ratios_interval_matches_a_plain_resampling_loop():
    """The mean over methods of retained (mean(method) / mean(target)), against a loop written
    out here: per resample one draw of items shared by every method and the target, and a seed
    draw per matrix. Same distribution, other random numbers: the bounds agree to Monte Carlo
    error."""
    from relapse.stats import bootstrap_mean_ratio, bootstrap_seeds_items

    rng = np.random.default_rng(3)
    n_items = 40
    target = rng.uniform(60, 100, size=(1, n_items))
    members = [rng.uniform(0, 80, size=(3, n_items)), rng.uniform(10, 60, size=(2, n_items))]
    value, low, high = bootstrap_mean_ratio(members, target, samples=4000, seed=0)
    assert value == pytest.approx(np.mean([m.mean() for m in members]) / target.mean())

    loop = np.random.default_rng(11)
    stats = []
    for _ in range(4000):
        items = loop.integers(0, n_items, n_items)
        ref = target[loop.integers(0, 1, 1)][:, items].mean()
        ratios = [m[loop.integers(0, len(m), len(m))][:, items].mean() / ref for m in members]
        stats.append(np.mean(ratios))
    want_low, want_high = np.percentile(stats, [2.5, 97.5])
    assert low == pytest.approx(want_low, abs=0.02) and high == pytest.approx(want_high, abs=0.02)
    assert low < value < high
    # one member: the paired ratio interval of that member
    assert bootstrap_mean_ratio(members[:1], target, samples=500, seed=4) == pytest.approx(
        bootstrap_seeds_items(members[0], target, samples=500, seed=4))
