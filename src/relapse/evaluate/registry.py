"""The metric registry. A metric is a function (EvalContext) -> list[MetricResult]; one file
per metric in evaluate/metrics/."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

_METRICS: dict[str, Callable] = {}


@dataclass
class MetricResult:
    """One aggregated number (for metrics.parquet) and its per-item scores (samples.parquet).

    By default the number is the mean of `scores`. A number that is not a mean of per-item
    scores (an AUC, a corpus perplexity) sets `statistic`: a function from an array of item
    indices (into `scores`) to the number, so that its value is `statistic(all items)` and its
    bootstrap CI resamples items. `strata` (one label per item) makes the bootstrap resample
    within each label, keeping group sizes fixed (members and non-members for an AUC).
    `columns` are extra fields of this result's metrics row: what a reader needs to reproduce a
    number that depends on more than this model (PrivLeak's reference and its AUC)."""
    metric: str                  # e.g. knowmem
    split: str                   # e.g. forget
    stat: str                    # e.g. rougeL_f1
    scores: list[float]
    scale: float = 1.0           # ×100 for ROUGE, per MUSE
    samples: list[dict[str, Any]] = field(default_factory=list)
    statistic: Callable[[Any], float] | None = None
    strata: list[int] | None = None
    columns: dict[str, Any] = field(default_factory=dict)

    def estimate(self, samples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
        """(value, ci_low, ci_high), before `scale`."""
        from relapse.stats import bootstrap_ci, bootstrap_statistic

        if self.statistic is None:
            return bootstrap_ci(self.scores, samples, seed)
        return bootstrap_statistic(self.statistic, len(self.scores), self.strata, samples, seed)


def register_metric(name: str):
    def wrap(fn):
        _METRICS[name] = fn
        return fn
    return wrap


def _load() -> None:
    from relapse.evaluate import metrics

    for info in pkgutil.iter_modules(metrics.__path__):
        importlib.import_module(f"{metrics.__name__}.{info.name}")


def metric_names() -> list[str]:
    _load()
    return sorted(_METRICS)


def get_metric(name: str) -> Callable:
    _load()
    if name not in _METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(_METRICS))}")
    return _METRICS[name]
