"""The 95% intervals the report shows: of a seed mean, and of knowledge retained.

A measure's number is its mean over seeds. Its interval must hold the between-seed variance as
well as the items' (an average of each seed's item interval holds only the latter):
- with per-item scores (samples.parquet: KnowMem, VerbMem, facts recalled, QA exact match), the
  percentile bootstrap over seeds and items (`bootstrap_seeds_items`); with one seed that is the
  item bootstrap of that seed;
- without them (PrivLeak, perplexity, MIA AUCs), over two or more seeds the t-interval of the
  seed values; with one seed, the cell's own item bootstrap from metrics.parquet.
Knowledge retained = unlearned / target at the same quant: its interval is the paired bootstrap
of that ratio (the same items drawn for both models in each resample, seeds drawn per model),
and is NaN for a cell without per-item scores: a bound over a point value is not an interval of
a ratio.
"""

from __future__ import annotations

import math

import pandas as pd

from relapse.stats import bootstrap_mean_ratio, bootstrap_seeds_items, t_interval

KEYS = ["bench", "method", "hp", "quant"]
# Where each measure's per-item scores are in samples.parquet: (rows of metric, column, scale).
# Facts recalled and exact match are columns of the VerbMem and KnowMem rows that produced them;
# the scale is the one evaluate applied to the mean (ROUGE x100, per MUSE).
ITEM_SCORES = {
    ("knowmem", "rougeL_f1"): ("knowmem", "rougeL_f1", 100.0),
    ("verbmem", "rougeL_f1"): ("verbmem", "rougeL_f1", 100.0),
    ("verbmem_facts", "facts_recalled"): ("verbmem", "facts_recalled", 1.0),
    ("qa_em", "exact_match"): ("knowmem", "exact_match", 1.0),
    ("lm_eval", "acc"): ("lm_eval", "acc", 100.0),      # MMLU, WMDP: per-item correctness
}
METHOD_TEXT = ("the percentile bootstrap over seeds and items (one item draw per resample, shared "
               "by every seed; with one seed, the item bootstrap) where per-item scores exist "
               "(KnowMem, VerbMem), else the t-interval over seeds, or with one seed that "
               "seed's item bootstrap; for knowledge retained, the paired bootstrap of the "
               "ratio (the same items drawn for the unlearned and the target model at the same "
               "quant), none without per-item scores or for 'mean (GDR/KLR)'; intervals are "
               "never widened to contain the mean")


def sample_columns(measures) -> tuple[set[str], set[str], set[str]]:
    """(metrics, splits, score columns) of samples.parquet that `measures` need."""
    hits = [(ITEM_SCORES[(m.metric, m.stat)], m.split) for m in measures
            if (m.metric, m.stat) in ITEM_SCORES]
    return ({s[0] for s, _ in hits}, {split for _, split in hits}, {s[1] for s, _ in hits})


def _seeds(rows: pd.DataFrame) -> dict[tuple, list]:
    """(bench, method, hp, quant) -> the seeds of the metrics rows (one row per seed)."""
    if "seed" not in rows:
        return {}
    return {key: sorted(cell.seed) for key, cell in rows.groupby(KEYS, sort=False)}


def item_matrices(rows: pd.DataFrame, samples: pd.DataFrame | None, measure
                  ) -> dict[tuple, pd.DataFrame]:
    """(bench, method, hp, quant) -> seeds x items scores (scaled like the metric) of `measure`,
    the items every seed has, for each cell whose samples hold exactly the seeds of its metrics
    `rows` (else the interval would be of other numbers than the mean shown)."""
    source = ITEM_SCORES.get((measure.metric, measure.stat))
    if samples is None or source is None or source[1] not in samples:
        return {}
    metric, column, scale = source
    seeds = _seeds(rows)
    hit = samples[(samples.metric == metric) & (samples.split == measure.split)]
    out = {}
    for key, cell in hit.dropna(subset=[column]).groupby(KEYS, sort=False):
        grid = cell.pivot(index="seed", columns="item", values=column).dropna(axis=1)
        if list(grid.index) == seeds.get(key) and grid.shape[1]:
            out[key] = grid * scale
    return out


def seed_mean_intervals(rows: pd.DataFrame, samples: pd.DataFrame | None, measure,
                        boot: dict) -> pd.DataFrame:
    """The (lo, hi) of each cell's seed mean of `measure`, indexed by KEYS. `rows`: the
    metrics rows of `measure`; `boot`: {samples, seed} of the bootstrap."""
    grids = item_matrices(rows, samples, measure)
    out = {}
    for key, cell in rows.groupby(KEYS, sort=False):
        if key in grids:
            _, low, high = bootstrap_seeds_items(grids[key].to_numpy(), None, **boot)
        elif len(cell) > 1:
            _, low, high = t_interval(cell.value)
        elif {"ci_low", "ci_high"} <= set(cell.columns):
            low, high = float(cell.ci_low.iloc[0]), float(cell.ci_high.iloc[0])
        else:
            low = high = math.nan
        out[key] = (low, high)
    index = pd.MultiIndex.from_tuples(list(out), names=KEYS)
    return pd.DataFrame(list(out.values()), index=index, columns=["lo", "hi"])


def retained_intervals(rows: pd.DataFrame, samples: pd.DataFrame | None, measure,
                       boot: dict) -> dict[tuple, tuple[float, float]]:
    """(bench, method, hp, quant) -> (lo, hi) of measure(cell) / measure(target at the same
    bench and quant), the paired bootstrap over the items both have; cells without per-item
    scores (or without a target's) are absent."""
    grids = item_matrices(rows, samples, measure)
    targets = {(k[0], k[3]): g for k, g in grids.items() if k[1] == "target"}
    out = {}
    for key, grid in grids.items():
        ref = targets.get((key[0], key[3]))
        if ref is None:
            continue
        common = grid.columns.intersection(ref.columns)
        _, low, high = bootstrap_seeds_items(grid[common].to_numpy(), ref[common].to_numpy(),
                                             **boot)
        out[key] = (low, high)
    return out


def mean_retained_intervals(rows: pd.DataFrame, samples: pd.DataFrame | None, measure, boot: dict,
                            members: dict[str, list[tuple[str, str]]]
                            ) -> dict[tuple, tuple[float, float]]:
    """(bench, quant) -> (lo, hi) of the mean over `members[bench]` ((method, hp) pairs: the
    table's utility-constrained rows) of each one's retained `measure`: one paired bootstrap
    over the items all of them and the target have. Absent where a member or the target has no
    per-item scores."""
    grids = item_matrices(rows, samples, measure)
    out = {}
    quants = dict.fromkeys(k[3] for k in grids)
    for bench, pairs in members.items():
        for quant in quants:
            ref = grids.get((bench, "target", "default", quant))
            mats = [grids.get((bench, m, hp, quant)) for m, hp in pairs]
            if ref is None or not mats or any(g is None for g in mats):
                continue
            common = ref.columns
            for g in mats:
                common = common.intersection(g.columns)
            _, low, high = bootstrap_mean_ratio([g[common].to_numpy() for g in mats],
                                                ref[common].to_numpy(), **boot)
            out[(bench, quant)] = (low, high)
    return out
