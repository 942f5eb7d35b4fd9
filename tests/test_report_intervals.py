"""The report's intervals (report/intervals.py via measures.wide): of a seed mean, over seeds
and items; of knowledge retained, the paired bootstrap of the ratio; each checked against a
by-hand computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from relapse.stats import bootstrap_ci
from relapse.report.measures import wide

BOOT = {"samples": 400, "seed": 3}
ITEMS = 25
KEY = {"bench": "b", "hp": "default", "params": "none"}


def crafted(seeds=(0, 1, 2)):
    """knowmem/forget item scores for the target (one seed) and npo_gdr (three seeds far apart)
    at two quants, privleak rows without items; the metrics rows are what evaluate writes for
    them (mean x100, each seed's own item bootstrap)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 1.0, ITEMS)            # item difficulty, shared by every model
    metrics, samples = [], []
    cells = [("target", "default", 0, 1.0)] + [("npo_gdr", "lr=0.001", s, 0.2 + 0.15 * s)
                                                for s in seeds]
    for quant in ("none-w16", "rtn-w4"):
        for method, hp, seed, level in cells:
            keys = {**KEY, "method": method, "hp": hp, "seed": seed, "quant": quant}
            scores = np.clip(base * level + rng.normal(0, 0.05, ITEMS), 0, 1)
            samples += [{**keys, "metric": "knowmem", "split": "forget", "item": 100 + i,
                         "question": "q?", "output": "a", "rougeL_f1": float(v)}
                        for i, v in enumerate(scores)]
            mean, low, high = bootstrap_ci(scores, 200, 0)
            metrics.append({**keys, "metric": "knowmem", "split": "forget", "stat": "rougeL_f1",
                            "value": 100 * mean, "ci_low": 100 * low, "ci_high": 100 * high})
            leak = float(rng.normal(-50, 10))
            metrics.append({**keys, "metric": "privleak", "split": "forget", "stat": "privleak",
                            "value": leak, "ci_low": leak - 3, "ci_high": leak + 3})
    return pd.DataFrame(metrics), pd.DataFrame(samples)


def _matrix(samples, method, quant):
    rows = samples[(samples.method == method) & (samples.quant == quant)]
    return [[100 * v for v in rows[rows.seed == s].sort_values("item").rougeL_f1]
            for s in sorted(set(rows.seed))]


def _by_hand(scores, reference=None, samples=400, seed=3):
    """Percentile bootstrap, loops over drawn indices: items once per resample (shared by all
    seeds and by the reference), then the seeds of `scores`, then those of `reference`."""
    rng = np.random.default_rng(seed)
    n_items = len(scores[0])
    items = rng.integers(0, n_items, size=(samples, n_items))
    seeds = rng.integers(0, len(scores), size=(samples, len(scores))) if len(scores) > 1 \
        else np.zeros((samples, 1), dtype=int)
    out = []
    for b in range(samples):
        num = np.mean([scores[s][i] for s in seeds[b] for i in items[b]])
        if reference is not None:
            num /= np.mean([reference[0][i] for i in items[b]])
        out.append(num)
    return tuple(np.percentile(out, [2.5, 97.5]))


def _row(frame, method, quant):
    return frame[(frame.method == method) & (frame.quant == quant)].iloc[0]


def test_seed_mean_interval_is_over_seeds_and_items():
    metrics, samples = crafted()
    frame = wide(metrics, samples=samples, bootstrap=BOOT)
    row = _row(frame, "npo_gdr", "rtn-w4")
    scores = _matrix(samples, "npo_gdr", "rtn-w4")
    assert row.KnowMem_f == pytest.approx(np.mean(scores))
    assert (row["KnowMem_f lo"], row["KnowMem_f hi"]) == pytest.approx(_by_hand(scores))
    # the old interval (the seed mean of each seed's bounds) is far narrower than the spread of
    # the three seed means; the new one holds it
    cell = metrics[(metrics.method == "npo_gdr") & (metrics.quant == "rtn-w4")
                   & (metrics.metric == "knowmem")]
    old = cell.ci_high.mean() - cell.ci_low.mean()
    new = row["KnowMem_f hi"] - row["KnowMem_f lo"]
    assert new > 2 * old
    assert row["KnowMem_f lo"] < cell.value.min() + 1 and cell.value.max() - 1 < row["KnowMem_f hi"]
    # one seed: the item bootstrap of that seed
    target = _row(frame, "target", "rtn-w4")
    assert (target["KnowMem_f lo"], target["KnowMem_f hi"]) == pytest.approx(
        _by_hand(_matrix(samples, "target", "rtn-w4")))


def test_retained_interval_is_the_paired_bootstrap_of_the_ratio():
    metrics, samples = crafted()
    frame = wide(metrics, samples=samples, bootstrap=BOOT)
    for quant in ("none-w16", "rtn-w4"):
        row = _row(frame, "npo_gdr", quant)
        scores, ref = _matrix(samples, "npo_gdr", quant), _matrix(samples, "target", quant)
        assert row["retained KnowMem_f"] == pytest.approx(np.mean(scores) / np.mean(ref))
        assert (row["retained KnowMem_f lo"], row["retained KnowMem_f hi"]) == pytest.approx(
            _by_hand(scores, ref))
    assert _row(frame, "target", "rtn-w4")[["retained KnowMem_f lo", "retained KnowMem_f hi"]
                                           ].tolist() == pytest.approx([1.0, 1.0])


def test_without_items_several_seeds_give_the_t_interval_and_one_seed_its_own_ci():
    metrics, samples = crafted()
    frame = wide(metrics, samples=samples, bootstrap=BOOT)
    seeds = metrics[(metrics.method == "npo_gdr") & (metrics.quant == "none-w16")
                    & (metrics.metric == "privleak")].value
    want = sps.t.interval(0.95, len(seeds) - 1, loc=seeds.mean(), scale=sps.sem(seeds))
    row = _row(frame, "npo_gdr", "none-w16")
    assert (row["PrivLeak lo"], row["PrivLeak hi"]) == pytest.approx(want)
    target = metrics[(metrics.method == "target") & (metrics.quant == "none-w16")
                     & (metrics.metric == "privleak")].iloc[0]
    row = _row(frame, "target", "none-w16")
    assert (row["PrivLeak lo"], row["PrivLeak hi"]) == (target.ci_low, target.ci_high)
    # no samples at all: KnowMem takes the same fallbacks and retained has no interval
    bare = wide(metrics, bootstrap=BOOT)
    assert np.isnan(_row(bare, "npo_gdr", "none-w16")["retained KnowMem_f lo"])
    knowmem = metrics[(metrics.method == "npo_gdr") & (metrics.quant == "none-w16")
                      & (metrics.metric == "knowmem")].value
    assert _row(bare, "npo_gdr", "none-w16")["KnowMem_f hi"] == pytest.approx(
        sps.t.interval(0.95, 2, loc=knowmem.mean(), scale=sps.sem(knowmem))[1])


def test_samples_of_other_seeds_than_the_metrics_are_not_used():
    """A cell whose samples lack a seed of its metrics would give an interval of another
    mean: it takes the t-interval over its seeds instead."""
    metrics, samples = crafted()
    partial = samples[~((samples.method == "npo_gdr") & (samples.seed == 2))]
    row = _row(wide(metrics, samples=partial, bootstrap=BOOT), "npo_gdr", "rtn-w4")
    seeds = metrics[(metrics.method == "npo_gdr") & (metrics.quant == "rtn-w4")
                    & (metrics.metric == "knowmem")].value
    assert row["KnowMem_f lo"] == pytest.approx(
        sps.t.interval(0.95, 2, loc=seeds.mean(), scale=sps.sem(seeds))[0])
    assert np.isnan(row["retained KnowMem_f lo"])


def test_read_samples_reads_only_the_scores_it_needs(tmp_path):
    from relapse.report.inputs import read_samples

    _, samples = crafted()
    extra = samples.head(3).assign(metric="mia_loss", score=1.0)
    path = tmp_path / "samples.parquet"
    pd.concat([samples, extra], ignore_index=True).to_parquet(path)
    empty = tmp_path / "empty.parquet"
    pd.DataFrame().to_parquet(empty)
    got = read_samples([path, empty, tmp_path / "missing.parquet"], {"knowmem"}, {"forget"},
                       {"rougeL_f1", "exact_match"})
    assert sorted(got.columns) == sorted(["bench", "method", "hp", "seed", "quant", "metric",
                                          "split", "item", "rougeL_f1"])
    assert len(got) == len(samples) and set(got.metric) == {"knowmem"}
    assert read_samples([empty], {"knowmem"}, {"forget"}, {"rougeL_f1"}) is None


def test_the_report_draws_the_ratio_interval_as_error_bars(tmp_path):
    """The retained table's CSV and figure's error bars hold the paired intervals."""
    from relapse.report import figures
    from relapse.report.build import paper_tables

    metrics, samples = crafted()
    retain = metrics[metrics.metric == "knowmem"].assign(split="retain", value=90.0)
    metrics = pd.concat([metrics, retain], ignore_index=True)
    cfg = {"unlearning": {"loss_variant": "paper"},
           "quantization": {"schemes": [{"scheme": "none", "bits": [16]},
                                        {"scheme": "rtn", "bits": [4]}]},
           "evaluation": {"bootstrap": BOOT},
           "report": {"retained_metrics": ["knowmem_forget"]}}
    tables, frame, chosen, quants = paper_tables(metrics, cfg, samples)
    csv = tables["retained"].flat().set_index("method")
    for quant in quants:
        row = _row(frame, "npo_gdr", quant)
        assert csv.loc["npo_gdr", f"{quant} KnowMem_f lo"] == pytest.approx(
            100 * row["retained KnowMem_f lo"])
        # one constrained method: the mean row's bootstrap is that method's, draw for draw
        for end in ("lo", "hi"):
            assert csv.loc["mean (GDR/KLR)", f"{quant} KnowMem_f {end}"] == pytest.approx(
                csv.loc["npo_gdr", f"{quant} KnowMem_f {end}"])
    fig = figures.retained_bars(frame, chosen, quants)
    from matplotlib.container import BarContainer

    bars = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    assert len(bars) == len(quants)
    for quant, container in zip(quants, bars):
        row = _row(frame, "npo_gdr", quant)
        segments = container.errorbar.lines[2][0].get_segments()
        ys = sorted(y for seg in segments for _, y in seg if abs(seg[0][0] - seg[1][0]) < 1e-9)
        assert ys == pytest.approx([100 * row["retained KnowMem_f lo"],
                                    100 * row["retained KnowMem_f hi"]])


def test_relapse_report_reads_the_samples(tmp_path):
    import json

    from relapse.cli import main

    metrics, samples = crafted()
    metrics = pd.concat([metrics, metrics[metrics.metric == "knowmem"].assign(
        split="retain", value=90.0)], ignore_index=True)
    metrics.to_parquet(tmp_path / "metrics.parquet")
    samples.to_parquet(tmp_path / "samples.parquet")
    cfg = {"unlearning": {"loss_variant": "paper"},
           "quantization": {"schemes": [{"scheme": "none", "bits": [16]},
                                        {"scheme": "rtn", "bits": [4]}]},
           "evaluation": {"bootstrap": BOOT}, "report": {"retained_metrics": ["knowmem_forget"]}}
    out = tmp_path / "t"
    assert main(["report", "--settings", json.dumps({"config": cfg}), "--table",
                 str(out / "metrics.parquet"), "--tables", str(out), "--figures",
                 str(tmp_path / "f"), str(tmp_path / "metrics.parquet"), "--samples",
                 str(tmp_path / "samples.parquet")]) == 0
    csv = pd.read_csv(out / "retained.csv").set_index("method")
    scores, ref = _matrix(samples, "npo_gdr", "rtn-w4"), _matrix(samples, "target", "rtn-w4")
    assert (csv.loc["npo_gdr", "rtn-w4 KnowMem_f lo"], csv.loc["npo_gdr", "rtn-w4 KnowMem_f hi"]
            ) == pytest.approx(tuple(100 * v for v in _by_hand(scores, ref)))
